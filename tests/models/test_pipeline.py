"""ICGPipeline on the micro world's base and MLLM folders (the same code path a real SD1.5 folder takes)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from icg_rl.models.pipeline import CONFIG_NAME, LORA_NAME, WEIGHTS_NAME, ICGPipeline
from icg_rl.models.user import ICGUser

TITLE = "The Haunted Crypt"


def folders(cfg):
    models = Path(cfg.world.dir) / "models"
    return models / "sd", models / "mllm"


def load(cfg, **kwargs) -> ICGPipeline:
    sd, mllm = folders(cfg)
    features = {f"i{i:05d}": torch.randn(8, generator=torch.Generator().manual_seed(i)) for i in range(6)}
    pipe = ICGPipeline.from_pretrained(sd, mllm_path=mllm, user_ids=["u1", "u2"], item_features=features,
                                       **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, users=None, refs=None, seed=0, guidance=3.0, titles=(TITLE,)):
    return pipe(list(titles), reference_images=refs, users=users, num_inference_steps=4, guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed), output_type="np").images


def reference_image():
    return np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[:, None, None], (1, 32, 3))


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_zero_gate_reproduces_the_base_pipeline(micro_world, guidance):
    cfg, _ = micro_world
    base = StableDiffusionPipeline.from_pretrained(str(folders(cfg)[0]))
    base.set_progress_bar_config(disable=True)
    expected = base([TITLE], num_inference_steps=4, guidance_scale=guidance,
                    generator=torch.Generator().manual_seed(0), output_type="np").images
    pipe = load(cfg)
    assert float(pipe.icg.adapter.projection.gate) == 0.0
    got = sample(pipe, users=[ICGUser("u1")], refs=[reference_image()], guidance=guidance)
    assert np.abs(got - expected).max() <= 1e-6


def test_open_gate_personalizes_and_handles_cold_start_and_text_only(micro_world):
    cfg, _ = micro_world
    pipe = load(cfg)
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(1.0)
    ref = [reference_image()]
    first, second = sample(pipe, [ICGUser("u1")], ref), sample(pipe, [ICGUser("u2")], ref)
    assert np.abs(first - second).max() > 1e-3, "two users gave the same image"
    cold = sample(pipe, [ICGUser()], ref)  # no id, no history: the population embedding
    unknown = sample(pipe, [ICGUser("somebody-new")], ref)
    assert np.array_equal(cold, unknown)  # an unknown id is a cold start
    history = sample(pipe, [ICGUser(history=["i00001", "i00003"])], ref)
    assert np.abs(history - cold).max() > 1e-4
    text_only = sample(pipe, [ICGUser("u1")], [None])
    assert text_only.shape == first.shape and np.isfinite(text_only).all()
    batch = sample(pipe, [ICGUser("u1"), ICGUser()], [ref[0], None], titles=(TITLE, "Grim Curse"))
    assert batch.shape[0] == 2


def test_num_images_per_prompt_keeps_rows_with_their_title(micro_world):
    cfg, _ = micro_world
    pipe = load(cfg)
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(1.0)
    out = pipe([TITLE, "Grim Curse"], users=[ICGUser("u1"), ICGUser("u2")], num_images_per_prompt=2,
               num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape[0] == 4


def test_save_then_load_gives_identical_images_and_no_base_weights(micro_world, tmp_path):
    cfg, _ = micro_world
    pipe = load(cfg, unet_lora_rank=4)
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(0.7)
        for p in pipe.trainable_parameters():
            p.add_(0.01 * torch.randn_like(p))
    before = sample(pipe, [ICGUser("u2")], [reference_image()])
    pipe.save_pretrained(tmp_path / "icg")
    saved = sorted(p.name for p in (tmp_path / "icg").iterdir())
    assert saved == sorted([CONFIG_NAME, WEIGHTS_NAME, LORA_NAME])
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "icg" / WEIGHTS_NAME)).keys()
    assert all(k.startswith(("mllm.", "icg.")) for k in keys)
    assert not any("vae" in k or "text_encoder" in k or ".conv" in k for k in keys)
    sd, mllm = folders(cfg)
    again = ICGPipeline.from_pretrained(sd, mllm_path=mllm, icg_path=tmp_path / "icg")
    again.set_progress_bar_config(disable=True)
    after = sample(again, [ICGUser("u2")], [reference_image()])
    assert np.array_equal(before, after)
    # the UNet LoRA file is in the format diffusers' own loader takes
    plain = StableDiffusionPipeline.from_pretrained(str(sd))
    plain.load_lora_weights(str(tmp_path / "icg"))
    assert any("lora" in n for n, _ in plain.unet.named_parameters())


@pytest.mark.parametrize("lora", [0, 4])
def test_gradients_reach_icg_parameters_and_nothing_frozen(micro_world, lora):
    cfg, _ = micro_world
    pipe = load(cfg, unet_lora_rank=lora)
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(0.5)  # at exactly zero only the gate itself gets a gradient
    inputs = pipe.prepare_condition_inputs([TITLE, "Grim Curse"], [reference_image(), None],
                                           [ICGUser("u1", history=["i00002"]), ICGUser()])
    features = pipe.encode_condition_inputs(inputs)
    text = pipe.text_encoder(pipe.tokenizer(pipe.prompts([TITLE, "Grim Curse"]), padding="max_length",
                                            max_length=pipe.tokenizer.model_max_length,
                                            return_tensors="pt").input_ids)[0]
    latents = torch.randn(2, 4, 8, 8)
    out = pipe.unet(latents, torch.tensor([500, 500]), encoder_hidden_states=text,
                    added_cond_kwargs=pipe.icg.adapter.added_cond_kwargs(features)).sample
    out.square().mean().backward()
    trainable = {id(p) for p in pipe.trainable_parameters()}
    for name, module in (("meta tokens", pipe.mllm.meta_tokens), ("refiner", pipe.icg.refiner.to_gamma.weight),
                         ("user id embedding", pipe.icg.user_encoder.id_embedding.weight),
                         ("history", pipe.icg.user_encoder.history_proj.weight),
                         ("projection", pipe.icg.adapter.projection.mlp[0].weight),
                         ("gate", pipe.icg.adapter.projection.gate)):
        assert module.grad is not None and module.grad.abs().sum() > 0, f"no gradient reached {name}"
    first_ip = next(iter(pipe.icg.adapter.attention.values())).to_k_ip[0].weight
    assert first_ip.grad is not None and first_ip.grad.abs().sum() > 0
    lora_grads = [p.grad for n, p in pipe.unet.named_parameters() if "lora_" in n]
    assert (len(lora_grads) > 0) == (lora > 0)
    assert all(g is not None for g in lora_grads)
    for owner in (pipe.vae, pipe.text_encoder, pipe.unet, pipe.mllm):
        for name, param in owner.named_parameters():
            if id(param) not in trainable:
                assert not param.requires_grad and param.grad is None, f"frozen {name} got a gradient"


def test_adapter_disabled_is_the_base_policy(micro_world):
    cfg, _ = micro_world
    pipe = load(cfg)
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(1.0)
    open_gate = sample(pipe, [ICGUser("u1")])
    with pipe.icg.adapter.disabled():
        off = sample(pipe, [ICGUser("u1")])
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(0.0)
    closed = sample(pipe, [ICGUser("u1")])
    assert np.array_equal(off, closed) and not np.array_equal(open_gate, closed)


def test_a_base_folder_written_by_diffusers_itself_loads(micro_world, tmp_path):
    """A folder saved by diffusers' own save_pretrained from freshly configured components, not by our zoo."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg, _ = micro_world
    sd, mllm = folders(cfg)
    tokenizer = CLIPTokenizer.from_pretrained(str(sd / "tokenizer"))
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                                                num_hidden_layers=2, num_attention_heads=4,
                                                max_position_embeddings=tokenizer.model_max_length,
                                                eos_token_id=tokenizer.eos_token_id))
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                            scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(tmp_path / "plain_sd")
    pipe = ICGPipeline.from_pretrained(tmp_path / "plain_sd", mllm_path=mllm)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(1.0)
    out = pipe([TITLE], num_inference_steps=2, output_type="np", height=16, width=16).images
    assert out.shape == (1, 16, 16, 3)


def test_bad_inputs_get_clear_errors(micro_world):
    cfg, _ = micro_world
    pipe = load(cfg)
    with pytest.raises(ValueError, match="titles: got 'x'"):
        pipe("x")
    with pytest.raises(ValueError, match="users: got 2 entries for 1 titles"):
        pipe([TITLE], users=[ICGUser(), ICGUser()])
    with pytest.raises(FileNotFoundError, match="icg_config.json"):
        ICGPipeline.from_pretrained(folders(cfg)[0], icg_path=Path(cfg.world.dir))


def test_pipeline_from_config_and_package_export(micro_world):
    import icg_rl
    from icg_rl.config import load_config
    from icg_rl.models.pipeline import pipeline_from_config
    from tests.conftest import MICRO_CONFIG

    cfg, _ = micro_world
    assert icg_rl.ICGPipeline is ICGPipeline
    cfg = load_config(MICRO_CONFIG, [f"world.dir={cfg.world.dir}", "model.meta_tokens=3", "model.lora.rank=2",
                                     "model.mllm_lora.rank=2"])
    pipe = pipeline_from_config(cfg, user_ids=["u1"])
    assert pipe.mllm.meta_tokens.shape[0] == 3
    names = {n for n, p in pipe.unet.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n or "processor" in n or "encoder_hid_proj" in n for n in names)
    assert any("lora" in k for k in pipe.mllm.trainable_state_dict())


def test_feature_table_is_reused_until_the_features_change(micro_world):
    """The item-feature table (the standardized catalogue histories are made of) is built once per buffer version:
    an in-place write (a served policy's swap, load_state_dict) or a device move rebuilds it; one first built under
    inference mode still feeds a gradient step (history_proj gets a gradient through it)."""
    import copy
    import pickle

    cfg, _ = micro_world
    pipe = load(cfg, standardize_history=True)
    icg = pipe.icg
    with torch.inference_mode():
        first = icg.feature_table()
    assert icg.feature_table() is first and not any(t.is_inference() for t in first.values())
    raw = icg.item_features.clone()
    expected = (raw - raw.mean(0)) / raw.std(0).clamp_min(1e-3)
    assert torch.allclose(first["i00003"], expected[3])
    with torch.no_grad():
        icg.item_features.mul_(2.0).add_(1.0)  # in place: same tensor, new version
    second = icg.feature_table()
    assert second is not first and torch.allclose(second["i00003"], expected[3], atol=1e-5)  # standardized: same
    with torch.no_grad():
        icg.item_features[0].zero_()
    assert not torch.equal(icg.feature_table()["i00000"], second["i00000"])
    assert "_feature_table" not in pickle.loads(pickle.dumps(icg)).__dict__
    assert copy.deepcopy(icg).feature_table()["i00001"].data_ptr() != icg.feature_table()["i00001"].data_ptr()
    inputs = pipe.prepare_condition_inputs([TITLE], [None], [ICGUser(history=["i00002", "i00004"])])
    pipe.encode_condition_inputs(inputs).square().sum().backward()
    assert pipe.icg.user_encoder.history_proj.weight.grad.abs().sum() > 0
