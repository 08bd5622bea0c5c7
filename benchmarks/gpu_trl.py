"""The real layouts, whole, on one GPU: our Ray run against trl 0.23.1's DDPOTrainer on the same UNet — one table.

    python benchmarks/gpu_trl.py --config artifacts/real_layouts/train.yaml [--run DIR] [--run-memory FILE]
        [--warmup 1] [--iterations 2] [--precision bf16] [--device cuda] [--skip-trl] [--json PATH]

Ours: read from the folder of a finished `python -m icg_rl.train --config CONFIG` run (`--run`, default the config's
train.out): its metrics.jsonl has every iteration's own phase timers. The first iteration warms up (kernel
selection, allocator, the pair stream) and is shown apart; the others are timed. rollout / reward / learn / sync are
the trainer's timers; "other" is the rest of the iteration (batch fetch, reward mixing, advantages).
trl: `DDPOTrainer.step()` with `DefaultDDPOStableDiffusionPipeline` loaded from the config's model.base (the
folder benchmarks/real_layouts.py built): LoRA r=4 on the UNet attention (trl's default), one epoch = one sampling
batch of pairs × samples images (the config's titles, each `samples_per_pair` times in a row, per-prompt advantage
normalisation) and one optimizer step, the config's DDIM steps, eta, CFG (trained with CFG when > 1, as trl does),
lr, clip range and resolution. Reward: our aesthetic reward (the config's CLIP + LAION-layout head) on the device.
`--precision` is accelerate's mixed precision (bf16: frozen weights in bf16, LoRA in fp32 under autocast, trl's GPU
practice; "no" keeps fp32). At CFG 1 the guidance shim of trl_peer.py is applied (stock trl 0.23.1 cannot sample
at CFG 1 with diffusers >= 0.22). `--warmup` untimed epochs, then `--iterations` timed ones.
Images/GPU/s = images per iteration / mean timed seconds per iteration (one GPU holds every role of our run).
Peak GPU memory: nvidia-smi's device-wide memory.used, sampled every 0.5 s while each system ran (ours: the file
`--run-memory` that gpu_check.sh recorded; trl: sampled here), minus the first sample (in use before it started).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts, not a package
from trl_peer import TRL_NOT_INSTALLED, TrlUnavailable, restore_encode_prompt_contract, short_error  # noqa: E402

PHASES = ("rollout", "reward", "learn", "sync")
GOAL = 2.0  # the target: ours ≥ 2× trl's samples/s


# ------------------------------------------------------------------------------------------------ our run
def ours_from_run(run: Path, rows: int) -> dict:
    """Timed-iteration means of a finished run's metrics.jsonl (the first iteration is the warm-up)."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    starts = [i for i, r in enumerate(lines) if r.get("step") == 0]  # each run logs its untrained policy first
    iterations = [r for r in lines[starts[-1] if starts else 0:] if "time/iteration" in r]  # the file appends runs
    if not iterations:
        raise ValueError(f"{run}/metrics.jsonl has no training iteration")
    timed = iterations[1:] or iterations  # one iteration only: it is all there is (and says so below)
    mean = {p: sum(r.get(f"time/{p}", 0.0) for r in timed) / len(timed) for p in PHASES if p != "sync"}
    mean["sync"] = sum(r.get("sync/ms", 0.0) for r in timed) / len(timed) / 1e3
    seconds = sum(r["time/iteration"] for r in timed) / len(timed)
    mean["other"] = max(0.0, seconds - sum(mean.values()))
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    return {"seconds_per_iteration": seconds, "samples_per_s": rows / seconds, "phases": mean,
            "warmup_s": iterations[0]["time/iteration"] if len(iterations) > 1 else None,
            "timed_iterations": len(timed),
            "setup_s": summary.get("seconds", {}).get("setup"), "sync_mb": summary.get("sync_bytes", 0) / 1e6}


def peak_memory_gib(path: Path | None) -> float | None:
    """Largest nvidia-smi memory.used sample (MiB, one per line) minus the first one, in GiB; None without samples."""
    if path is None or not path.is_file():
        return None
    values = [float(v) for v in path.read_text().split() if v.replace(".", "", 1).isdigit()]
    return (max(values) - values[0]) / 1024 if values else None


class GpuMemorySampler:
    """nvidia-smi sampling device memory every 0.5 s into a file for as long as the block runs (no-op without it)."""

    def __init__(self, path: Path):
        self.path, self.process, self.file = path, None, None

    def __enter__(self) -> GpuMemorySampler:
        if shutil.which("nvidia-smi"):
            self.file = self.path.open("w")
            self.process = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                             "-lms", "500"], stdout=self.file, stderr=subprocess.DEVNULL)
            time.sleep(0.6)  # the first sample is the baseline: taken before the measured work starts
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            time.sleep(0.6)
            self.process.terminate()
            self.process.wait()
            self.file.close()


# ------------------------------------------------------------------------------------------------ trl
def run_trl(cfg, args) -> dict:
    """trl's DDPOTrainer on the config's SD folder and batch -> timed-epoch means; TrlUnavailable when it cannot."""
    try:
        import trl
    except ImportError as err:
        raise TrlUnavailable(TRL_NOT_INSTALLED) from err
    import numpy as np
    import torch

    from icg_rl.data import load_from_config
    from icg_rl.rewards.aesthetic import build_aesthetic

    cuda = args.device == "cuda"
    logdir = tempfile.mkdtemp(prefix="trl-ddpo-gpu-")
    try:
        import warnings

        from accelerate import PartialState
        from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

        start = time.perf_counter()
        algo, k = cfg.algo, cfg.data.samples_per_pair
        rows = cfg.data.pairs_per_batch * k
        reward = build_aesthetic(cfg.reward, cfg.world.dir).to(args.device)
        titles = load_from_config(cfg).items["title"].astype(str).tolist()
        order = np.random.default_rng(cfg.train.seed)

        def prompts():  # P distinct titles per batch, each K times in a row: our trainer's P × K groups
            while True:
                for index in order.permutation(len(titles)):
                    yield from [titles[index]] * k

        stream = prompts()

        def reward_fn(images, prompt_list, metadata):
            with torch.no_grad():
                return reward.score(images.float().to(args.device), {"title": list(prompt_list)}), {}

        PartialState(cpu=not cuda)  # trl's pipeline logs through accelerate before any Accelerator exists
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pipe = DefaultDDPOStableDiffusionPipeline(cfg.model.base, use_lora=True)
            if algo.guidance_scale <= 1.0:
                restore_encode_prompt_contract(pipe.sd_pipeline)
            config = DDPOConfig(
                seed=cfg.train.seed, log_with=None, mixed_precision=args.precision,
                accelerator_kwargs={} if cuda else {"cpu": True}, save_freq=10**9, num_epochs=10**6,
                project_kwargs={"project_dir": logdir, "logging_dir": logdir}, logdir=logdir,
                sample_num_steps=algo.num_inference_steps, sample_eta=algo.eta,
                sample_guidance_scale=algo.guidance_scale, sample_batch_size=rows, sample_num_batches_per_epoch=1,
                train_batch_size=rows, train_gradient_accumulation_steps=1, train_num_inner_epochs=1,
                train_cfg=algo.guidance_scale > 1.0, train_learning_rate=algo.lr, train_clip_range=algo.clip_range,
                train_adv_clip_max=algo.adv_clip, train_max_grad_norm=algo.max_grad_norm,
                train_timestep_fraction=algo.timestep_fraction, per_prompt_stat_tracking=True,
                per_prompt_stat_tracking_buffer_size=16, per_prompt_stat_tracking_min_count=k)
            trainer = DDPOTrainer(config, reward_fn, lambda: (next(stream), {}), pipe)
        pipe.set_progress_bar_config(disable=True)
        setup = time.perf_counter() - start
        phases: dict[str, float] = {}

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize()

        def timed(name: str, method):  # measurement only: the bound method, same arguments and result
            def wrapper(*a, **kw):
                sync()
                begin = time.perf_counter()
                try:
                    return method(*a, **kw)
                finally:
                    sync()
                    phases[name] = phases.get(name, 0.0) + time.perf_counter() - begin
            return wrapper

        trainer._generate_samples = timed("rollout", trainer._generate_samples)
        trainer.compute_rewards = timed("reward", trainer.compute_rewards)
        trainer._train_batched_samples = timed("learn", trainer._train_batched_samples)
        state, times, means = {"epoch": 0, "step": 0}, [], {}
        for i in range(args.warmup + args.iterations):
            phases.clear()
            sync()
            begin = time.perf_counter()
            state["step"] = trainer.step(state["epoch"], state["step"])
            sync()
            state["epoch"] += 1
            if i >= args.warmup:
                times.append(time.perf_counter() - begin)
                for name, value in phases.items():
                    means[name] = means.get(name, 0.0) + value / args.iterations
            total = args.warmup + args.iterations
            print(f"  trl epoch {i + 1}/{total} {time.perf_counter() - begin:.2f} s", flush=True)
        if state["step"] != args.warmup + args.iterations:
            raise RuntimeError(f"trl made {state['step']} optimizer steps in {args.warmup + args.iterations} epochs")
        seconds = sum(times) / len(times)
        means["other"] = max(0.0, seconds - sum(means.values()))
        return {"seconds_per_iteration": seconds, "samples_per_s": rows / seconds, "phases": means,
                "setup_s": setup, "trl_version": trl.__version__, "precision": args.precision,
                "trainable_params": sum(p.numel() for p in pipe.unet.parameters() if p.requires_grad),
                "torch_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    except TrlUnavailable:
        raise
    except Exception as err:  # noqa: BLE001 - whatever trl raises is the result of this row
        traceback.print_exc()
        raise TrlUnavailable(short_error(err), full=traceback.format_exc()) from err
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the table
def _num(value, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def table(ours: dict, trl: dict, settings: str) -> str:
    """One markdown table: ours and trl side by side (a system without numbers shows its status instead)."""
    def cell(row: dict, key: str, spec: str = ".2f", suffix: str = "") -> str:
        return row.get("status", "—") if "seconds_per_iteration" not in row else _num(row.get(key), spec, suffix)

    def phases(row: dict) -> str:
        if "phases" not in row:
            return row.get("status", "—")
        return " / ".join(f"{row['phases'][p]:.2f}" if p in row["phases"] else "—" for p in (*PHASES, "other"))

    ratio = (ours["samples_per_s"] / trl["samples_per_s"]
             if "samples_per_s" in ours and "samples_per_s" in trl else None)
    lines = [settings, "", "| measurement | ours (Ray, every role on one GPU) | trl DDPOTrainer |", "|---|---|---|",
             f"| s / iteration (mean of timed) | {cell(ours, 'seconds_per_iteration', '.3f')} | "
             f"{cell(trl, 'seconds_per_iteration', '.3f')} |",
             f"| rollout / reward / learn / sync / other (s) | {phases(ours)} | {phases(trl)} |",
             f"| images / GPU / s | {cell(ours, 'samples_per_s')} | {cell(trl, 'samples_per_s')} |",
             f"| peak GPU memory (GiB, nvidia-smi) | {_num(ours.get('peak_gib'))} | {_num(trl.get('peak_gib'))} |",
             f"| warm-up iteration (s) / setup (s) | {_num(ours.get('warmup_s'))} / {_num(ours.get('setup_s'), '.1f')}"
             f" | — / {_num(trl.get('setup_s'), '.1f')} |",
             f"| ours / trl images/s (goal ≥ {GOAL:g}×) | {_num(ratio, '.2f', '×')} | |"]
    return "\n".join(lines)


def settings_line(cfg, args, ours: dict, trl: dict) -> str:
    base = Path(cfg.model.base)
    config = next(base / n / "config.json" for n in ("unet", "transformer") if (base / n / "config.json").is_file())
    denoiser = json.loads(config.read_text())
    size = denoiser["sample_size"] * 8  # every family's VAE downsamples by 8
    shape = (f"UNet {denoiser['block_out_channels']}" if "block_out_channels" in denoiser else
             f"MMDiT {denoiser['num_layers']} × {denoiser['num_attention_heads'] * denoiser['attention_head_dim']}")
    speed = ", ".join(f"{k} {v}" for k, v in (("rollout", getattr(cfg.rollout, "precision", None)),
                                               ("learner", getattr(getattr(cfg, "learner", None), "precision", None)))
                      if v)
    ours_line = (f"ours: {cfg.algo.name}, MLLM {Path(cfg.model.mllm).name}, rewards "
                 f"{'+'.join(n for n, w in cfg.reward.weights.items() if w)}, precision {speed or 'fp32'}, "
                 f"{ours.get('timed_iterations', 0)} timed iteration(s)"
                 f"{' after 1 warm-up' if ours.get('warmup_s') is not None else ' (no warm-up left out)'}")
    trl_line = (f"trl {trl['trl_version']}: LoRA r=4 ({trl['trainable_params']:,} trainable), mixed precision "
                f"{args.precision}, reward aesthetic, {args.warmup} warm-up + {args.iterations} timed"
                if "trl_version" in trl else f"trl: {trl.get('status', '—')}")
    return (f"settings: {cfg.data.pairs_per_batch} pairs × {cfg.data.samples_per_pair} samples = "
            f"{cfg.data.pairs_per_batch * cfg.data.samples_per_pair} images/iteration, "
            f"{cfg.algo.num_inference_steps} steps (eta {cfg.algo.eta:g}, CFG {cfg.algo.guidance_scale:g}), {size} px,"
            f" {shape}; {ours_line}; {trl_line}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the train.yaml benchmarks/real_layouts.py wrote")
    parser.add_argument("--run", default=None, help="our run's folder (default: the config's train.out)")
    parser.add_argument("--run-memory", default=None, help="nvidia-smi memory.used samples recorded during our run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed trl epochs")
    parser.add_argument("--iterations", type=int, default=2, help="timed trl epochs")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "no"), help="trl's mixed precision")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--skip-trl", action="store_true", help="only our run's numbers")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write both rows and the ratio here")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from icg_rl.config import load_config

    cfg = load_config(args.config)
    rows = cfg.data.pairs_per_batch * cfg.data.samples_per_pair
    run = Path(args.run or cfg.train.out)
    try:
        ours = ours_from_run(run, rows) | {"peak_gib": peak_memory_gib(Path(args.run_memory) if args.run_memory
                                                                       else None)}
    except (OSError, ValueError) as err:
        ours = {"status": f"no run: {short_error(err)}"}
    trl: dict = {"status": "skipped (--skip-trl)"}
    if not args.skip_trl:
        memory = Path(tempfile.mkstemp(prefix="trl-gpu-memory-", suffix=".txt")[1])
        try:
            with GpuMemorySampler(memory):
                trl = run_trl(cfg, args)
            trl["peak_gib"] = peak_memory_gib(memory)
        except TrlUnavailable as err:
            trl = {"status": f"unavailable: {err}"}
    print("\n" + table(ours, trl, settings_line(cfg, args, ours, trl)))
    if args.json:
        ratio = ours["samples_per_s"] / trl["samples_per_s"] if "samples_per_s" in ours and "samples_per_s" in trl \
            else None
        Path(args.json).write_text(json.dumps({"ours": ours, "trl": trl, "ours_over_trl": ratio}, indent=2))
    return 0 if "samples_per_s" in ours and ("samples_per_s" in trl or args.skip_trl) else 1


if __name__ == "__main__":
    sys.exit(main())
