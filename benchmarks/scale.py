"""The paper's datasets at their size: every command on synthetic ml-latest / PixelRec logs, stage by stage.

    python benchmarks/scale.py --shape ml-latest --fractions 0.0625 0.5      # linear growth check
    python benchmarks/scale.py --shape ml-latest --fractions 1.0 --commands preference train evaluate
    python benchmarks/scale.py --shape pixelrec --fractions 1.0

For each fraction it writes (once, cached) a log shaped like the real one (benchmarks/synthetic_logs.py), then runs
the real commands as a user does — `python -m icg_rl.preference --out DIR`, `python -m icg_rl.train
reward.preference=DIR train.iterations=20`, `python -m icg_rl.evaluate --checkpoint CKPT` — each in its own process with
its own local Ray cluster, and prints per stage (the commands log `<stage>: <seconds> s` for stages of a second
or more) wall time and peak memory.
Memory is the machine's used memory (MemTotal − MemAvailable, sampled 5×/s) above its value before the command
started, so Ray's workers and object store count, not only the driver. With two fractions it prints the growth
exponent of time and memory per command: log(ratio of cost) / log(ratio of rows), 1.0 = linear.

Models are CoverWorld's tiny ones (its CLIP embeds the catalogue, its base and MLLM are trained), so the numbers
measure the data path and the loops, not a large network's FLOPs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic_logs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STAGE = re.compile(r"icg_rl\.[\w.]+: (?P<stage>[^:]+): (?P<seconds>[\d.]+) s$")
FIRST_ITERATION = re.compile(r"^it\s+1\s")
KIND = {"ml-latest": "movielens", "pixelrec": "pixelrec"}


def used_memory() -> int:
    """Bytes in use on the machine (MemTotal − MemAvailable)."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024


class MemorySampler(threading.Thread):
    """Samples used memory 5×/s; `peak(since, until)` is the most used between two perf_counter times."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            self.samples.append((time.perf_counter(), used_memory()))
            time.sleep(0.2)

    def peak(self, since: float, until: float) -> int:
        inside = [m for t, m in self.samples if since <= t <= until]
        return max(inside) if inside else used_memory()


def run_command(name: str, argv: list[str], log_file: Path) -> dict:
    """Run one command, timestamping its log lines as they arrive; -> stages [(name, start, end)], total, peak."""
    idle = used_memory()
    sampler = MemorySampler()
    sampler.start()
    began = time.perf_counter()
    stages, previous = [], began
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    with open(log_file, "w", buffering=1) as log, subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        for line in process.stdout:
            now = time.perf_counter()
            log.write(line)
            line = line.rstrip()
            if match := STAGE.search(line):
                seconds = float(match["seconds"])
                stages.append((match["stage"], max(previous, now - seconds), now))
                previous = now
            elif FIRST_ITERATION.search(line) and not any(s[0] == "first iteration" for s in stages):
                stages.append(("first iteration", previous, now))
                stages.append(("data stage start → first iteration", began, now))
                previous = now
    ended = time.perf_counter()
    sampler.running = False
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{name} failed (exit {process.returncode}); its log: {log_file}")
    table = [{"stage": stage, "seconds": round(end - start, 1),
              "peak_gb": round((sampler.peak(start, end) - idle) / 1e9, 2)} for stage, start, end in stages]
    return {"stages": table, "seconds": round(ended - began, 1),
            "peak_gb": round((sampler.peak(began, ended) - idle) / 1e9, 2)}


def commands_for(shape: str, data_dir: Path, out: Path, iterations: int, extra: list[str]) -> dict[str, list[str]]:
    """The three commands a user runs, on this log."""
    python = sys.executable
    common = [f"data.kind={KIND[shape]}", f"data.path={data_dir}", "data.history_len=128",
              f"data.cache_dir={out / 'cache'}", *extra]
    return {
        "preference": [python, "-m", "icg_rl.preference", "--out", str(out / "preference"), *common],
        "train": [python, "-m", "icg_rl.train", "--out", str(out / "train"), *common,
                  f"reward.preference={out / 'preference'}", f"train.iterations={iterations}",
                  "train.eval_every=1000"],
        "evaluate": [python, "-m", "icg_rl.evaluate", "--checkpoint", str(out / "train" / "checkpoint"), "--out",
                     str(out / "evaluate"), *common, f"reward.preference={out / 'preference'}"],
    }


def write_log(shape: str, folder: Path, fraction: float, seed: int) -> dict:
    if shape == "ml-latest":
        return synthetic_logs.write_ml_latest(folder, fraction, seed)
    return synthetic_logs.write_pixelrec(folder, fraction, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(KIND), default="ml-latest")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1 / 16, 1 / 2])
    parser.add_argument("--commands", nargs="+", choices=["preference", "train", "evaluate"],
                        default=["preference", "train", "evaluate"])
    parser.add_argument("--iterations", type=int, default=20, help="training iterations (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/icg_scale"), help="where logs and runs go")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="config overrides for every command (key=value)")
    args = parser.parse_args(argv)
    results = []
    for fraction in args.fractions:
        data_dir = args.work / f"{args.shape}-{fraction:g}-seed{args.seed}"
        written = write_log(args.shape, data_dir, fraction, args.seed)
        out = args.work / f"runs-{args.shape}-{fraction:g}"
        commands = commands_for(args.shape, data_dir, out, args.iterations, args.overrides)
        row = {"shape": args.shape, "fraction": fraction, "rows": written["rows"], "users": written["users"],
               "items": written["items"], "commands": {}}
        for name in args.commands:
            print(f"[{args.shape} ×{fraction:g}: {written['rows']:,} rows] {name} ...", flush=True)
            out.mkdir(parents=True, exist_ok=True)
            row["commands"][name] = run_command(name, commands[name], out / f"{name}.log")
            report_command(name, row["commands"][name])
        summary = out / "preference" / "summary.json"
        if summary.is_file():
            row["preference_summary"] = {k: v for k, v in json.loads(summary.read_text()).items()
                                         if k in ("auc", "popularity_auc", "auc_heldout_users", "impressions")}
            print("preference:", row["preference_summary"])
        results.append(row)
    if len(results) >= 2:
        report_growth(results[0], results[-1])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def report_command(name: str, result: dict) -> None:
    print(f"  {'stage':<40}{'seconds':>10}{'peak GB':>10}")
    for stage in result["stages"]:
        print(f"  {stage['stage']:<40}{stage['seconds']:>10.1f}{stage['peak_gb']:>10.2f}")
    print(f"  {name + ' (whole command)':<40}{result['seconds']:>10.1f}{result['peak_gb']:>10.2f}", flush=True)


def report_growth(small: dict, large: dict) -> None:
    """Growth exponents: log(cost ratio) / log(row ratio) per command (1.0 = linear)."""
    rows = large["rows"] / small["rows"]
    print(f"\ngrowth from ×{small['fraction']:g} to ×{large['fraction']:g} ({rows:.2f}× rows):")
    print(f"  {'command':<14}{'time ratio':>12}{'÷ rows':>10}{'exponent':>10}{'memory ratio':>14}{'÷ rows':>10}")
    for name in small["commands"]:
        if name not in large["commands"]:
            continue
        a, b = small["commands"][name], large["commands"][name]
        time_ratio = b["seconds"] / a["seconds"]
        memory_ratio = b["peak_gb"] / a["peak_gb"] if a["peak_gb"] > 0 else float("nan")
        print(f"  {name:<14}{time_ratio:>12.2f}{time_ratio / rows:>10.2f}{math.log(time_ratio) / math.log(rows):>10.2f}"
              f"{memory_ratio:>14.2f}{memory_ratio / rows:>10.2f}")


if __name__ == "__main__":
    sys.exit(main())
