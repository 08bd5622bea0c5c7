"""Exact resume: SIGKILL the training driver after a checkpoint (or in the middle of one, on an S3 API), `--resume
auto`, and the final ICG weights equal an uninterrupted run's, bit for bit (every draw derives from (seed, iteration);
optimizer moments, reward statistics, advantage tracker and data position are restored)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import MICRO_CONFIG, ROOT
from tests.s3_server import BUCKET, s3_server, s3_uri

ARGS = ["algo.num_inference_steps=4", "train.iterations=4", "train.checkpoint_every=2", "train.eval_every=100",
        "train.average_last=0.75",  # the exported policy is the mean of updates 2-4: its running sum resumes too
        "train.eval_pairs=4", "train.tracker=none", "data.samples_per_pair=2"]


def command(micro_world) -> list[str]:
    cfg, _ = micro_world
    return ["--config", str(MICRO_CONFIG), f"world.dir={cfg.world.dir}", *ARGS]


@pytest.fixture(scope="module")
def straight(micro_world, micro_preference, ray_cluster, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final ICG weights of the run nobody interrupts."""
    from icg_rl.commands.train import main

    out = tmp_path_factory.mktemp("straight")
    assert main([*command(micro_world), "--out", str(out)]) == 0
    return load_file(out / "checkpoint" / "icg.safetensors")


def spawn_driver(args: list[str], ray_cluster) -> subprocess.Popen:
    """The training driver as its own process on the shared cluster, so the test can SIGKILL it."""
    address = ray_cluster.get_runtime_context().gcs_address
    return subprocess.Popen([sys.executable, "-m", "icg_rl.train", *args, "--address", address], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def assert_same_weights(resumed_file, straight: dict[str, torch.Tensor]) -> None:
    # tensors, not file bytes: safetensors writes its metadata map in a per-process hash order
    resumed = load_file(resumed_file)
    assert resumed.keys() == straight.keys()
    different = [k for k in straight if not torch.equal(resumed[k], straight[k])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different[:5]}"


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_auto_is_exact(micro_world, ray_cluster, straight, tmp_path):
    from icg_rl.commands.train import main

    out = tmp_path / "killed"
    driver = spawn_driver([*command(micro_world), "--out", str(out)], ray_cluster)
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists():
        assert driver.poll() is None and time.monotonic() < deadline, "the driver ended before its first checkpoint"
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)  # mid-run: the checkpoint of iteration 2 is all that survives
    driver.wait(timeout=30)
    assert latest.read_text() == "iter_000002" and not (out / "summary.json").exists()

    assert main([*command(micro_world), "--out", str(out), "--resume", "auto"]) == 0
    assert_same_weights(out / "checkpoint" / "icg.safetensors", straight)
    assert sorted(os.listdir(out / "checkpoints")) == ["iter_000002", "iter_000004", "latest"]


@pytest.mark.slow
def test_sigkill_mid_checkpoint_on_s3_then_resume_auto_from_s3_is_exact(micro_world, ray_cluster, straight,
                                                                       tmp_path):
    """The driver dies while uploading the checkpoint of iteration 4 to an S3 API: the server holds that checkpoint's
    manifest PUT, the test SIGKILLs the driver then. Resuming must skip the unfinished checkpoint (its data files are
    there, its manifest is not) and still end bit for bit where the uninterrupted run ended."""
    pytest.importorskip("moto.server", reason="moto[server] is in the dev extra: pip install -e '.[dev]'")
    from icg_rl.commands.train import main

    with s3_server() as (endpoint, client, holder):
        storage = s3_uri(endpoint, "resume-run")
        args = [*command(micro_world), f"train.storage_path={storage}", "--out", str(tmp_path / "run")]
        holder.hold("/iter_000004/manifest.json")
        driver = spawn_driver(args, ray_cluster)  # inherits the server's dummy credentials
        deadline = time.monotonic() + 300
        while not holder.reached.wait(timeout=0.5):
            assert driver.poll() is None and time.monotonic() < deadline, "the driver never reached iteration 4"
        driver.send_signal(signal.SIGKILL)  # its manifest PUT is in flight: the upload dies half done
        driver.wait(timeout=30)
        holder.release()

        def objects() -> list[str]:
            listed = client.list_objects_v2(Bucket=BUCKET, Prefix="resume-run/")
            return sorted(o["Key"] for o in listed.get("Contents", []) if not o["Key"].endswith("/"))

        before = objects()
        assert "resume-run/iter_000002/manifest.json" in before and "resume-run/iter_000004/manifest.json" \
            not in before
        assert [k for k in before if k.startswith("resume-run/iter_000004/")], "iteration 4's files were not uploaded"
        assert client.get_object(Bucket=BUCKET, Key="resume-run/latest")["Body"].read() == b"iter_000002"

        assert main([*args, "--resume", "auto"]) == 0
        assert_same_weights(tmp_path / "run" / "checkpoint" / "icg.safetensors", straight)
        assert "resume-run/iter_000004/manifest.json" in objects()
        assert client.get_object(Bucket=BUCKET, Key="resume-run/latest")["Body"].read() == b"iter_000004"
