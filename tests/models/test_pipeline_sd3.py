"""ICGPipeline on an SD3-layout flow-matching base: a tiny folder written by diffusers' own save_pretrained, of
dimensions the project uses nowhere else (odd widths, patch 2, 3 layers, a VAE with a shift factor), loaded through
the one entry point `ICGPipeline.from_pretrained`."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from icg_rl.models.pipeline import CONFIG_NAME, LORA_NAME, ICGPipeline
from icg_rl.models.pipeline_sd3 import ICGSD3Pipeline
from icg_rl.models.user import ICGUser

TITLE = "The Haunted Crypt"


def text_encoder(tokenizer, width: int, projection: int, seed: int) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length, projection_dim=projection,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).eval()


@pytest.fixture(scope="module")
def sd3_folder(micro_world, tmp_path_factory) -> Path:
    cfg, _ = micro_world
    tokenizer = CLIPTokenizer.from_pretrained(str(Path(cfg.world.dir) / "models" / "sd" / "tokenizer"))
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=12, num_attention_heads=2,
        joint_attention_dim=56, caption_projection_dim=24, pooled_projection_dim=20, out_channels=4,
        pos_embed_max_size=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=16, shift_factor=0.11,
                        scaling_factor=1.3)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=2.0), vae=vae,
        text_encoder=text_encoder(tokenizer, 24, 12, 1), tokenizer=tokenizer,
        text_encoder_2=text_encoder(tokenizer, 20, 8, 2), tokenizer_2=tokenizer, text_encoder_3=None,
        tokenizer_3=None)
    folder = tmp_path_factory.mktemp("tiny_sd3")
    pipe.save_pretrained(folder)
    return folder


def mllm_folder(micro_world) -> Path:
    return Path(micro_world[0].world.dir) / "models" / "mllm"


def load(sd3_folder, micro_world, **kwargs) -> ICGSD3Pipeline:
    features = {f"i{i}": torch.randn(8, generator=torch.Generator().manual_seed(i)) for i in range(4)}
    pipe = ICGPipeline.from_pretrained(sd3_folder, mllm_path=mllm_folder(micro_world), user_ids=["u1", "u2"],
                                       item_features=features, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, users=None, guidance=1.0, seed=0):
    return pipe([TITLE], users=users, num_inference_steps=4, guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed), output_type="np").images


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_zero_gate_reproduces_the_stock_sd3_pipeline(sd3_folder, micro_world, guidance):
    stock = StableDiffusion3Pipeline.from_pretrained(str(sd3_folder), text_encoder_3=None, tokenizer_3=None)
    stock.set_progress_bar_config(disable=True)
    expected = stock([TITLE], num_inference_steps=4, guidance_scale=guidance,
                     generator=torch.Generator().manual_seed(0), output_type="np").images
    pipe = load(sd3_folder, micro_world)
    assert isinstance(pipe, ICGSD3Pipeline) and pipe.is_flow_matching
    assert float(pipe.icg.adapter.projection.gate) == 0.0
    got = sample(pipe, users=[ICGUser("u1")], guidance=guidance)
    assert got.shape == expected.shape == (1, 16, 16, 3)
    assert np.abs(got - expected).max() <= 1e-5


def test_open_gate_personalizes_and_the_gate_gets_a_gradient_at_zero(sd3_folder, micro_world):
    pipe = load(sd3_folder, micro_world)
    # at exactly zero the decoupled branch is zero but not flat in the gate (adapter_sd3's docstring)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    embeds, pooled = pipe.encode_text(pipe.prompts([TITLE, TITLE]))
    features = pipe.encode_conditions([TITLE, TITLE], users=[ICGUser("u1"), ICGUser("u2")])
    out = pipe.denoiser_output(latents, torch.tensor(500.0), embeds, pooled, features)
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


def test_save_and_load_roundtrip_with_transformer_lora(sd3_folder, micro_world, tmp_path):
    pipe = load(sd3_folder, micro_world, unet_lora_rank=2)
    assert any(name.startswith("transformer.") for name in pipe.trainable_named_parameters())
    assert not any(p.requires_grad for p in pipe.vae.parameters())
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(0.8)
        for name, param in pipe.transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / CONFIG_NAME).is_file() and (tmp_path / LORA_NAME).is_file()
    assert not list(tmp_path.glob("**/diffusion_pytorch_model*")), "base weights must not be saved"
    again = ICGPipeline.from_pretrained(sd3_folder, icg_path=tmp_path)
    again.set_progress_bar_config(disable=True)
    assert isinstance(again, ICGSD3Pipeline)
    assert np.abs(sample(again, [ICGUser("u2")]) - sample(pipe, [ICGUser("u2")])).max() <= 1e-6
