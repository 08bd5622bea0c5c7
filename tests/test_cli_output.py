"""What a command prints and where its results land (issue 19): a quiet log by default — one line per stage, the
training bar, the summary, and a last line naming the results by absolute path —, Ray's own output back with
`--verbose`, actor errors either way, and relative output paths that outlive a Ray job's temporary working directory
(the real `ray job submit` case is tests/distributed/test_job_submit.py)."""

import os
import subprocess
import sys

import pytest

from icg_rl.paths import DEFAULT_JOB_ROOT, JOB_MARKER_ENV, RUNS_ROOT_ENV, resolve_output
from tests.conftest import MICRO_CONFIG, ROOT


def run_python(args: list[str], timeout: int = 600) -> str:
    """A fresh interpreter in the repository (its own local Ray cluster beside the tests' one): its console, stdout
    and stderr interleaved as a terminal shows them (unbuffered, as under `ray job submit`)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ICG_RL_VERBOSE", JOB_MARKER_ENV)}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=environ | {"RAY_AUTH_MODE": "disabled",
                                                                           "PYTHONUNBUFFERED": "1"},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-4000:]
    return done.stdout


def screen_lines(output: str) -> list[str]:
    """The lines a terminal keeps: a progress bar redraws itself with carriage returns, so only its last state."""
    return [line.rsplit("\r", 1)[-1] for line in output.splitlines() if line.rsplit("\r", 1)[-1].strip()]


# ------------------------------------------------------------------------------------------------- --verbose
@pytest.mark.parametrize("module", ["icg_rl.train", "icg_rl.commands.preference", "icg_rl.evaluate",
                                    "icg_rl.commands.world", "icg_rl.commands.serve"])
def test_every_command_takes_verbose(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as done:
        importlib.import_module(module).main(["--help"])
    assert done.value.code == 0 and "--verbose" in capsys.readouterr().out


PROBE = """
import sys, time
import ray
from icg_rl.commands.common import base_parser, parse_config
from icg_rl.distributed.placement import connect

parse_config(base_parser("probe", "").parse_intermixed_args(sys.argv[1:]))  # what every command does first
print("Ray:", connect(None, 1), flush=True)

@ray.remote(num_cpus=0)
def chatter():
    print("worker-stdout-marker", flush=True)

@ray.remote(num_cpus=0, max_retries=0)
def fails():
    raise ValueError("actor-error-marker")

ray.get(chatter.remote())
try:
    ray.get(fails.remote())
except ValueError as err:  # Ray raises the task's own exception type in the driver
    print("driver caught:", "actor-error-marker" in str(err), flush=True)
time.sleep(4)  # worker output reaches the driver asynchronously (the log monitor): let it arrive before shutdown
ray.shutdown()
"""


@pytest.mark.slow
def test_verbose_forwards_actor_output_and_quiet_keeps_it_in_the_log_files_but_errors_surface_either_way():
    quiet = run_python(["-c", PROBE, "--config", str(MICRO_CONFIG)], timeout=180)
    assert "worker-stdout-marker" not in quiet and "pid=" not in quiet, quiet[-3000:]
    assert "driver caught: True" in quiet and "actors' logs in /" in quiet and "--verbose prints them" in quiet
    assert "Started a local Ray instance" not in quiet  # Ray's INFO logging

    verbose = run_python(["-c", PROBE, "--config", str(MICRO_CONFIG), "--verbose"], timeout=180)
    assert "(chatter pid=" in verbose and "worker-stdout-marker" in verbose, verbose[-3000:]
    assert "driver caught: True" in verbose and "actors' logs in" not in verbose


@pytest.mark.slow
def test_quiet_training_run_log_fits_a_screen_and_its_checkpoint_explains_itself(micro_world, micro_preference,
                                                                                  tmp_path):
    from icg_rl.models.pipeline import ICGPipeline

    cfg, _ = micro_world
    out = tmp_path / "run"
    output = run_python(["-m", "icg_rl.train", "--config", str(MICRO_CONFIG), "--out", str(out),
                         f"world.dir={cfg.world.dir}", "train.iterations=2", "algo.num_inference_steps=4",
                         "train.eval_pairs=8", "train.tracker=none"])
    lines = screen_lines(output)
    before_summary = lines[:next(i for i, line in enumerate(lines) if line.startswith("== ICG training run"))]
    # this run with --verbose (as before issue 19): 22 forwarded actor lines and Ray Data's INFO block on top: 101
    # lines. Quiet: 16 before the summary (stage lines, the bar, a few library warnings of the driver), 58 in all
    assert len(before_summary) <= 20 and len(lines) <= 80, "\n".join(lines)
    assert not [line for line in lines if "pid=" in line or "Dataset" in line], output[-3000:]
    assert any(line.startswith("ICG ") and "2/2" in line for line in lines)  # the training bar stays
    assert lines[-1] == f"summary: {out / 'summary.json'}  checkpoint: {out / 'checkpoint'}"
    assert (out / "summary.json").is_file()

    checkpoint = out / "checkpoint"
    card = (checkpoint / "README.md").read_text()
    assert card.startswith("---\n") and "## Evaluation" in card and "## CoverWorld oracle" in card
    assert (checkpoint / "samples.png").read_bytes() == (out / "samples.png").read_bytes()
    pipe = ICGPipeline.from_pretrained(f"{cfg.world.dir}/models/sd", icg_path=checkpoint)  # the card is ignored
    assert pipe.icg.config["meta_tokens"] == cfg.model.meta_tokens


# --------------------------------------------------------------------------------------- where results land
def test_outputs_outside_a_ray_job_resolve_from_the_current_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(JOB_MARKER_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_output("runs/x", "--out") == (str(tmp_path / "runs" / "x"), None)
    assert resolve_output("/abs/run", "--out") == ("/abs/run", None)
    assert resolve_output("s3://bucket/run", "train.storage_path") == ("s3://bucket/run", None)


def test_relative_outputs_of_a_ray_job_go_under_a_stable_root_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv(JOB_MARKER_ENV, "{}")
    monkeypatch.delenv(RUNS_ROOT_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path, warning = resolve_output("runs/train", "train.out")
    assert DEFAULT_JOB_ROOT == "~/icg_rl_runs" and path == str(tmp_path / "home" / "icg_rl_runs" / "runs" / "train")
    assert warning.startswith("train.out: 'runs/train' is relative and this runs as a Ray job") and path in warning

    monkeypatch.setenv(RUNS_ROOT_ENV, str(tmp_path / "shared"))
    path, warning = resolve_output("runs/train", "--out")
    assert path == str(tmp_path / "shared" / "runs" / "train") and warning.startswith("--out: ")
    assert resolve_output("/abs/run", "--out") == ("/abs/run", None)  # an explicit location is used as given
    assert resolve_output("s3://bucket/run", "--out") == ("s3://bucket/run", None)
