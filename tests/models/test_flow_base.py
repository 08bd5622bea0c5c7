"""The flow base (models/sd3): built on demand from the micro zoo, loads through StableDiffusion3Pipeline, cached by
its own marker without touching the zoo's key, and its T5-free attention shortcut is exact."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

from icg_rl.config import ZooConfig
from icg_rl.models import zoo
from icg_rl.models.build import models_key
from icg_rl.models.flow_base import MARKER, build_flow_base, ensure_flow_base, flow_key

TINY = {"flow_steps": 40, "flow_width": 64, "flow_layers": 2}  # seconds on the micro world


@pytest.fixture(scope="module")
def flow_world(micro_world):
    cfg, _ = micro_world
    zoo_cfg = ZooConfig.model_validate(cfg.zoo.model_dump() | TINY)
    return cfg, zoo_cfg, build_flow_base(cfg.world.dir, cfg.world, zoo_cfg, progress=False)


def test_flow_base_trains_and_samples_through_the_stock_sd3_pipeline(flow_world):
    cfg, zoo_cfg, summary = flow_world
    assert summary["final_loss"] < summary["initial_loss"], summary
    assert 0.0 <= summary["samples"]["genre_accuracy"] <= 1.0 and summary["params"] > 0
    assert (Path(cfg.world.dir) / "models" / "flow_base_samples.png").is_file()
    folder = Path(cfg.world.dir) / "models" / "sd3"
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), text_encoder_3=None, tokenizer_3=None)  # no T5
    pipe.set_progress_bar_config(disable=True)
    assert pipe.text_encoder_3 is None and pipe.vae.config.shift_factor == 0.0
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.transformer.config.joint_attention_dim == 2 * pipe.text_encoder.config.hidden_size
    out = pipe(["The Haunted Crypt", "Grim Curse"], num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, cfg.world.image_size, cfg.world.image_size, 3)


def test_flow_base_is_cached_by_its_own_marker(flow_world):
    cfg, zoo_cfg, _ = flow_world
    marker = Path(cfg.world.dir) / "models" / "sd3" / MARKER
    before = marker.stat().st_mtime_ns
    assert build_flow_base(cfg.world.dir, cfg.world, zoo_cfg, progress=False)["cached"] is True
    assert ensure_flow_base(cfg.world.dir, cfg.world, zoo_cfg, progress=False) == marker.parent
    assert marker.stat().st_mtime_ns == before
    assert json.loads(marker.read_text())["config_hash"] == flow_key(cfg.world, zoo_cfg)
    more_steps = zoo_cfg.model_copy(update={"flow_steps": 41})
    assert flow_key(cfg.world, more_steps) != flow_key(cfg.world, zoo_cfg)
    assert models_key(cfg.world, more_steps) == models_key(cfg.world, cfg.zoo)  # the zoo is not rebuilt


def test_flow_base_needs_the_zoo(tmp_path, micro_cfg):
    with pytest.raises(FileNotFoundError, match="python -m icg_rl.world build"):
        build_flow_base(tmp_path, micro_cfg.world, micro_cfg.zoo, progress=False)


def test_repeated_tail_processor_equals_the_stock_pipelines_zero_t5_tokens():
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                        caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=8)
    for param in transformer.parameters():  # AdaLN-zero gates start at 0: give every path a weight
        torch.nn.init.normal_(param, std=0.1)
    clip_states, pooled = torch.randn(2, 5, 16), torch.randn(2, 8)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([250.0, 900.0])
    with torch.no_grad():
        stock = transformer(x, torch.cat([clip_states, torch.zeros(2, 256, 16)], 1), pooled, t).sample
        transformer.set_attn_processor(zoo.RepeatedTailAttnProcessor(256))
        short = transformer(x, torch.cat([clip_states, torch.zeros(2, 1, 16)], 1), pooled, t).sample
    torch.testing.assert_close(short, stock, atol=1e-5, rtol=1e-4)
