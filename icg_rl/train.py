"""`python -m icg_rl.train`: ICG RL fine-tuning on a Ray cluster (docs/architecture.md §1, §8).

    python -m icg_rl.train [--config configs/coverworld.yaml] [--out DIR] [--address ADDR] [KEY=VALUE ...]
    ray job submit --working-dir . -- python -m icg_rl.train --config configs/micro.yaml

Connects to RAY_ADDRESS / --address (or starts a local cluster), checks that every actor fits, then runs the loop:
stream pairs → rollouts → rewards → advantages → learner update → weight sync → held-out evaluation. Writes the
final ICG weights (`DIR/checkpoint`, loadable by `ICGPipeline.from_pretrained`), sample grids and reward curves
(PNG), `metrics.jsonl`, wandb (offline) and `summary.json`.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from icg_rl.cli import base_parser, parse_config, report, run_main
from icg_rl.config import ConfigError

log = logging.getLogger("icg_rl.train")
MIN_SIDE = 48  # sample grids are upscaled to at least this many pixels per cover, to be readable


class RunInterrupted(RuntimeError):
    """The run cannot go on (an actor without restarts died); the message says where to resume from."""


class RayTrainer:
    """The driver: owns the algorithm (this class reads like it); actors own models and devices."""

    def __init__(self, cfg):
        from icg_rl.data import load_from_config
        from icg_rl.data.stream import stream_from_config
        from icg_rl.distributed.learner import LearnerGroup
        from icg_rl.distributed.placement import check_fits, rollout_capacity, run_requests
        from icg_rl.distributed.reward import RewardPool
        from icg_rl.distributed.rollout import RolloutPool
        from icg_rl.evaluation.heldout import heldout_batch
        from icg_rl.models.item_features import policy_context
        from icg_rl.rewards.mix import RewardMixer
        from icg_rl.rl.advantages import PerKeyStatTracker

        self.cfg, r = cfg, cfg.ray
        if cfg.rollout.async_ and cfg.algo.name != "ddpo":
            raise ConfigError(f"rollout.async=true needs algo.name=ddpo, got {cfg.algo.name!r}: reward backprop "
                              f"samples with gradient inside the learner, there is no separate rollout to overlap")
        self.weights = {n: w for n, w in cfg.reward.weights.items() if w != 0}
        pools = list(self.weights) + ([] if "clip_t" in self.weights else ["clip_t"])  # clip_t: eval relevance
        check_fits(run_requests(cfg, pools), r.resource_wait_s)  # before any actor exists: fail, never hang
        self.data = load_from_config(cfg)
        user_ids, item_features = policy_context(cfg, self.data)
        self.stream = stream_from_config(cfg, self.data, "train")
        self.heldout = heldout_batch(cfg, self.data)
        self.pools, self.elastic = pools, r.rollout_workers == "auto"
        rollouts = rollout_capacity(cfg, pools) if self.elastic else r.rollout_workers
        log.info("starting %d rollout%s, %d learner and %d×%d reward actors", rollouts,
                 " (auto)" if self.elastic else "", r.learner_workers, len(pools), r.reward_workers)
        # an elastic pool drops actors whose node left instead of restarting them (they would wait for resources)
        self.rollout = RolloutPool(cfg, user_ids, item_features, rollouts, *r.role("rollout"),
                                   threads=r.threads_per_worker, max_restarts=0 if self.elastic else r.max_restarts)
        self.rewards = {n: RewardPool(n, cfg.reward, cfg.world.dir, r.reward_workers, *r.role("reward"),
                                      max_restarts=r.max_restarts, threads=r.threads_per_worker, task_retries=0)
                        for n in pools}  # failures surface here, to be retried and logged by `finish`
        self.learner = LearnerGroup(cfg, user_ids, item_features, r.learner_workers, *r.role("learner"),
                                    threads=r.threads_per_worker)
        self.rollout.ready()
        for pool in self.rewards.values():
            pool.ready()
        self.mixer = RewardMixer(self.weights, normalize=cfg.reward.normalize, floors=cfg.reward.floors)
        self.tracker = PerKeyStatTracker()
        self.iteration, self.epoch, self.batch_in_epoch, self.version = 0, 0, 0, 0
        self.pending, self.position = None, None  # async: the next iteration's rollouts in flight
        self._batches = self._batch_stream()
        self.sync_weights()  # version 0: the rollouts sample exactly the learner's initial policy

    def _batch_stream(self):
        """Epochs of the pair stream; (epoch, batch_in_epoch) is the data position a checkpoint records."""
        while True:
            for batch in self.stream.iter_groups(self.epoch, self.batch_in_epoch):
                self.batch_in_epoch += 1
                yield batch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    # ------------------------------------------------------------------------------------------ one iteration
    def step(self) -> dict[str, float]:
        from icg_rl.distributed.reward import pool_reference_scores
        from icg_rl.rl.advantages import group_advantages

        algo, t = self.cfg.algo, {}
        start = time.perf_counter()
        if self.elastic:
            self.resize_rollouts()
        batch = next(self._batches) if self.pending is None else None
        if algo.name == "ddpo" and self.cfg.rollout.async_:
            # one step off-policy: this iteration's rollouts were sampled during the previous update; the next
            # iteration's start now, with the current weights, and run while the learner updates
            pending = self.pending or self.submit(batch, self.iteration)
            trajectory, scores = self.finish(pending, t)
            self.position = (self.epoch, self.batch_in_epoch)  # what a checkpoint records: next batch unsampled
            self.pending = self.submit(next(self._batches), self.iteration + 1)
        elif algo.name == "ddpo":
            pending = self.submit(batch, self.iteration)
            trajectory, scores = self.finish(pending, t)
        if algo.name == "ddpo":
            reference = pool_reference_scores(self.rewards, self.mixer.floors, pending["batch"])  # floored rewards
            total, metrics = self.mixer(scores, reference_scores=reference)
            metrics["stats/policy_lag"] = float(self.version - trajectory.policy_version)
            advantages, adv_stats = group_advantages(total.numpy(), trajectory.group_key, self.tracker)
            metrics |= {f"stats/{k}": v for k, v in adv_stats.items()}
            learn_start = time.perf_counter()
            metrics |= self.learner.update_ddpo(trajectory, advantages, self.iteration)
        else:  # reward backprop: the learner samples with gradient and scores with its own differentiable rewards
            learn_start = time.perf_counter()
            metrics = self.learner.update_backprop(batch, self.iteration)
        t["time/learn"] = time.perf_counter() - learn_start
        self.iteration += 1
        metrics |= self.sync_weights()
        t["time/iteration"] = time.perf_counter() - start
        rows = self.cfg.data.pairs_per_batch * self.cfg.data.samples_per_pair
        return metrics | t | {"perf/samples_per_s": rows / t["time/iteration"], "iteration": self.iteration}

    def resize_rollouts(self) -> None:
        """`ray.rollout_workers: auto`: take in actors that finished starting, start more when the cluster grew."""
        from icg_rl.distributed.placement import rollout_capacity

        before = len(self.rollout.actors)
        if self.rollout.admit():
            log.info("rollout pool grew: %d → %d actors", before, len(self.rollout.actors))
        wanted = rollout_capacity(self.cfg, self.pools) - len(self.rollout.actors) - len(self.rollout.starting)
        if wanted > 0:
            log.info("the cluster has room for %d more rollout actor(s); starting them", wanted)
            self.rollout.grow(wanted)

    def submit(self, batch: dict, iteration: int) -> dict:
        """Queue the rollouts of a batch, each chunk scored by every reward pool the moment it exists."""
        chunks = self.rollout.sample(batch, iteration)
        score_refs = {n: [self.rewards[n].score_refs(images, inputs) for _, images, inputs in chunks]
                      for n in self.weights}
        return {"batch": batch, "iteration": iteration, "chunks": chunks, "score_refs": score_refs,
                "start": time.perf_counter(), "version": self.version}

    def finish(self, pending: dict, timings: dict) -> tuple:
        """Wait for submitted rollouts and rewards -> (Trajectory, {reward: scores}). A rollout or reward actor
        that dies restarts (`ray.max_restarts`); its work is redone here — with the same per-row noise, so the
        result is the same — and the log says what was retried."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        from icg_rl.distributed.restarts import until_answering
        from icg_rl.distributed.reward import RewardPool
        from icg_rl.rl.trajectory import Trajectory

        for attempt in range(self.cfg.ray.max_restarts + 1):
            try:
                parts = ray.get([c[0] for c in pending["chunks"]])
                timings["time/rollout"] = time.perf_counter() - pending["start"]
                scores = {n: torch.from_numpy(RewardPool.gather(refs)) for n, refs in pending["score_refs"].items()}
                timings["time/reward"] = time.perf_counter() - pending["start"] - timings["time/rollout"]
                return Trajectory.concat([Trajectory.from_wire(w) for w in parts]), scores
            except (RayActorError, RayTaskError) as err:
                if attempt == self.cfg.ray.max_restarts:
                    raise
                log.warning("iteration %d: an actor failed (%s); waiting for its restart and retrying the "
                            "iteration's rollouts and rewards (attempt %d of %d)", pending["iteration"] + 1,
                            type(err).__name__, attempt + 2, self.cfg.ray.max_restarts + 1)
                if self.elastic:
                    dropped = self.rollout.drop_dead()
                    if dropped:
                        log.warning("rollout pool shrank: %d actor(s) gone with their node; %d remain", dropped,
                                    len(self.rollout.actors))
                    if not self.rollout.actors:
                        self.rollout.grow(1)
                        while not self.rollout.admit():
                            time.sleep(0.5)
                for name, pool in self.rewards.items():  # blocks until a restarting reward actor answers again
                    until_answering(pool.ready, f"reward pool {name!r}")
                # a restarted rollout actor holds version 0 until it is given the weights
                until_answering(self.rollout.resync, "rollout pool")
                pending = self.submit(pending["batch"], pending["iteration"])
        raise AssertionError("unreachable")

    def sync_weights(self) -> dict[str, float]:
        """Learner rank 0's trainable weights → every rollout actor, as version `self.iteration`."""
        start = time.perf_counter()
        self.version = self.iteration
        weights_ref, size = self.learner.weights()
        self.rollout.set_weights(self.version, weights_ref)
        return {"sync/ms": (time.perf_counter() - start) * 1e3, "sync/bytes": float(size),
                "sync/version": float(self.version)}

    def evaluate(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        from icg_rl.evaluation.heldout import evaluate_heldout

        return evaluate_heldout(self.cfg, self.rollout, self.rewards, self.heldout,
                                with_oracle=self.cfg.data.kind == "coverworld")

    # ----------------------------------------------------------------------------------------------- checkpoints
    def state_files(self) -> dict[str, bytes]:
        """Everything an exact resume needs. Noise and timestep draws derive from (seed, iteration) (rl/seeding.py),
        so the iteration counter stands for every actor's RNG; the driver's own RNG states are kept as well."""
        import random

        # with async rollouts the next batch is already drawn (and being sampled): record the position before it
        epoch, batch_in_epoch = self.position if self.pending is not None else (self.epoch, self.batch_in_epoch)
        state = {"iteration": self.iteration, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                 "version": self.version, "mixer": self.mixer.state_dict(), "tracker": self.tracker.state_dict(),
                 "algo": self.cfg.algo.name, "learner_workers": self.cfg.ray.learner_workers,
                 "rng": {"python": repr(random.getstate()), "numpy": repr(np.random.get_state(legacy=False)),
                         "torch": torch.get_rng_state().tolist()}}
        files = {"trainer_state.json": json.dumps(state).encode()}
        files |= {f"icg/{name}": payload for name, payload in self.learner.export().items()}
        files |= {f"learner/{name}": payload for name, payload in self.learner.save_state().items()}
        return files

    def restore(self, files: dict[str, bytes]) -> None:
        from icg_rl.checkpoint import subtree

        state = json.loads(files["trainer_state.json"])
        for key, now in (("algo", self.cfg.algo.name), ("learner_workers", self.cfg.ray.learner_workers)):
            if state[key] != now:
                raise ValueError(f"resume: the checkpoint was written with {key}={state[key]!r}, this run has "
                                 f"{now!r}; resume with the same setting")
        self.learner.load_state(subtree(files, "learner"))
        self.mixer.load_state_dict(state["mixer"])
        self.tracker.load_state_dict(state["tracker"])
        torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
        self._batches.close()
        self.pending = None
        self.iteration, self.epoch, self.batch_in_epoch = state["iteration"], state["epoch"], state["batch_in_epoch"]
        self._batches = self._batch_stream()
        self.sync_weights()

    def export(self, folder: Path) -> Path:
        """Final ICG weights into `folder`, atomically (written beside it, then renamed into place)."""
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, payload in self.learner.export().items():
            (tmp / name).write_bytes(payload)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        return folder

    def shutdown(self) -> None:
        self._batches.close()  # ends the Ray Data iterator while Ray is still up
        self.learner.shutdown()
        self.rollout.shutdown()
        for pool in self.rewards.values():
            pool.shutdown()


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
        out = Path(args.out or cfg.train.out)
        summary = train(cfg, out, address=args.address, resume=args.resume)
        report(summary, out, f"ICG training run in {out}")
        return 0

    return run_main(body)


def prepare(cfg) -> None:
    """What the run needs that a CoverWorld default can build: the world and its models, the preference model."""
    if cfg.data.kind == "coverworld":
        from icg_rl.world.cli import build

        log.info("CoverWorld at %s (built once per config, then reused)", cfg.world.dir)
        build(cfg, Path(cfg.world.dir), progress=True)
    from icg_rl.preference.train import preference_is_current

    preference = Path(cfg.world.dir) / "models" / "preference"
    if cfg.reward.weights.get("preference", 0) != 0 and cfg.reward.preference == "coverworld" \
            and not preference_is_current(preference, cfg.world):
        from icg_rl.preference.cli import train_and_evaluate

        log.info("training the personalized preference model from the click log → %s", preference)
        report(train_and_evaluate(cfg, preference), preference, f"preference model at {preference}")


def train(cfg, out: Path, address: str | None = None, resume: str | None = None) -> dict:
    from ray.exceptions import RayActorError
    from tqdm.auto import tqdm

    from icg_rl.checkpoint import CheckpointStore, checkpoint_name
    from icg_rl.distributed.placement import connect
    from icg_rl.io import atomic_write_png, image_grid
    from icg_rl.tracking import Tracker, plot_curves

    torch.set_num_threads(1)  # the driver only mixes rewards and computes advantages; actors do the work
    cfg = cfg.model_copy(update={"world": cfg.world.model_copy(update={"dir": str(Path(cfg.world.dir).resolve())})})
    out.mkdir(parents=True, exist_ok=True)
    log.info("Ray: %s", connect(address or cfg.ray.address, cfg.ray.num_cpus))
    prepare(cfg)
    started = time.perf_counter()
    trainer = RayTrainer(cfg)
    setup_s = time.perf_counter() - started
    store = CheckpointStore(cfg.train.storage_path or out / "checkpoints", keep=cfg.train.keep_checkpoints)
    tracker = Tracker(cfg.train.tracker, out, cfg.model_dump(mode="json"))
    try:
        name, files = store.resume(resume) if resume else (None, None)
        if name is not None:
            trainer.restore(files)
            log.info("resumed from %s/%s at iteration %d", store.uri, name, trainer.iteration)
        elif resume:
            log.info("--resume %s: no checkpoint in %s yet; starting from iteration 0", resume, store.uri)
        first = trainer.evaluate()[0] if trainer.iteration == 0 else {}  # the untrained policy (none on resume)
        if first:
            tracker.log(first, step=0)
            log.info("before training: %s", _line(first))
        loop_start, totals = time.perf_counter(), {"time/iteration": 0.0}
        metrics, saved_stats = {}, None
        bar = tqdm(range(trainer.iteration, cfg.train.iterations), desc=f"ICG {cfg.algo.name}", unit="it",
                   dynamic_ncols=True, initial=trainer.iteration, total=cfg.train.iterations)
        for it in bar:
            try:
                metrics = trainer.step()
            except RayActorError as err:  # a learner rank (no restarts: its optimizer state is not replicated)
                raise RunInterrupted(
                    f"an actor died at iteration {trainer.iteration + 1} and the run cannot continue ({err}). "
                    f"Last intact checkpoint: {store.uri}/{store.latest() or '(none yet)'}. Continue with the same "
                    f"command plus --resume auto") from err
            for key in ("time/rollout", "time/reward", "time/learn", "sync/ms", "time/iteration"):
                totals[key] = totals.get(key, 0.0) + metrics.get(key, 0.0)
            if trainer.iteration % cfg.train.eval_every == 0 or it == cfg.train.iterations - 1:
                metrics |= trainer.evaluate()[0]
            tracker.log(metrics, step=trainer.iteration)
            bar.write(f"it {trainer.iteration:4d}  {_line(metrics)}")
            if trainer.iteration % cfg.train.checkpoint_every == 0 or it == cfg.train.iterations - 1:
                saved = time.perf_counter()
                files = trainer.state_files()
                where = store.write(checkpoint_name(trainer.iteration), files)
                saved_stats = {"path": where, "mb": round(sum(map(len, files.values())) / 1e6, 3),
                               "seconds": round(time.perf_counter() - saved, 3)}
                bar.write(f"checkpoint {where}: {saved_stats['mb']:.2f} MB in {saved_stats['seconds']:.2f} s")
        loop_s = time.perf_counter() - loop_start
        final, images = trainer.evaluate()
        checkpoint = trainer.export(out / "checkpoint")
        rows = cfg.data.pairs_per_batch * cfg.data.samples_per_pair
        n = min(8, len(images["icg"]))
        columns = np.stack([images[k][:n] for k in ("reference", "icg", "user_zeroed")], axis=1)  # (n, 3, H, W, 3)
        grid = image_grid(_upscale(columns.reshape(-1, *columns.shape[2:])), columns=3)
        atomic_write_png(out / "samples.png", grid)
        tracker.log_image("samples", grid, step=trainer.iteration)
        plot_curves(tracker.history, ("reward/", "eval/", "oracle/", "loss/", "stats/clip", "stats/approx_kl"),
                    out / "rewards.png", f"ICG {cfg.algo.name} on {cfg.data.kind}")
    finally:
        tracker.finish()
        trainer.shutdown()
    summary = {
        "iterations": trainer.iteration,
        "samples_per_s": rows * len(bar) / totals["time/iteration"] if totals["time/iteration"] else 0.0,
        "checkpoint": str(checkpoint), "seconds": {"setup": round(setup_s, 1), "loop": round(loop_s, 1)},
        "time_per_iteration_s": {k.split("/")[1] if k.startswith("time") else "sync": v / max(1, len(bar))
                                 / (1e3 if k == "sync/ms" else 1.0) for k, v in totals.items()},
        "sync_bytes": int(metrics.get("sync/bytes", 0)), "last_checkpoint": saved_stats,
        "eval": {k.removeprefix("eval/"): v for k, v in final.items() if k.startswith("eval/")},
        "samples": str(out / "samples.png"), "curves": str(out / "rewards.png"),
    }
    if cfg.data.kind == "coverworld":
        oracle = {k.removeprefix("oracle/"): v for k, v in final.items() if k.startswith("oracle/")}
        if "eval/clip_t" in final:
            oracle |= {"relevance_icg": final["eval/clip_t"], "relevance_reference": final["eval/clip_t_reference"]}
        summary["oracle"] = oracle | ({"ctr_icg_initial": first["oracle/ctr_icg"]} if "oracle/ctr_icg" in first else {})
    return summary


def _line(metrics: dict[str, float]) -> str:
    """One readable log line: rewards per component, KL, clip fraction, samples/s, sync ms, held-out numbers."""
    keys = [k for k in metrics if (k.startswith("reward/") and not k.endswith(("_std", "_norm")))
            or k in ("stats/approx_kl", "loss/kl", "stats/clip_fraction", "perf/samples_per_s", "sync/ms")
            or k.startswith(("oracle/ctr", "eval/"))]
    short = {"reward": "", "eval": "heldout_", "oracle": "", "stats": "", "loss": "", "perf": "", "sync": "sync_"}
    return "  ".join(f"{short[k.split('/')[0]]}{k.split('/', 1)[1]}={metrics[k]:.4g}" for k in keys)


def _upscale(images: np.ndarray) -> np.ndarray:
    factor = max(1, -(-MIN_SIDE // images.shape[1]))
    return images.repeat(factor, axis=1).repeat(factor, axis=2)


if __name__ == "__main__":
    sys.exit(main())
