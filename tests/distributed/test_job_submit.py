"""`ray start --head` + `ray job submit --working-dir . -- python -m icg_rl.train --config configs/micro.yaml`: the
README's cluster path, end to end, on a second local cluster (own ports, its own session) beside the shared one."""

import json
import os
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
def test_ray_job_submit_runs_training_on_a_started_cluster(micro_world, micro_preference, tmp_path):
    cfg, _ = micro_world
    bin_dir = str(Path(sys.executable).parent)  # the job's `python` is the one on the head's PATH: this venv's
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
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
        out = tmp_path / "run"
        for _ in range(8):  # the dashboard answers before its job agent is up: "No available agent", retry
            job = subprocess.run(
                ["ray", "job", "submit", "--address", address, "--working-dir", ".", "--", "python", "-m",
                 "icg_rl.train", "--config", "configs/micro.yaml", "--out", str(out), f"world.dir={cfg.world.dir}",
                 "train.iterations=2", "train.tracker=none"],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
            if "No available agent" not in job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0 and "succeeded" in job.stdout + job.stderr, job.stdout[-3000:] + job.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["iterations"] == 2 and (Path(summary["checkpoint"]) / "icg.safetensors").is_file()
    finally:
        kill_session(head.pid)
        head.wait(timeout=30)
        head_log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
