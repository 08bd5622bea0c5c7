"""Exact resume: SIGKILL the training driver after a checkpoint, `--resume auto`, and the final ICG weights equal an
uninterrupted run's, bit for bit (every draw derives from (seed, iteration); optimizer moments, reward statistics,
advantage tracker and data position are restored)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import MICRO_CONFIG, ROOT

ARGS = ["algo.num_inference_steps=4", "train.iterations=4", "train.checkpoint_every=2", "train.eval_every=100",
        "train.average_last=0.75",  # the exported policy is the mean of updates 2-4: its running sum resumes too
        "train.eval_pairs=4", "train.tracker=none", "data.samples_per_pair=2"]


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_auto_is_exact(micro_world, micro_preference, ray_cluster,
                                                             tmp_path):
    from icg_rl.commands.train import main

    cfg, _ = micro_world
    common = ["--config", str(MICRO_CONFIG), f"world.dir={cfg.world.dir}", *ARGS]
    assert main([*common, "--out", str(tmp_path / "straight")]) == 0

    out = tmp_path / "killed"
    address = ray_cluster.get_runtime_context().gcs_address  # the driver joins the shared cluster: killing it
    driver = subprocess.Popen([sys.executable, "-m", "icg_rl.train", *common, "--out", str(out), "--address",
                               address], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists():
        assert driver.poll() is None and time.monotonic() < deadline, "the driver ended before its first checkpoint"
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)  # mid-run: the checkpoint of iteration 2 is all that survives
    driver.wait(timeout=30)
    assert latest.read_text() == "iter_000002" and not (out / "summary.json").exists()

    assert main([*common, "--out", str(out), "--resume", "auto"]) == 0
    # tensors, not file bytes: safetensors writes its metadata map in a per-process hash order
    straight = load_file(tmp_path / "straight" / "checkpoint" / "icg.safetensors")
    resumed = load_file(out / "checkpoint" / "icg.safetensors")
    assert resumed.keys() == straight.keys()
    different = [k for k in straight if not torch.equal(resumed[k], straight[k])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different[:5]}"
    assert sorted(os.listdir(out / "checkpoints")) == ["iter_000002", "iter_000004", "latest"]
