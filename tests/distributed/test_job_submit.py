"""`ray start --head` + `ray job submit --working-dir . -- python -m icg_rl.train --config configs/micro.yaml`: the
README's cluster path, end to end, on a second local cluster (own ports, its own session) beside the shared one, and
the results still there once that cluster is gone."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_session(sid: int) -> None:
    """SIGKILL every process of the head's session: `ray stop` would also take down the tests' shared cluster."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                proc.send_signal(signal.SIGKILL)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue


@pytest.mark.slow
def test_ray_job_submit_runs_training_on_a_started_cluster_and_its_results_outlive_it(micro_world, micro_preference,
                                                                                       tmp_path):
    """One job, both kinds of output location: a relative --out (which would land in Ray's temporary copy of the
    working directory, deleted with the cluster) goes under $ICG_RL_RUNS and the last log line names it; an
    absolute train.storage_path is used as given."""
    cfg, _ = micro_world
    bin_dir = str(Path(sys.executable).parent)  # the job's `python` is the one on the head's PATH: this venv's
    runs_root, storage = tmp_path / "icg_rl_runs", tmp_path / "checkpoints"
    # the head's environment reaches the job's driver (ICG_RL_RUNS: as a user would point it at a shared volume)
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                        "ICG_RL_RUNS": str(runs_root)}
    env.pop("ICG_RL_VERBOSE", None)
    gcs, dashboard = free_port(), free_port()
    # own ports (the shared cluster's dashboard agent holds the default 52365) and its own short temp dir: Ray's
    # unix socket paths must stay under ~107 characters, and the default /tmp/ray
    # would remember this cluster as "the current one" after the test kills it
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")
    head_log = open(tmp_path / "head.log", "w")  # noqa: SIM115 - closed in finally
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--num-cpus", "2", "--port", str(gcs), "--include-dashboard", "true",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--ray-client-server-port",
         str(free_port()), "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", temp_dir],
        env=env, cwd=ROOT, start_new_session=True, stdout=head_log, stderr=subprocess.STDOUT)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 120
        while subprocess.run(["ray", "job", "list", "--address", address], env=env, capture_output=True).returncode:
            assert time.monotonic() < deadline and head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(2)
        for _ in range(8):  # the dashboard answers before its job agent is up: "No available agent", retry
            job = subprocess.run(
                ["ray", "job", "submit", "--address", address, "--working-dir", ".", "--", "python", "-m",
                 "icg_rl.train", "--config", "configs/micro.yaml", "--out", "runs/job", f"world.dir={cfg.world.dir}",
                 f"train.storage_path={storage}", "train.iterations=2", "train.tracker=none"],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
            if "No available agent" not in job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0 and "succeeded" in job.stdout + job.stderr, job.stdout[-3000:] + job.stderr[-3000:]
        job_id = re.search(r"Job '(raysubmit_\w+)' submitted successfully", job.stdout + job.stderr).group(1)
        logs = subprocess.run(["ray", "job", "logs", "--address", address, job_id], env=env, capture_output=True,
                              text=True, timeout=60).stdout  # the driver's output alone, as a user reads it later
    finally:
        kill_session(head.pid)  # what `ray stop` does to this cluster, sparing the tests' shared one
        head.wait(timeout=30)
        head_log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)  # the session folder, Ray's working-dir copy included

    lines = [line.rsplit("\r", 1)[-1] for line in logs.splitlines() if line.rsplit("\r", 1)[-1].strip()]
    last = re.fullmatch(r"summary: (\S+)  checkpoint: (\S+)", lines[-1])
    assert last, logs[-3000:]
    summary_path, checkpoint = Path(last.group(1)), Path(last.group(2))
    assert summary_path == runs_root / "runs" / "job" / "summary.json", lines[-1]
    warning = next(line for line in lines if "--out: 'runs/job' is relative and this runs as a Ray job" in line)
    assert "runtime_resources" in warning and str(runs_root / "runs" / "job") in warning  # where it would have gone
    assert "pid=" not in logs  # actors' output stays in the session's log files (quiet by default)
    summary = json.loads(summary_path.read_text())  # still there: the cluster and its temp folder are gone
    assert summary["iterations"] == 2 and Path(summary["checkpoint"]) == checkpoint
    assert (checkpoint / "icg.safetensors").is_file() and (checkpoint / "README.md").is_file()
    assert Path(summary["last_checkpoint"]["path"]).parent == storage and (storage / "latest").exists()
