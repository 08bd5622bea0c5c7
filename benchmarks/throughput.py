"""Training throughput, one run, same settings: in-process (`rl/local.py`) vs the Ray trainer (sync and async) vs
trl 0.23.1's DDPOTrainer (the `bench` extra: `pip install -e '.[bench]'`).

    python benchmarks/throughput.py [--config FILE] [--pairs 4] [--samples 4] [--steps 10] [--warmup 3]
        [--iterations 10] [--ray-threads fitted] [--systems in-process,trl,ray-sync,ray-async] [--json PATH]
        [KEY=VALUE ...]

Every system runs DDPO (PPO-clip, eta from `algo.eta`, CFG `algo.guidance_scale`) on P pairs × K samples per
iteration, `--steps` DDIM steps, all recorded steps trained, one optimizer step per iteration, at the world's
resolution (`world.image_size`; the tiny SD of `world.dir`/models/sd). They run one after another in this process:
`--warmup` untimed iterations, then `--iterations` timed ones; s / iteration is the mean of the timed ones and
samples/s = P·K / that. Setup (model loading, starting Ray and its actors) is not timed. Everything runs on CPU.
Below the table, "where the time goes": each system's phases, mean seconds per timed iteration (in-process and Ray:
the `time/*` metrics their `step()` returns, for Ray also `learner_gradients` / `learner_optimizer` timed inside
the learner actor, so `learn` minus them is transport and waiting; trl: its `_generate_samples`, `compute_rewards` and
`_train_batched_samples`, timed by wrapping those methods). Async Ray's rollout is the wait for rollouts submitted
during the previous iteration, timed from their submission, so its phases overlap and do not add up.

- in-process: `LocalTrainer(cfg).step()`, `--threads` torch threads; rewards are the config's mix.
- Ray sync / async: `icg_rl.train.RayTrainer(cfg).step()` as `python -m icg_rl.train` builds it, each on a new
  local Ray cluster (started here, shut down after), the driver on 1 torch thread, actors on
  threads per role from each value of `--ray-threads`: `fitted` (the default: `ray.*_threads` unset, fitted to
  the machine by `distributed/placement.role_threads`) or N (`ray.threads_per_worker=N` for every role); async is
  `rollout.async=true` (one step off-policy).
- trl: `DDPOTrainer.step()` with `DefaultDDPOStableDiffusionPipeline` loaded from `world.dir`/models/sd (LoRA r=4
  on the UNet attention, trl's default; `--trl-full-unet` trains the whole UNet), `--threads` torch threads, CPU,
  mixed precision off; one trl "epoch" = one sampling batch of P·K images (P CoverWorld titles × K) and one
  optimizer step; reward = our aesthetic reward only; per-prompt advantage normalisation. Two rows: trl's stock
  pipeline, and the same pipeline with one compatibility shim (below). The "× trl" column compares with the shim row.
  trl 0.23.1 with diffusers >= 0.22 cannot sample at guidance_scale <= 1: DDPOTrainer always passes negative prompt
  embeddings, and diffusers' deprecated `_encode_prompt` (which trl calls) now concatenates them whether or not CFG
  is on, so the UNet gets 2·B text embeddings for B latents. The shim restores the old `_encode_prompt` contract
  (negatives only under CFG) on the pipeline instance; trl's sampling, loss and optimizer code run unchanged.

Peak memory: a background thread samples, every `--mem-interval` s from the start of a system's setup to its last
timed iteration, the memory of this process plus every process descended from it (for Ray: GCS, raylet, the
Ray Data and actor workers of the cluster this script started), and keeps the largest sum. The table shows PSS
(proportional set size: a page shared by n processes counts 1/n in each, so shared libraries and the object store's
shared memory are not counted once per process); the JSON also has the RSS sum (which counts them repeatedly). The
driver's own PSS just before each system starts is in the JSON as `baseline_pss_gb` (systems share this process).
The same thread tracks the CPU time of those processes; `other_cpu_cores` in the JSON is the machine's busy CPU time
not spent by them, per second of the run (other users' processes), and a warning follows the table where it exceeds
0.2 cores: on a small machine such a timing is not comparable.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package
from peak_memory import PeakMemory, release_memory  # noqa: E402, F401 - PeakMemory: tests
from trl_peer import (  # noqa: E402, F401 - TRL_NOT_INSTALLED and the shim are re-exported for the tests
    TRL_NOT_INSTALLED,
    TrlUnavailable,
    restore_encode_prompt_contract,
    run_trl,
    short_error,
)

SYSTEMS = ("in-process", "trl", "ray-sync", "ray-async")
BASELINE = "in-process (rl/local.py)"  # the row the "× in-process" column divides by
TRL_ROW = "trl DDPOTrainer (+ guidance shim)"  # the row the "× trl" column divides by


# ------------------------------------------------------------------------------------------------ pure helpers
def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None when either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def summarize(times: list[float], rows_per_iteration: int) -> dict[str, float]:
    """Per-iteration wall times (s) -> mean s / iteration, samples/s and the spread."""
    if not times:
        raise ValueError("summarize: no timed iterations")
    mean = sum(times) / len(times)
    return {"seconds_per_iteration": mean, "samples_per_s": rows_per_iteration / mean,
            "min_s": min(times), "max_s": max(times)}


def add_ratios(rows: list[dict], baseline: str = BASELINE, trl: str = TRL_ROW) -> list[dict]:
    """Fill `ratio_in_process` / `ratio_trl` (samples/s over the reference row's) in place; returns rows."""
    by_name = {row["system"]: row.get("samples_per_s") for row in rows}
    for row in rows:
        row["ratio_in_process"] = ratio(row.get("samples_per_s"), by_name.get(baseline))
        row["ratio_trl"] = ratio(row.get("samples_per_s"), by_name.get(trl))
    return rows


def headline_ratios(rows: list[dict]) -> dict[str, float | None]:
    """The issue's three numbers: the first Ray sync and async rows (the fitted threads when they ran) over the
    in-process loop, and the fastest Ray row over trl's DDPOTrainer (with the shim); None where a row is missing."""
    def first(prefix: str) -> dict:
        return next((r for r in rows if r["system"].startswith(prefix) and r.get("samples_per_s")), {})

    ours = [r for r in rows if r["system"].startswith("Ray") and r.get("ratio_trl") is not None]
    return {"ray_sync_over_inprocess": first("Ray sync").get("ratio_in_process"),
            "ray_async_over_inprocess": first("Ray async").get("ratio_in_process"),
            "ours_over_trl": max((r["ratio_trl"] for r in ours), default=None)}


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def markdown_table(rows: list[dict]) -> str:
    """The result table; a row without numbers shows its status ('unavailable: …' / 'failed: …') instead."""
    lines = ["| system | s / iteration | samples/s | × in-process | × trl | peak memory (GB, PSS) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        if row.get("samples_per_s") is None:
            status = str(row.get("status", "unavailable")).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {row['system']} | {status} | — | — | — | {_fmt(row.get('peak_pss_gb'), '.2f')} |")
            continue
        lines.append(f"| {row['system']} | {row['seconds_per_iteration']:.3f} | {row['samples_per_s']:.1f} | "
                     f"{_fmt(row.get('ratio_in_process'), '.2f', '×')} | {_fmt(row.get('ratio_trl'), '.2f', '×')} | "
                     f"{_fmt(row.get('peak_pss_gb'), '.2f')} |")
    return "\n".join(lines)


def settings_line(settings: dict) -> str:
    """One line with what every row shares; the Ray and trl parts only when those systems ran."""
    line = ("settings: DDPO, {pairs} pairs × {samples} samples = {rows} images/iteration, {steps} DDIM steps "
            "(eta {eta:g}, CFG {guidance:g}), {resolution} px ({latent} latents), {warmup} warm-up + {iterations} "
            "timed iterations per system, {threads} torch threads in-process, rewards {rewards}").format(**settings)
    if settings.get("ray_threads"):
        line += ("; Ray: new local cluster of {cpus} CPUs, driver 1 thread, actor threads ∈ "
                 "{{{ray_threads}}}").format(**settings)
    if settings.get("trl"):
        line += f"; trl {settings['trl']}, {settings['threads']} torch threads, reward aesthetic only"
    return line


def disturbance_notes(rows: list[dict], threshold: float = 0.2) -> list[str]:
    """Warnings for systems during which processes outside this benchmark kept CPU cores busy."""
    return [f"warning: other processes kept {row['other_cpu_cores']:.2f} CPU cores busy during "
            f"'{row['system']}': its timing is disturbed; rerun on an idle machine"
            for row in rows if (row.get("other_cpu_cores") or 0.0) > threshold]


# ------------------------------------------------------------------------------------------------ measurement
def time_iterations(step: Callable[[], object], warmup: int, iterations: int, label: str) -> dict:
    """Untimed warm-up, then timed iterations -> {'times': [s, ...], 'phases': mean seconds per phase}: the
    `time/*` entries (and `sync/ms`) of the metrics each step returns, averaged over the timed iterations."""
    for _ in range(warmup):
        step()
    times, phases = [], {}
    for i in range(iterations):
        start = time.perf_counter()
        metrics = step()
        times.append(time.perf_counter() - start)
        for key, value in (metrics or {}).items():
            if key.startswith(("time/", "perf/learner_")) or key == "sync/ms":  # perf/learner_: inside the actor
                name, seconds = (("sync", value / 1e3) if key == "sync/ms" else
                                 (key.removeprefix("time/").removeprefix("perf/").removesuffix("_s"), value))
                phases[name] = phases.get(name, 0.0) + float(seconds) / iterations
        print(f"  {label}: iteration {i + 1}/{iterations} {times[-1]:.3f} s", flush=True)
    return {"times": times, "phases": phases}


def phases_line(row: dict) -> str | None:
    """'system: rollout 0.21 s, reward 0.01 s, ...' from a row's phases (mean seconds per timed iteration)."""
    phases = {k: v for k, v in (row.get("phases") or {}).items() if k != "iteration"}
    if not phases:
        return None
    return f"{row['system']}: " + ", ".join(f"{k} {v:.3f} s" for k, v in phases.items())


# ------------------------------------------------------------------------------------------------ the systems
def run_in_process(cfg, args) -> dict:
    import torch

    from icg_rl.rl.local import LocalTrainer

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    trainer = LocalTrainer(cfg)
    setup = time.perf_counter() - start
    return time_iterations(trainer.step, args.warmup, args.iterations, "in-process") | {"setup_s": setup}


def run_ray(cfg, args) -> dict:
    import ray
    import torch

    from icg_rl.commands.train import RayTrainer
    from icg_rl.distributed.placement import connect

    torch.set_num_threads(1)  # as `python -m icg_rl.train`: the driver mixes rewards and computes advantages only
    start = time.perf_counter()
    connect(None, cfg.ray.num_cpus)
    try:
        trainer = RayTrainer(cfg)
        setup = time.perf_counter() - start
        try:
            label = f"ray {'async' if cfg.rollout.async_ else 'sync'} threads {trainer.threads}"
            result = time_iterations(trainer.step, args.warmup, args.iterations, label) | {"threads": trainer.threads}
        finally:
            trainer.shutdown()
            # drop every ObjectRef and Ray Data iterator while Ray is up: one collected after `ray.shutdown` makes
            # the core worker exit this whole process (and the systems still to run)
            del trainer
            gc.collect()
    finally:
        ray.shutdown()
    return result | {"setup_s": setup}


def measure(name: str, run: Callable[[], dict], rows_per_iteration: int, interval: float) -> dict:
    """Run one system under the memory sampler -> its JSON row (numbers, or a status saying why there are none)."""
    release_memory()
    sampler = PeakMemory(interval)
    baseline, _ = sampler.sample([sampler.root])
    row: dict = {"system": name, "baseline_pss_gb": baseline / 1e9}
    print(f"\n== {name}", flush=True)
    try:
        with sampler:
            result = run()
    except TrlUnavailable as err:
        row |= {"status": f"unavailable: {err}", "error": err.full or str(err)}
        return row
    except Exception as err:  # noqa: BLE001 - one system failing must not hide the others' numbers
        traceback.print_exc()
        row |= {"status": f"failed: {short_error(err)}", "error": traceback.format_exc()}
        return row
    finally:
        row |= {"peak_pss_gb": sampler.peak_pss / 1e9 or None, "peak_rss_gb": sampler.peak_rss / 1e9 or None,
                "processes": sampler.max_processes, "other_cpu_cores": sampler.other_cpu_cores}
        release_memory()
    times = result.pop("times")
    return row | {"status": "ok"} | summarize(times, rows_per_iteration) | result | {"times_s": times}


# ------------------------------------------------------------------------------------------------ the command
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config (default: the embedded CoverWorld one)")
    parser.add_argument("--pairs", type=int, default=4, help="(user, item) pairs per iteration (trl: titles)")
    parser.add_argument("--samples", type=int, default=4, help="samples per pair (trl: per title)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps per rollout")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations per system")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per system")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the in-process and trl runs")
    parser.add_argument("--ray-threads", default="fitted",
                        help="comma list of 'fitted' (threads per role fitted to the machine) and/or numbers "
                             "(ray.threads_per_worker for every role); each adds a sync and an async row")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list from {', '.join(SYSTEMS)}")
    parser.add_argument("--trl-full-unet", action="store_true", help="trl trains the whole UNet instead of LoRA")
    parser.add_argument("--mem-interval", type=float, default=2.0,
                        help="seconds between memory samples (each reads every process's smaps: at 0.25 s it took "
                             "~15%% of a core from the Ray rows' 15 processes)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows (and settings) here")
    parser.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE", help="config overrides for every system")
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"--systems: unknown {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    args.ray_threads = [t.strip() for t in str(args.ray_threads).split(",") if t.strip()]
    if any(t != "fitted" and not (t.isdigit() and int(t) >= 1) for t in args.ray_threads):
        parser.error(f"--ray-threads: {','.join(args.ray_threads)!r}; give 'fitted' and/or numbers >= 1")
    if min(args.pairs, args.samples, args.steps, args.iterations) < 1 or args.warmup < 0:
        parser.error("--pairs, --samples, --steps and --iterations must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.pop("RAY_ADDRESS", None)  # always a new local cluster: its processes descend from this one
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from icg_rl.commands.train import prepare
    from icg_rl.config import load_config

    base = ["algo.name=ddpo", f"data.pairs_per_batch={args.pairs}", f"data.samples_per_pair={args.samples}",
            f"algo.num_inference_steps={args.steps}", *args.overrides]

    def config(*extra: str):
        cfg = load_config(args.config, [*base, *extra])
        world = cfg.world.model_copy(update={"dir": str(Path(cfg.world.dir).resolve())})
        return cfg.model_copy(update={"world": world})  # actors may run elsewhere: absolute, as icg_rl.train does

    cfg = config()
    prepare(cfg)  # the world, its models and the preference model, built once and reused (not timed)
    rows_per_iteration = args.pairs * args.samples
    plan: list[tuple[str, Callable[[], dict]]] = []
    if "in-process" in args.systems:
        plan.append((BASELINE, lambda: run_in_process(cfg, args)))
    if "trl" in args.systems:
        plan.append(("trl DDPOTrainer (stock pipeline)", lambda: run_trl(cfg, args, time_iterations, shim=False)))
        plan.append((TRL_ROW, lambda: run_trl(cfg, args, time_iterations, shim=True)))
    for threads in args.ray_threads:
        for mode in ("sync", "async"):
            if f"ray-{mode}" in args.systems:
                fixed = [] if threads == "fitted" else [f"ray.threads_per_worker={threads}",
                                                        "ray.rollout_threads=null", "ray.learner_threads=null",
                                                        "ray.reward_threads=null"]
                ray_cfg = config(f"rollout.async={str(mode == 'async').lower()}", *fixed)
                label = "threads fitted" if threads == "fitted" else \
                    f"{threads} thread{'s' if int(threads) > 1 else ''}/actor"
                plan.append((f"Ray {mode}, {label}", lambda c=ray_cfg: run_ray(c, args)))
    rows = [measure(name, run, rows_per_iteration, args.mem_interval) for name, run in plan]
    add_ratios(rows)
    headline = headline_ratios(rows)
    import psutil

    weights = {n: w for n, w in cfg.reward.weights.items() if w != 0}
    ray_ran = any(s in args.systems for s in ("ray-sync", "ray-async")) and bool(args.ray_threads)
    settings = {"pairs": args.pairs, "samples": args.samples, "rows": rows_per_iteration, "steps": args.steps,
                "eta": cfg.algo.eta, "guidance": cfg.algo.guidance_scale, "resolution": cfg.world.image_size,
                "latent": _latent_shape(cfg), "warmup": args.warmup, "iterations": args.iterations,
                "threads": args.threads, "cpus": cfg.ray.num_cpus or psutil.cpu_count(),
                "rewards": " + ".join(f"{w:g}·{n}" for n, w in weights.items()),
                "ray_threads": ", ".join(map(str, args.ray_threads)) if ray_ran else "",
                "trl": _trl_setting(rows)}
    print("\n" + settings_line(settings) + "\n")
    print(markdown_table(rows))
    print("\nheadline: " + ", ".join(f"{k} {_fmt(v, '.2f', '×')}" for k, v in headline.items()))
    lines = [line for line in map(phases_line, rows) if line]
    if lines:
        print("\nwhere the time goes (mean per timed iteration):\n  " + "\n  ".join(lines))
    for note in disturbance_notes(rows):
        print(note)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(headline | {"settings": settings, "overrides": args.overrides,
                                                          "rows": rows}, indent=2, default=str))
        print(f"\n(rows written to {args.json})")
    return 1 if any(r["status"].startswith("failed") for r in rows) else 0


def _trl_setting(rows: list[dict]) -> str:
    """'0.23.1, LoRA r=4 (11,008 trainable)' from the measured trl row; '' when trl did not run."""
    row = next((r for r in rows if r["system"] == TRL_ROW), None)
    if row is None or "trl_version" not in row:
        return ""
    what = "LoRA r=4 on the UNet attention" if row.get("lora") else "full UNet"
    return f"{row['trl_version']}, {what} ({row['trainable_params']:,} trainable)"


def _latent_shape(cfg) -> str:
    """'4×8×8' from the SD folder's configs (the trl pipeline and ours load the same UNet)."""
    unet = json.loads((Path(cfg.world.dir) / "models" / "sd" / "unet" / "config.json").read_text())
    size = unet["sample_size"]
    return f"{unet['in_channels']}×{size}×{size}"


if __name__ == "__main__":
    sys.exit(main())
