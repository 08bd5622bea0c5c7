"""ICGPipeline on an SDXL-layout base: a tiny folder written by diffusers' own save_pretrained, of dimensions the
project uses nowhere else (text encoders 24 and 20 wide → 44-wide cross-attention, "text_time" added conditioning,
two UNet levels), loaded through the one entry point `ICGPipeline.from_pretrained`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from icg_rl.models.pipeline import CONFIG_NAME, LORA_NAME, ICGPipeline
from icg_rl.models.pipeline_xl import ICGXLPipeline
from icg_rl.models.user import ICGUser

TITLE = "The Haunted Crypt"


def text_encoder(model_class, tokenizer, width: int, seed: int, **extra):
    torch.manual_seed(seed)
    return model_class(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=3,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **extra)).eval()


@pytest.fixture(scope="module")
def xl_folder(micro_world, tmp_path_factory) -> Path:
    cfg, _ = micro_world
    tokenizer = CLIPTokenizer.from_pretrained(str(Path(cfg.world.dir) / "models" / "sd" / "tokenizer"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 24),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), use_linear_projection=True,
        norm_num_groups=8, cross_attention_dim=24 + 20, addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=12 + 6 * 4)  # pooled (text_encoder_2's projection) + 6 ids × 4
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=16, scaling_factor=0.9)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder(CLIPTextModel, tokenizer, 24, 1),
        text_encoder_2=text_encoder(CLIPTextModelWithProjection, tokenizer, 20, 2, projection_dim=12),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.001, beta_end=0.02, beta_schedule="scaled_linear",
                                         timestep_spacing="leading", steps_offset=1),
        add_watermarker=False)
    folder = tmp_path_factory.mktemp("tiny_sdxl")
    pipe.save_pretrained(folder)
    return folder


def mllm_folder(micro_world) -> Path:
    return Path(micro_world[0].world.dir) / "models" / "mllm"


def load(folder, micro_world, **kwargs) -> ICGXLPipeline:
    features = {f"i{i}": torch.randn(8, generator=torch.Generator().manual_seed(i)) for i in range(4)}
    pipe = ICGPipeline.from_pretrained(folder, mllm_path=mllm_folder(micro_world), user_ids=["u1", "u2"],
                                       item_features=features, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock(folder) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(str(folder), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, users=None, guidance=1.0, seed=0):
    return pipe([TITLE], users=users, num_inference_steps=4, guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed), output_type="np").images


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_zero_gate_reproduces_the_stock_sdxl_pipeline(xl_folder, micro_world, guidance):
    expected = stock(xl_folder)([TITLE], num_inference_steps=4, guidance_scale=guidance,
                                generator=torch.Generator().manual_seed(0), output_type="np").images
    pipe = load(xl_folder, micro_world)
    assert isinstance(pipe, ICGXLPipeline) and not pipe.is_flow_matching
    assert float(pipe.icg.adapter.projection.gate.detach()) == 0.0
    got = sample(pipe, users=[ICGUser("u1")], guidance=guidance)
    assert got.shape == expected.shape == (1, 16, 16, 3)
    assert np.abs(got - expected).max() <= 1e-5


def test_open_gate_personalizes_and_the_gate_gets_a_gradient_at_zero(xl_folder, micro_world):
    pipe = load(xl_folder, micro_world)
    pipe.scheduler.set_timesteps(4)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    embeds, pooled = pipe.encode_text(pipe.prompts([TITLE, TITLE]))
    assert embeds.shape == (2, pipe.tokenizer.model_max_length, 24 + 20) and pooled.shape == (2, 12)
    features = pipe.encode_conditions([TITLE, TITLE], users=[ICGUser("u1"), ICGUser("u2")])
    out = pipe.denoiser_output(latents, pipe.scheduler.timesteps[0], embeds, pooled, features)
    (grad,) = torch.autograd.grad(out.square().sum(), [pipe.icg.adapter.projection.gate])
    assert float(grad.abs()) > 0
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(1.0)
    first, second = sample(pipe, [ICGUser("u1")]), sample(pipe, [ICGUser("u2")])
    assert np.abs(first - second).max() > 1e-4, "two users gave the same image"
    with pipe.icg.adapter.disabled():
        off = sample(pipe, [ICGUser("u1")])
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(0.0)
    assert np.array_equal(off, sample(pipe, [ICGUser("u1")])), "disabled() is not the base model"


def test_save_and_load_roundtrip_with_unet_lora(xl_folder, micro_world, tmp_path):
    pipe = load(xl_folder, micro_world, unet_lora_rank=2)
    assert any(name.startswith("unet.") for name in pipe.trainable_named_parameters())
    assert not any(p.requires_grad for p in pipe.text_encoder_2.parameters())
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(0.8)
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / CONFIG_NAME).is_file() and (tmp_path / LORA_NAME).is_file()
    assert not list(tmp_path.glob("**/diffusion_pytorch_model*")), "base weights must not be saved"
    again = ICGPipeline.from_pretrained(xl_folder, icg_path=tmp_path)
    again.set_progress_bar_config(disable=True)
    assert isinstance(again, ICGXLPipeline)
    assert np.abs(sample(again, [ICGUser("u2")]) - sample(pipe, [ICGUser("u2")])).max() <= 1e-6


@pytest.mark.parametrize("zeros", [True, False])
def test_uncond_text_is_the_stock_negative(xl_folder, micro_world, tmp_path, zeros):
    folder = xl_folder
    if not zeros:  # a base saved with force_zeros_for_empty_prompt false (SDXL's refiner does so): it must carry
        folder = tmp_path / "no_zeros"
        shutil.copytree(xl_folder, folder)
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps(index | {"force_zeros_for_empty_prompt": False}))
    pipe = load(folder, micro_world)
    assert pipe.config.force_zeros_for_empty_prompt is zeros
    with torch.no_grad():
        _, negative, _, negative_pooled = stock(folder).encode_prompt([TITLE], do_classifier_free_guidance=True)
    embeds, pooled = pipe.uncond_text()
    assert embeds.shape == (1, pipe.tokenizer.model_max_length, 24 + 20) and pooled.shape == (1, 12)
    assert torch.equal(embeds, negative) and torch.equal(pooled, negative_pooled)
    assert bool(embeds.abs().sum() == 0) is zeros
