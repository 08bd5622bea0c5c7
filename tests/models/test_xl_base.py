"""The SDXL-layout base (models/sdxl): built on demand from the micro zoo (configs/micro.yaml's xl_steps), loads and
samples through the stock StableDiffusionXLPipeline, cached by its own marker without touching the zoo's or the flow
base's key, warm-started from the SD UNet, and the ICG pipeline at gate zero is the stock pipeline on it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline

from icg_rl.config import ZooConfig
from icg_rl.models import zoo
from icg_rl.models.build import models_key
from icg_rl.models.flow_base import flow_key
from icg_rl.models.pipeline_xl import ICGXLPipeline
from icg_rl.models.user import ICGUser
from icg_rl.models.xl_base import MARKER, build_xl_base, ensure_xl_base, warm_start, xl_key
from tests.models.test_pipeline_xl import TITLE, load, stock


@pytest.fixture(scope="module")
def xl_world(micro_world):
    cfg, _ = micro_world
    return cfg, build_xl_base(cfg.world.dir, cfg.world, cfg.zoo, progress=False)


def xl_folder(cfg) -> Path:
    return Path(cfg.world.dir) / "models" / "sdxl"


def test_xl_base_trains_and_samples_through_the_stock_sdxl_pipeline(xl_world):
    cfg, summary = xl_world
    assert np.isfinite(summary["final_loss"]) and summary["final_loss"] < summary["initial_loss"], summary
    copied, total = map(int, summary["warm_started_tensors"].split("/"))
    assert total - copied == 4, summary  # only the new "text_time" embedding's two layers start fresh
    assert 0.0 <= summary["samples"]["genre_accuracy"] <= 1.0 and summary["params"] > 0
    assert (Path(cfg.world.dir) / "models" / "xl_base_samples.png").is_file()
    pipe = StableDiffusionXLPipeline.from_pretrained(str(xl_folder(cfg)))
    pipe.set_progress_bar_config(disable=True)
    unet, encoder, encoder_2 = pipe.unet.config, pipe.text_encoder.config, pipe.text_encoder_2.config
    assert unet.addition_embed_type == "text_time" and isinstance(pipe.scheduler, DDIMScheduler)
    assert unet.cross_attention_dim == encoder.hidden_size + encoder_2.hidden_size
    assert unet.projection_class_embeddings_input_dim == encoder_2.projection_dim + 6 * unet.addition_time_embed_dim
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.config.force_zeros_for_empty_prompt
    out = pipe(["The Haunted Crypt", "Grim Curse"], num_inference_steps=2, guidance_scale=3.0, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, cfg.world.image_size, cfg.world.image_size, 3)
    assert np.isfinite(out.images).all() and out.images.std() > 0


def test_xl_base_is_cached_by_its_own_marker(xl_world):
    cfg, _ = xl_world
    marker = xl_folder(cfg) / MARKER
    before = marker.stat().st_mtime_ns
    assert build_xl_base(cfg.world.dir, cfg.world, cfg.zoo, progress=False)["cached"] is True
    assert ensure_xl_base(cfg.world.dir, cfg.world, cfg.zoo, progress=False) == marker.parent
    assert marker.stat().st_mtime_ns == before, "a second call rebuilt the base"
    assert json.loads(marker.read_text())["config_hash"] == xl_key(cfg.world, cfg.zoo)
    more_steps = cfg.zoo.model_copy(update={"xl_steps": cfg.zoo.xl_steps + 1})
    assert xl_key(cfg.world, more_steps) != xl_key(cfg.world, cfg.zoo)
    assert models_key(cfg.world, more_steps) == models_key(cfg.world, cfg.zoo)  # the zoo is not rebuilt
    assert flow_key(cfg.world, more_steps) == flow_key(cfg.world, cfg.zoo)  # nor the flow base
    assert xl_key(cfg.world, cfg.zoo.model_copy(update={"flow_steps": 7})) == xl_key(cfg.world, cfg.zoo)


def test_xl_base_needs_the_zoo(tmp_path, micro_cfg):
    with pytest.raises(FileNotFoundError, match="python -m icg_rl.world build"):
        build_xl_base(tmp_path, micro_cfg.world, micro_cfg.zoo, progress=False)


def test_warm_start_carries_the_sd_unet_over():
    cfg = ZooConfig(text_width=16)
    torch.manual_seed(0)
    sd_unet, xl_unet = zoo.build_unet(cfg, 32), zoo.build_xl_unet(cfg, 32, 16, 16)
    assert warm_start(xl_unet, sd_unet) == f"{len(xl_unet.state_dict()) - 4}/{len(xl_unet.state_dict())}"
    sd, xl = sd_unet.state_dict(), xl_unet.state_dict()
    assert torch.equal(xl["conv_in.weight"], sd["conv_in.weight"])
    name = "down_blocks.0.attentions.0.proj_in.weight"  # a 1×1 conv in SD, linear in SDXL
    assert torch.equal(xl[name], sd[name][:, :, 0, 0])
    h = torch.randn(3, 16)
    key = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"  # reads [h, h]: both encoders' states
    torch.testing.assert_close(torch.cat([h, h], -1) @ xl[key].T, h @ sd[key].T)
    add = xl_unet.add_embedding(torch.randn(2, 16 + 6 * cfg.xl_time_embed_dim))
    assert torch.equal(add, torch.zeros_like(add)), "the new added conditioning must start as nothing"


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_icg_pipeline_at_zero_gate_is_the_stock_pipeline_on_the_xl_base(xl_world, micro_world, guidance):
    cfg, _ = xl_world
    expected = stock(xl_folder(cfg))([TITLE], num_inference_steps=4, guidance_scale=guidance,
                                     generator=torch.Generator().manual_seed(0), output_type="np").images
    pipe = load(xl_folder(cfg), micro_world)
    assert isinstance(pipe, ICGXLPipeline) and not pipe.is_flow_matching
    assert float(pipe.icg.adapter.projection.gate.detach()) == 0.0
    got = pipe([TITLE], users=[ICGUser("u1")], num_inference_steps=4, guidance_scale=guidance,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert got.shape == expected.shape == (1, cfg.world.image_size, cfg.world.image_size, 3)
    assert np.abs(got - expected).max() <= 1e-5
