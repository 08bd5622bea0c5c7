"""Smoke test of the GPU check's real-layout part on CPU: benchmarks/real_layouts.py --tiny builds folders that load
through ICGPipeline.from_pretrained and pass `--check-paths`, its config fits one GPU, and benchmarks/gpu_trl.py's
table is right. The full dry run (train + trl) is `PY=.venv/bin/python PARTS="real trl" DRY_RUN=1 bash
benchmarks/gpu_check.sh`; this test stays under a minute."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, load_benchmark


@pytest.fixture(scope="module")
def layouts():
    return load_benchmark("real_layouts")


@pytest.fixture(scope="module")
def built(layouts, tmp_path_factory):
    out = tmp_path_factory.mktemp("real_layouts")
    config = layouts.build(layouts.parse_args(["--tiny", "--out", str(out), "--device", "cpu"]))
    return out, config


def test_scripts_answer_help():
    for script in ("real_layouts.py", "gpu_trl.py"):
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "--tiny" in out.stdout if script == "real_layouts.py" else "--run-memory" in out.stdout
    wheels = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_wheels.sh"), "--help"], capture_output=True,
                            text=True, timeout=30)
    assert wheels.returncode == 0 and "trl" in wheels.stdout and "ray" in wheels.stdout
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0


def test_tiny_layouts_load_as_the_real_ones_would(built):
    from icg_rl.config import load_config
    from icg_rl.models.pipeline import ICGPipeline

    out, config = built
    cfg = load_config(config)
    assert (cfg.data.kind, cfg.algo.name, cfg.model.base) == ("pixelrec", "ddpo", str(out / "sd15"))
    pipe = ICGPipeline.from_pretrained(cfg.model.base, mllm_path=cfg.model.mllm, meta_tokens=cfg.model.meta_tokens,
                                       user_ids=["u0"])
    assert type(pipe).__name__ == "ICGPipeline" and pipe.mllm.model.config.model_type == "qwen2_vl"
    assert pipe.mllm.model.dtype.is_floating_point and str(pipe.mllm.model.dtype) == "torch.bfloat16"  # as published
    features = pipe.mllm(["A Quiet Garden"], [np.full((64, 64, 3), 128, np.uint8)])  # the image path of Qwen2-VL
    assert features.shape == (1, cfg.model.meta_tokens, pipe.mllm.hidden_size)
    assert json.loads((out / "build.json").read_text())["tiny"] is True
    check = subprocess.run([sys.executable, "-m", "icg_rl.train", "--config", str(config), "--check-paths"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert check.returncode == 0 and "every local path exists" in check.stdout, check.stdout + check.stderr


def test_config_only_and_bad_overrides(layouts, built):
    from icg_rl.config import ConfigError, load_config

    out, config = built
    args = layouts.parse_args(["--tiny", "--out", str(out), "--config-only", "train.iterations=5"])
    assert load_config(layouts.rewrite_config(args)).train.iterations == 5
    with pytest.raises(SystemExit):  # folders of another size were never built there
        layouts.rewrite_config(layouts.parse_args(["--tiny", "--out", str(out), "--config-only", "--size", "128"]))
    with pytest.raises(ConfigError):  # a typo fails before ~10 GiB of folders are built
        layouts.write_config(out, "sd15", True, 64, ["train.iteratons=3"])


def test_real_dimensions_match_the_published_models(layouts):
    """What the GPU check builds, counted on the meta device (no memory, no weights): the published sizes."""
    import torch

    from icg_rl.models.tokenizer import train_clip_tokenizer

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    tokenizer = train_clip_tokenizer(["a book cover for the quiet garden"], 1024, 77)
    with torch.device("meta"):
        sd15 = layouts.sd15_pipeline(tokenizer, 512, tiny=False)
        sd35m = layouts.sd35m_pipeline(tokenizer, 512, tiny=False)
        qwen, _, _ = layouts.qwen2_vl(tiny=False)
        clip, _ = layouts.clip_model(tokenizer, tiny=False)
    assert count(sd15.unet) == 859_520_964 and count(sd15.text_encoder) == 123_060_480  # SD1.5, CLIP-L text
    assert count(sd35m.transformer) == pytest.approx(2_243_171_520, rel=0.002)  # pos. table sized to 512 px
    assert count(qwen.model) == pytest.approx(2.209e9, rel=0.001) and qwen.dtype == torch.bfloat16
    assert count(clip) == 427_616_513  # openai/clip-vit-large-patch14


@pytest.mark.parametrize("name", ["sd15_qwen2vl_1gpu.yaml", "sd35m_qwen2vl_1gpu.yaml"])
def test_gpu_placements_fit_one_gpu(name):
    from icg_rl.config import load_config
    from icg_rl.distributed.placement import run_requests, shortfall

    cfg = load_config(ROOT / "configs" / "gpu" / name)
    pools = list(dict.fromkeys([*cfg.reward.weights, "clip_t"]))  # clip_t also scores the evaluation
    requests = run_requests(cfg, pools)
    assert shortfall(requests, {"CPU": 16, "GPU": 1}) is None
    assert sum(q.count * q.gpus for q in requests.values()) <= 1.0


def test_gpu_trl_table_from_a_run_folder(tmp_path):
    bench = load_benchmark("gpu_trl")
    earlier_run = [{"step": 0}, {"step": 1, "time/iteration": 99.0}]  # metrics.jsonl appends runs: only the last
    rows = earlier_run + [{"step": 0}] + [{"step": i, "time/rollout": 1.0, "time/reward": 0.5, "time/learn": 2.0,
                                           "sync/ms": 100.0, "time/iteration": 4.0 if i > 1 else 9.0}
                                          for i in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ours = bench.ours_from_run(tmp_path, rows=8)
    assert ours["seconds_per_iteration"] == pytest.approx(4.0) and ours["samples_per_s"] == pytest.approx(2.0)
    assert ours["warmup_s"] == 9.0 and ours["timed_iterations"] == 2
    assert ours["phases"] == pytest.approx({"rollout": 1.0, "reward": 0.5, "learn": 2.0, "sync": 0.1, "other": 0.4})
    (tmp_path / "memory.txt").write_text("1024\n5120\n9216\n2048\n")
    assert bench.peak_memory_gib(tmp_path / "memory.txt") == pytest.approx(8.0)
    assert bench.peak_memory_gib(tmp_path / "missing.txt") is None
    trl = {"seconds_per_iteration": 2.0, "samples_per_s": 4.0 / 4, "phases": {"rollout": 1.0, "learn": 1.0}}
    table = bench.table(ours, trl, "settings: x")
    assert "| ours / trl images/s (goal ≥ 2×) | 2.00× |" in table
    assert "1.00 / 0.50 / 2.00 / 0.10 / 0.40" in table and "1.00 / — / 1.00 / — / —" in table
    assert "unavailable: boom" in bench.table(ours, {"status": "unavailable: boom"}, "settings: x")
