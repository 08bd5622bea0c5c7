"""`python -m icg_rl.train`: ICG RL fine-tuning on a Ray cluster (docs/architecture.md §1, §8).

    python -m icg_rl.train [--config configs/coverworld.yaml] [--out DIR] [--address ADDR] [KEY=VALUE ...]
    ray job submit --working-dir . -- python -m icg_rl.train --config configs/micro.yaml

Connects to RAY_ADDRESS / --address (or starts a local cluster), checks that every actor fits, then runs the loop:
stream pairs → rollouts → rewards → advantages → learner update → weight sync → held-out evaluation. Writes the
final ICG weights (`DIR/checkpoint`, loadable by `ICGPipeline.from_pretrained`, with a model card `README.md` and
the sample grid), sample grids and reward curves (PNG), `metrics.jsonl`, wandb (offline) and `summary.json`; the last
log line names the summary and the checkpoint by absolute path. Inside a Ray job a relative DIR goes under
~/icg_rl_runs ($ICG_RL_RUNS): the job's working directory is Ray's temporary copy, deleted with the cluster.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from icg_rl.commands.common import RunInterrupted, base_parser, parse_config, report, run_main
from icg_rl.distributed.trainer import RayTrainer  # the driver

log = logging.getLogger("icg_rl.train")


# ------------------------------------------------------------------------------------------------ the command
def main(argv: list[str] | None = None) -> int:
    parser = base_parser("python -m icg_rl.train", __doc__)
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a new "
                                                        "local cluster)")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="continue a run exactly: 'auto' = the newest intact checkpoint in train.storage_path "
                             "(falls back past a corrupt one; starts fresh when there is none), or one checkpoint")
    args = parser.parse_intermixed_args(argv if argv is not None else sys.argv[1:])

    def body() -> int:
        cfg = parse_config(args)
        out, cfg = output_locations(cfg, args.out)
        summary = train(cfg, out, address=args.address, resume=args.resume)
        written = report(summary, out, f"ICG training run in {out}")
        # the last line names where everything is: a Ray job's log is often all a user sees of the run
        print(f"summary: {written}  checkpoint: {summary['checkpoint']}", flush=True)
        return 0

    return run_main(body)


def output_locations(cfg, out: str | None):
    """(absolute run folder, cfg with an absolute `train.storage_path`): a relative path is taken from the current
    directory, or under ~/icg_rl_runs ($ICG_RL_RUNS) inside a Ray job, whose working directory is Ray's temporary
    copy (paths.resolve_output), with a warning saying so."""
    from icg_rl.paths import resolve_output

    folder, note = resolve_output(out or cfg.train.out, "--out" if out else "train.out")
    notes = [note]
    if cfg.train.storage_path:
        storage, note = resolve_output(cfg.train.storage_path, "train.storage_path")
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"storage_path": storage})})
        notes.append(note)
    for note in filter(None, notes):
        log.warning(note)
    return Path(folder), cfg


def prepare(cfg):
    """What the run needs that a CoverWorld default can build — the world and its tiny models (also for a MovieLens
    or PixelRec run that uses them), the preference model of the configured data source — and `cfg` with
    `reward.preference` resolved to that model's folder."""
    from icg_rl.paths import (
        COVERWORLD,
        COVERWORLD_FLOW,
        COVERWORLD_XL,
        default_preference_dir,
        resolve_preference,
        uses_coverworld_models,
    )
    from icg_rl.preference.train import preference_is_current

    if uses_coverworld_models(cfg):
        from icg_rl.commands.world import build

        log.info("CoverWorld at %s (built once per config, then reused)", cfg.world.dir)
        build(cfg, Path(cfg.world.dir), progress=True)
    if cfg.model.base == COVERWORLD_FLOW:
        from icg_rl.models.flow_base import ensure_flow_base

        log.info("CoverWorld's flow-matching base at %s/models/sd3 (built once, then reused)", cfg.world.dir)
        ensure_flow_base(cfg.world.dir, cfg.world, cfg.zoo)
    if cfg.model.base == COVERWORLD_XL:
        from icg_rl.models.xl_base import ensure_xl_base

        log.info("CoverWorld's SDXL-layout base at %s/models/sdxl (built once, then reused)", cfg.world.dir)
        ensure_xl_base(cfg.world.dir, cfg.world, cfg.zoo)
    preference = default_preference_dir(cfg)
    personal = any(cfg.reward.weights.get(name, 0) != 0 for name in ("preference", "preference_lift"))
    if personal and cfg.reward.preference == COVERWORLD \
            and not preference_is_current(preference, cfg.world):
        from icg_rl.commands.preference import train_and_evaluate

        log.info("training the personalized preference model from the click log → %s", preference)
        report(train_and_evaluate(cfg, preference), preference, f"preference model at {preference}")
    return resolve_preference(cfg)


def train(cfg, out: Path, address: str | None = None, resume: str | None = None) -> dict:
    from ray.exceptions import RayActorError
    from tqdm.auto import tqdm

    from icg_rl.distributed.checkpoint import CheckpointStore, checkpoint_name
    from icg_rl.distributed.model_card import write_model_card
    from icg_rl.distributed.placement import connect
    from icg_rl.distributed.tracking import Tracker, plot_curves
    from icg_rl.io import atomic_write_png

    torch.set_num_threads(1)  # the driver only mixes rewards and computes advantages; actors do the work
    out = Path(os.path.abspath(out))  # every path the summary and the log name is absolute
    cfg = cfg.model_copy(update={"world": cfg.world.model_copy(update={"dir": str(Path(cfg.world.dir).resolve())})})
    out.mkdir(parents=True, exist_ok=True)
    log.info("Ray: %s", connect(address or cfg.ray.address, cfg.ray.num_cpus))
    cfg = prepare(cfg)
    started = time.perf_counter()
    trainer = RayTrainer(cfg)
    setup_s = time.perf_counter() - started
    store = CheckpointStore(cfg.train.storage_path or out / "checkpoints", keep=cfg.train.keep_checkpoints)
    tracker = Tracker(cfg.train.tracker, out, cfg.model_dump(mode="json"))
    try:
        name, files = store.resume(resume) if resume else (None, None)
        if name is not None:
            trainer.restore(files)
            log.info("resumed from %s at iteration %d", store.where(name), trainer.iteration)
        elif resume:
            log.info("--resume %s: no checkpoint in %s yet; starting from iteration 0", resume, store.uri)
        first = trainer.evaluate()[0] if trainer.iteration == 0 else {}  # the untrained policy (none on resume)
        if first:
            tracker.log(first, step=0)
            log.info("before training: %s", _line(first))
        # the summary compares the untrained policy with the trained one on the same (end-of-run) pairs
        first_final = trainer.evaluate(final=True)[0] if first and trainer.final_heldout is not trainer.heldout \
            else first
        loop_start, totals = time.perf_counter(), {"time/iteration": 0.0}
        metrics, saved_stats = {}, None
        bar = tqdm(desc=f"ICG {cfg.algo.name}", unit="it", dynamic_ncols=True, initial=trainer.iteration,
                   total=cfg.train.iterations)
        steps = learner_restarts = 0
        while trainer.iteration < cfg.train.iterations:
            try:
                metrics = trainer.step()
            except RayActorError as err:  # a learner rank (rollout and reward actors restart inside `step`)
                while True:
                    learner_restarts += 1
                    try:
                        recover_learner(trainer, store, err, learner_restarts, cfg.ray.max_learner_restarts)
                        break
                    except RayActorError as again:  # the new group lost a rank while starting: rebuild again
                        err = again
                tracker.rewind(trainer.iteration)
                bar.n = trainer.iteration
                bar.refresh()
                continue
            steps += 1
            bar.update()
            for key in ("time/rollout", "time/reward", "time/learn", "sync/ms", "time/iteration"):
                totals[key] = totals.get(key, 0.0) + metrics.get(key, 0.0)
            last = trainer.iteration == cfg.train.iterations
            if trainer.iteration % cfg.train.eval_every == 0 or last:
                metrics |= trainer.evaluate()[0]
            tracker.log(metrics, step=trainer.iteration)
            bar.write(f"it {trainer.iteration:4d}  {_line(metrics)}")
            if trainer.iteration % cfg.train.checkpoint_every == 0 or last:
                saved = time.perf_counter()
                files = trainer.state_files()
                where = store.write(checkpoint_name(trainer.iteration), files)
                saved_stats = {"path": where, "mb": round(sum(map(len, files.values())) / 1e6, 3),
                               "seconds": round(time.perf_counter() - saved, 3)}
                bar.write(f"checkpoint {where}: {saved_stats['mb']:.2f} MB in {saved_stats['seconds']:.2f} s")
        loop_s = time.perf_counter() - loop_start
        bar.close()  # now, not when the collector gets to it: a late close redraws the bar below the summary line
        final, _ = trainer.evaluate(final=True)
        checkpoint = trainer.export(out / "checkpoint")
        rows = cfg.data.pairs_per_batch * cfg.data.samples_per_pair
        grid = _sample_grid(trainer.showcase(), cfg)
        atomic_write_png(out / "samples.png", grid)
        tracker.log_image("samples", grid, step=trainer.iteration)
        plot_curves(tracker.history, ("reward/", "eval/", "oracle/", "loss/", "stats/clip", "stats/approx_kl"),
                    out / "rewards.png", f"ICG {cfg.algo.name} on {cfg.data.kind}")
    finally:
        tracker.finish()
        trainer.shutdown()
    summary = {
        "iterations": trainer.iteration,
        "samples_per_s": rows * steps / totals["time/iteration"] if totals["time/iteration"] else 0.0,
        "checkpoint": str(checkpoint), "seconds": {"setup": round(setup_s, 1), "loop": round(loop_s, 1)},
        "time_per_iteration_s": {k.split("/")[1] if k.startswith("time") else "sync": v / max(1, steps)
                                 / (1e3 if k == "sync/ms" else 1.0) for k, v in totals.items()},
        "sync_bytes": int(metrics.get("sync/bytes", 0)), "last_checkpoint": saved_stats,
        "learner_restarts": learner_restarts,
        "eval": {k.removeprefix("eval/"): v for k, v in final.items() if k.startswith("eval/")},
        "samples": str(out / "samples.png"), "curves": str(out / "rewards.png"),
    }
    if cfg.data.kind == "coverworld":
        oracle = {k.removeprefix("oracle/"): v for k, v in final.items() if k.startswith("oracle/")}
        if "eval/clip_t" in final:
            oracle |= {"relevance_icg": final["eval/clip_t"], "relevance_reference": final["eval/clip_t_reference"]}
        oracle["pairs"] = len(trainer.final_heldout["user_id"])
        summary["oracle"] = oracle | ({"ctr_icg_initial": first_final["oracle/ctr_icg"]}
                                      if "oracle/ctr_icg" in first_final else {})
    else:  # said, not silently left out: a reader of the summary should not look for it elsewhere
        summary["oracle"] = {"unavailable": f"data.kind={cfg.data.kind} has no ground truth; the click oracle exists "
                                           f"only in CoverWorld (held-out rewards are in `eval`)"}
    summary["model_card"] = str(write_model_card(checkpoint, cfg, summary, samples=out / "samples.png"))
    return summary


def recover_learner(trainer, store, err: Exception, restart: int, max_restarts: int) -> None:
    """A learner rank died at the trainer's next iteration: rebuild the group from the newest intact checkpoint
    and go on from there (restart `restart` of `max_restarts`), or, past them, stop naming that checkpoint."""
    lost_at = trainer.iteration + 1
    latest = store.latest()
    if restart > max_restarts:
        raise RunInterrupted(
            f"a learner rank died at iteration {lost_at} and the run cannot continue ({err}); it was rebuilt "
            f"{max_restarts} time(s) already (ray.max_learner_restarts). Last intact checkpoint: "
            f"{store.where(latest or '(none yet)')}. Continue with the same command plus --resume auto") from err
    name, files = store.resume("auto") if latest else (None, None)
    log.warning("a learner rank died at iteration %d (%s); rebuilding the learner group from %s (restart %d of %d)",
                lost_at, type(err).__name__, store.where(name) if name else "its initial weights (no checkpoint yet)",
                restart, max_restarts)
    trainer.recover_learner(files)
    log.warning("learner group rebuilt: back at iteration %d, redoing %d iteration(s)", trainer.iteration,
                lost_at - 1 - trainer.iteration)


def _line(metrics: dict[str, float]) -> str:
    """One readable log line: rewards per component, KL, clip fraction, samples/s, sync ms, held-out numbers."""
    keys = [k for k in metrics if (k.startswith("reward/") and not k.endswith(("_std", "_norm")))
            or k in ("stats/approx_kl", "loss/kl", "stats/clip_fraction", "perf/samples_per_s", "sync/ms")
            or k.startswith(("oracle/ctr", "eval/"))]
    short = {"reward": "", "eval": "heldout_", "oracle": "", "stats": "", "loss": "", "perf": "", "sync": "sync_"}
    return "  ".join(f"{short[k.split('/')[0]]}{k.split('/', 1)[1]}={metrics[k]:.4g}" for k in keys)


def _sample_grid(showcase: dict, cfg) -> np.ndarray:
    """`samples.png`: per held-out item its reference cover, its covers for users of spread taste, the user zeroed
    (RayTrainer.showcase), labelled with the oracle's P(click) on CoverWorld."""
    from icg_rl.evaluation.sample_grid import personalization_grid

    oracle = "; p = true P(click) for the user (reference, zeroed: mean over the row's users)" \
        if "click_prob" in showcase else ""
    return personalization_grid(
        showcase["reference"], showcase["personalized"], showcase["zeroed"], list(showcase["user_ids"]),
        [f"{i}: {t}" for i, t in zip(showcase["item_ids"], showcase["titles"])], showcase.get("click_prob"),
        title=f"ICG {cfg.algo.name}: one held-out item per row, the same noise along it{oracle}")


if __name__ == "__main__":
    sys.exit(main())
