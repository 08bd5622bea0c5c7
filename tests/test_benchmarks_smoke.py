"""Smoke test of benchmarks/throughput.py: the command answers --help, and the helpers that build its table and
measure memory are correct. Runs nothing heavy (no models, no Ray, no trl)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("throughput")


def test_help_runs_without_heavy_imports():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--pairs", "--samples", "--steps", "--warmup", "--iterations", "--ray-threads", "--json"):
        assert flag in out.stdout
    assert "trl" in out.stdout and "PSS" in out.stdout


def test_parse_args_defaults_and_validation(bench):
    args = bench.parse_args([])
    assert (args.pairs, args.samples, args.steps, args.warmup, args.iterations) == (4, 4, 10, 3, 10)
    assert args.systems == list(bench.SYSTEMS) and args.ray_threads == ["fitted"]
    args = bench.parse_args(["--systems", "in-process,ray-async", "--ray-threads", "fitted,1", "ray.num_cpus=2"])
    assert args.systems == ["in-process", "ray-async"] and args.ray_threads == ["fitted", "1"]
    assert args.overrides == ["ray.num_cpus=2"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--systems", "in-process,deepspeed"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--iterations", "0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--ray-threads", "fitted,0"])


def test_summarize_and_ratios(bench):
    stats = bench.summarize([0.5, 0.3, 0.4], rows_per_iteration=16)
    assert stats["seconds_per_iteration"] == pytest.approx(0.4)
    assert stats["samples_per_s"] == pytest.approx(40.0)
    assert (stats["min_s"], stats["max_s"]) == (0.3, 0.5)
    with pytest.raises(ValueError):
        bench.summarize([], 16)
    assert bench.ratio(30.0, 20.0) == pytest.approx(1.5)
    assert bench.ratio(None, 20.0) is None and bench.ratio(3.0, None) is None and bench.ratio(3.0, 0.0) is None

    rows = [{"system": bench.BASELINE, "samples_per_s": 40.0},
            {"system": bench.TRL_ROW, "samples_per_s": 20.0},
            {"system": "Ray async, 1 thread/actor", "samples_per_s": 50.0},
            {"system": "trl DDPOTrainer (stock pipeline)", "status": "unavailable: RuntimeError: boom"}]
    bench.add_ratios(rows)
    assert rows[0]["ratio_in_process"] == pytest.approx(1.0) and rows[0]["ratio_trl"] == pytest.approx(2.0)
    assert rows[2]["ratio_in_process"] == pytest.approx(1.25) and rows[2]["ratio_trl"] == pytest.approx(2.5)
    assert rows[3]["ratio_in_process"] is None and rows[3]["ratio_trl"] is None
    # no trl row at all (trl not installed): the column stays empty instead of failing
    alone = bench.add_ratios([{"system": bench.BASELINE, "samples_per_s": 40.0}])
    assert alone[0]["ratio_trl"] is None
    # the JSON's headline: first sync / async Ray rows over in-process, the fastest Ray row over trl
    rows += bench.add_ratios([{"system": bench.BASELINE, "samples_per_s": 40.0},
                              {"system": "Ray sync, threads fitted", "samples_per_s": 36.0},
                              {"system": "Ray sync, 1 thread/actor", "samples_per_s": 30.0}])[1:]
    bench.add_ratios(rows)
    assert bench.headline_ratios(rows) == pytest.approx({"ray_sync_over_inprocess": 0.9,
                                                         "ray_async_over_inprocess": 1.25, "ours_over_trl": 2.5})
    assert bench.headline_ratios(alone) == {"ray_sync_over_inprocess": None, "ray_async_over_inprocess": None,
                                            "ours_over_trl": None}


def test_markdown_table(bench):
    rows = bench.add_ratios([
        {"system": bench.BASELINE, "samples_per_s": 37.2, "seconds_per_iteration": 0.43, "peak_pss_gb": 0.58},
        {"system": bench.TRL_ROW, "status": f"unavailable: {bench.TRL_NOT_INSTALLED}", "peak_pss_gb": None},
        {"system": "Ray sync, 2 threads/actor", "samples_per_s": 18.6, "seconds_per_iteration": 0.86,
         "peak_pss_gb": 3.8},
        {"system": "odd", "status": "failed: ValueError: a|b\nsecond line"},
    ])
    lines = bench.markdown_table(rows).splitlines()
    assert lines[0].startswith("| system | s / iteration | samples/s | × in-process | × trl |")
    assert len(lines) == 2 + 4 and all(line.count("|") - line.count("\\|") == 7 for line in lines)
    assert lines[2] == f"| {bench.BASELINE} | 0.430 | 37.2 | 1.00× | — | 0.58 |"
    assert lines[3] == (f"| {bench.TRL_ROW} | unavailable: trl not installed (pip install -e '.[bench]') "
                        f"| — | — | — | — |")
    assert lines[4] == "| Ray sync, 2 threads/actor | 0.860 | 18.6 | 0.50× | — | 3.80 |"
    assert "a\\|b second line" in lines[5]


def test_settings_line_and_short_error(bench):
    settings = {"pairs": 4, "samples": 4, "rows": 16, "steps": 10, "eta": 1.0, "guidance": 1.0, "resolution": 32,
                "latent": "4×8×8", "warmup": 3, "iterations": 10, "threads": 2, "ray_threads": "2, 1", "cpus": 2,
                "rewards": "1·aesthetic", "trl": "0.23.1, full UNet (824,452 trainable)"}
    line = bench.settings_line(settings)
    assert "4 pairs × 4 samples = 16 images/iteration" in line and "10 DDIM steps" in line
    assert "32 px" in line and "3 warm-up + 10 timed" in line and "{2, 1}" in line
    assert "trl 0.23.1, full UNet" in line
    bare = bench.settings_line(settings | {"ray_threads": "", "trl": ""})
    assert "Ray" not in bare and "trl" not in bare
    trl_row = {"system": bench.TRL_ROW, "trl_version": "0.23.1", "lora": True, "trainable_params": 11008}
    assert bench._trl_setting([trl_row]) == "0.23.1, LoRA r=4 on the UNet attention (11,008 trainable)"
    assert bench._trl_setting([{"system": bench.TRL_ROW, "status": "unavailable: x"}]) == ""
    assert bench.short_error(RuntimeError("size mismatch\nmore")) == "RuntimeError: size mismatch"
    assert bench.short_error(ValueError()) == "ValueError"
    assert len(bench.short_error(RuntimeError("x" * 1000), limit=50)) == 50


def test_time_iterations_and_phases(bench, capsys):
    calls = []

    def step():
        calls.append(1)
        return {"time/rollout": 0.2, "time/learn": 0.1, "sync/ms": 10.0, "reward/total": 3.0}

    result = bench.time_iterations(step, warmup=2, iterations=4, label="fake")
    assert len(calls) == 6 and len(result["times"]) == 4 and all(t >= 0 for t in result["times"])
    assert result["phases"] == pytest.approx({"rollout": 0.2, "learn": 0.1, "sync": 0.01})
    assert "fake: iteration 4/4" in capsys.readouterr().out
    line = bench.phases_line({"system": "Ray sync", "phases": result["phases"] | {"iteration": 0.5}})
    assert line == "Ray sync: rollout 0.200 s, learn 0.100 s, sync 0.010 s"
    assert bench.phases_line({"system": "x"}) is None
    assert bench.time_iterations(lambda: None, 0, 1, "none")["phases"] == {}


def test_disturbance_notes(bench):
    rows = [{"system": "a", "other_cpu_cores": 0.05}, {"system": "b", "other_cpu_cores": 0.9},
            {"system": "c", "other_cpu_cores": None}, {"system": "d"}]
    notes = bench.disturbance_notes(rows)
    assert len(notes) == 1 and "'b'" in notes[0] and "0.90 CPU cores" in notes[0]


def test_peak_memory_samples_this_process(bench):
    with bench.PeakMemory(interval=0.02) as sampler:
        block = bytearray(64 * 2**20)  # 64 MiB, touched
        block[:: 4096] = b"\1" * len(block[:: 4096])
        time.sleep(0.2)
    assert sampler.max_processes >= 1
    assert sampler.other_cpu_cores is not None and sampler.other_cpu_cores >= 0.0
    assert sampler.peak_pss >= 64 * 2**20 and sampler.peak_rss >= sampler.peak_pss * 0.9
    del block


def test_guidance_shim_concatenates_negatives_only_under_cfg(bench):
    class FakePipeline:  # diffusers >= 0.22: _encode_prompt concatenates (negative, positive) unconditionally
        def encode_prompt(self, prompt, device, n, cfg, negative_prompt=None, prompt_embeds=None,
                          negative_prompt_embeds=None, lora_scale=None, **kw):
            return prompt_embeds, negative_prompt_embeds

        def _encode_prompt(self, prompt, device, n, cfg, negative_prompt=None, prompt_embeds=None,
                           negative_prompt_embeds=None, lora_scale=None, **kw):
            pos, neg = self.encode_prompt(prompt, device, n, cfg, negative_prompt, prompt_embeds,
                                          negative_prompt_embeds, lora_scale)
            return [*neg, *pos]

    pipe = FakePipeline()
    assert pipe._encode_prompt(None, "cpu", 1, False, prompt_embeds=["p"], negative_prompt_embeds=["n"]) == ["n", "p"]
    bench.restore_encode_prompt_contract(pipe)
    assert pipe._encode_prompt(None, "cpu", 1, False, prompt_embeds=["p"], negative_prompt_embeds=["n"]) == ["p"]
    assert pipe._encode_prompt(None, "cpu", 1, True, prompt_embeds=["p"], negative_prompt_embeds=["n"]) == ["n", "p"]
    assert FakePipeline()._encode_prompt(None, "cpu", 1, False, prompt_embeds=["p"],
                                         negative_prompt_embeds=["n"]) == ["n", "p"]  # other instances untouched


def test_trl_missing_gives_an_unavailable_row(bench, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` raises ImportError, as without the bench extra
    row = bench.measure(bench.TRL_ROW, lambda: bench.run_trl(None, None, bench.time_iterations, shim=True), 16, 0.05)
    assert row["status"] == "unavailable: trl not installed (pip install -e '.[bench]')"
    assert row.get("samples_per_s") is None
    table = bench.markdown_table(bench.add_ratios([row]))
    assert "| unavailable: trl not installed (pip install -e '.[bench]') |" in table


def test_serve_benchmarks_answer_help_and_split_latency():
    """benchmarks/serve_load.py and serve_fuzz.py (issue 22): --help without Ray, and the latency table's arithmetic."""
    for script in ("serve_load.py", "serve_fuzz.py"):
        out = subprocess.run([sys.executable, str(SCRIPT.parent / script), "--help"], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and "--policy" in out.stdout, out.stderr
    load = load_benchmark("serve_load")
    header = 'ingress;dur=0.10, generator;dur=15.00, swap;dur=0.00, pipeline;dur=10.00, encode;dur=1.00, batch;desc="1"'
    timing = load.server_timing(header)
    assert timing == {"ingress": 0.1, "generator": 15.0, "swap": 0.0, "pipeline": 10.0, "encode": 1.0}
    lines = load.latency_table(bare=[0.010, 0.010], http=[0.020, 0.020], timings=[timing, timing])
    assert "|   HTTP proxy, JSON, client (end to end − the above) | 3.9 |" in lines
    assert "**p50 ratio, HTTP / bare pipeline: 2.00×**" in lines[-1]


def test_gpu_bench_dry_run_on_cpu_prints_its_table(micro_world):
    """benchmarks/gpu_bench.py runs its whole code path with tiny dimensions on CPU (compilation off: the compiled
    paths' equivalence is tests/rl/test_speed.py's), so a lent GPU's minutes are not spent finding a broken script."""
    cfg, _ = micro_world
    script = SCRIPT.parent / "gpu_bench.py"
    out = subprocess.run([sys.executable, str(script), "--device", "cpu", "--tiny", "--steps", "2", "--batch", "2",
                          "--repeats", "1", "--models", f"{cfg.world.dir}/models", "--rollout-compile", "off",
                          "--learner-compile", "off"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = dict([cell.strip() for cell in line.strip().strip("|").split("|", 1)] for line in out.stdout.splitlines()
                if line.startswith("| ") and not line.startswith("| measurement"))
    assert float(rows["rollout / bare"].rstrip("×")) > 0
    assert float(rows["learner DDPO step (2 timesteps × batch 2, fwd+bwd)"].split()[0]) > 0
    assert rows["weight sync: GPU → numpy → GPU"].endswith(" ms")
