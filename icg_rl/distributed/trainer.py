"""The RayTrainer: the driver of ICG RL fine-tuning on a Ray cluster (docs/architecture.md §1, §8), single controller.

    trainer = RayTrainer(cfg)            # rollout actors, reward pools, DeepSpeed learner group; weights version 0
    metrics = trainer.step()             # one iteration: the dataflow reads top to bottom in `step`
    metrics, images = trainer.evaluate() # held-out covers, rewards and (CoverWorld) the oracle
    showcase = trainer.showcase()        # a few items × users of spread taste, for the sample grid

The driver owns the algorithm; actors own models and devices. `python -m icg_rl.train` (train.py) runs it.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from icg_rl.config import ConfigError
from icg_rl.data.stream import join_reader_threads
from icg_rl.distributed.trainer_state import TrainerState
from icg_rl.metrics import timed

log = logging.getLogger("icg_rl.train")


class RayTrainer(TrainerState):
    """The driver: owns the algorithm (this class reads like it); actors own models and devices. Checkpoints,
    resume and rebuilding a lost learner group: `TrainerState` (trainer_state.py)."""

    def __init__(self, cfg):
        import ray

        from icg_rl.data import load_from_config
        from icg_rl.data.stream import stream_from_config
        from icg_rl.distributed.learner import LearnerGroup
        from icg_rl.distributed.placement import check_fits, role_threads, rollout_capacity, run_requests
        from icg_rl.distributed.reward import RewardPool
        from icg_rl.distributed.rollout import RolloutPool
        from icg_rl.evaluation.showcase import heldout_and_showcase
        from icg_rl.models.item_features import policy_context, policy_context_on_cluster
        from icg_rl.rewards.mix import RewardMixer
        from icg_rl.rewards.registry import refuse_for_backprop
        from icg_rl.rl.advantages import PerKeyStatTracker

        self.cfg, r = cfg, cfg.ray
        if cfg.rollout.async_ and cfg.algo.name == "backprop":
            raise ConfigError(f"rollout.async=true needs a rollout-based algo.name (ddpo, grpo, nft), got "
                              f"{cfg.algo.name!r}: reward backprop's learner continues the very chain the rollouts "
                              f"start, so it cannot run one step behind them")
        self.weights = {n: w for n, w in cfg.reward.weights.items() if w != 0}
        if cfg.algo.name == "backprop":  # before any actor exists: a reward with no gradient cannot be backpropped
            refuse_for_backprop(self.weights)
        pools = list(self.weights) + ([] if "clip_t" in self.weights else ["clip_t"])  # clip_t: eval relevance
        check_fits(run_requests(cfg, pools), r.resource_wait_s)  # before any actor exists: fail, never hang
        # the dataset is a local: once the pairs and the held-out batch exist, the driver no longer holds the log
        data = timed(log, "load", lambda: load_from_config(cfg))
        if r.role("reward")[1] > 0:  # a GPU cluster: embed the catalogue there, not on the (CPU) driver
            user_ids, item_features = timed(log, "catalogue features",
                                            lambda: policy_context_on_cluster(cfg, data, *r.role("reward")))
        else:
            user_ids, item_features = timed(log, "catalogue features", lambda: policy_context(cfg, data))
        self.stream = timed(log, "pairs and histories", lambda: stream_from_config(cfg, data, "train"))
        # the showcase (a few items × users of spread taste) only draws the sample grid; the held-out batches are
        # the ones every evaluation number comes from (the end-of-run one may be larger: train.final_eval_pairs)
        self.heldout, self.final_heldout, self.showcase_batch = timed(
            log, "held-out batches", lambda: heldout_and_showcase(cfg, data, with_oracle=cfg.data.kind == "coverworld"))
        data = None  # (not `del`: the lambdas above close over it)
        self.pools, self.elastic = pools, r.rollout_workers == "auto"
        rollouts = rollout_capacity(cfg, pools) if self.elastic else r.rollout_workers
        log.info("starting %d rollout%s, %d learner and %d×%d reward actors", rollouts,
                 " (auto)" if self.elastic else "", r.learner_workers, len(pools), r.reward_workers)
        # an elastic pool drops actors whose node left instead of restarting them (they would wait for resources)
        threads = {"rollout": role_threads(cfg, "rollout", rollouts), "reward": role_threads(cfg, "reward", 1),
                   "learner": role_threads(cfg, "learner", r.learner_workers)}
        log.info("torch threads per actor: %s", ", ".join(f"{k} {v}" for k, v in threads.items()))
        self.threads = threads
        # the policy's context once in the object store: every actor's copy, and a rebuilt learner group's
        self.context_refs = (ray.put(user_ids), ray.put(item_features))
        user_ids = item_features = None
        self.rollout = RolloutPool(cfg, *self.context_refs, rollouts, *r.role("rollout"),
                                   threads=threads["rollout"], max_restarts=0 if self.elastic else r.max_restarts)
        self.rewards = {n: RewardPool(n, cfg.reward, cfg.world.dir, r.reward_workers, *r.role("reward"),
                                      max_restarts=r.max_restarts, threads=threads["reward"], task_retries=0)
                        for n in pools}  # failures surface here, to be retried and logged by `finish`
        self.learner = LearnerGroup(cfg, *self.context_refs, r.learner_workers, *r.role("learner"),
                                    threads=threads["learner"])
        self.rollout.ready()
        for pool in self.rewards.values():
            pool.ready()
        self.mixer = RewardMixer.from_config(self.weights, cfg.reward)
        self.tracker = PerKeyStatTracker(max_keys=cfg.train.tracker_max_keys)
        self.iteration, self.epoch, self.batch_in_epoch, self.version = 0, 0, 0, 0
        self.pending, self.position = None, None  # async: the next iteration's rollouts in flight
        self.weight_group_formed = False  # ray.weight_sync collective / cuda_ipc: formed at the first sync
        self._batches = self._batch_stream()
        self.initial_state = self.driver_state()  # what a learner group lost before any checkpoint rewinds to
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
        from icg_rl.rl.critic import floored_scores, shown_differences
        from icg_rl.rl.nft import optimality

        algo, t = self.cfg.algo, {}
        start = time.perf_counter()
        if self.elastic:
            self.resize_rollouts()
        batch = next(self._batches) if self.pending is None else None
        # sample on the rollout actors, score on the reward pools, learn from rewards alone
        policy_gradient = algo.name in ("ddpo", "grpo", "nft")
        if policy_gradient and self.cfg.rollout.async_:
            # one step off-policy: this iteration's rollouts were sampled during the previous update; the next
            # iteration's start now, with the current weights, and run while the learner updates
            pending = self.pending or self.submit(batch, self.iteration)
            trajectory, scores = self.finish(pending, t)
            # the floored rewards' reference scores before the next batch's scoring is queued: a reward actor runs
            # its tasks in order, and that scoring waits for the next rollouts (it serialized the overlap)
            reference = pool_reference_scores(self.rewards, self.mixer.floors, pending["batch"])
            self.position = (self.epoch, self.batch_in_epoch)  # what a checkpoint records: next batch unsampled
            self.pending = self.submit(next(self._batches), self.iteration + 1)
        elif policy_gradient:
            pending = self.submit(batch, self.iteration)
            trajectory, scores = self.finish(pending, t)
            reference = pool_reference_scores(self.rewards, self.mixer.floors, pending["batch"])  # floored rewards
        if policy_gradient:
            total, metrics = self.mixer(scores, reference_scores=reference)
            metrics["stats/policy_lag"] = float(self.version - trajectory.policy_version)
            advantages, adv_stats = group_advantages(total.numpy(), trajectory.group_key, self.tracker,
                                                     global_std=algo.advantage_std == "batch")
            metrics |= {f"stats/{k}": v for k, v in adv_stats.items()}
            learn_start = time.perf_counter()
            if algo.name == "nft":  # the covers' x₀ with each one's optimality probability (rl/nft.py)
                r = optimality(advantages, algo.nft_clip)
                shown, r = self.show_to_other_users(trajectory, scores, r, metrics)
                critic_shown = self.retrying(lambda: shown_differences(
                    trajectory, scores, self.mixer, reference, self.score_shown, algo.nft_critic_shown,
                    self.cfg.train.seed, self.iteration), self.iteration, "the critic's cross-user scores")
                metrics |= self.learner.update_nft(shown, r, self.iteration, trajectory, advantages, shown=critic_shown,
                                                   floored=floored_scores(scores, reference, algo))
            else:
                metrics |= self.learner.update_ddpo(trajectory, advantages, self.iteration)
            t["time/learn"] = time.perf_counter() - learn_start
        else:  # reward backprop: rollouts run T−K steps, the learner the last K with gradient, pools check the covers
            metrics = self.backprop(batch, t)
        self.iteration += 1
        metrics |= self.sync_weights()
        t["time/iteration"] = time.perf_counter() - start
        rows = self.cfg.data.pairs_per_batch * self.cfg.data.samples_per_pair
        return metrics | t | {"perf/samples_per_s": rows / t["time/iteration"], "iteration": self.iteration}

    def show_to_other_users(self, trajectory, scores: dict, r: np.ndarray, metrics: dict) -> tuple:
        """`algo.nft_relabel_users` > 0: the batch's covers again, each under other users of the batch, scored for
        them by the user-dependent reward pools (rl/relabel.py) -> (trajectory, optimality) with those rows added."""
        from icg_rl.rl.nft import optimality
        from icg_rl.rl.relabel import shown_rows
        from icg_rl.rl.trajectory import Trajectory

        algo = self.cfg.algo
        shown = self.retrying(lambda: shown_rows(trajectory, {n: s.numpy() for n, s in scores.items()}, self.weights,
                                                 self.score_shown, algo.nft_relabel_users, self.cfg.train.seed,
                                                 self.iteration), self.iteration, "the cross-user scores")
        if shown is None:
            return trajectory, r
        metrics |= shown[2]
        return Trajectory.concat([trajectory, shown[0]]), np.concatenate([r, optimality(shown[1], algo.nft_clip)])

    def score_shown(self, images: np.ndarray, inputs: dict, names: list[str]) -> dict[str, np.ndarray]:
        """Covers scored for other users (`inputs` carry their user fields) by the reward pools `names`."""
        import ray

        from icg_rl.distributed.reward import RewardPool

        images_ref, inputs_ref = ray.put(images), ray.put(inputs)
        refs = {name: self.rewards[name].score_refs(images_ref, inputs_ref) for name in names}
        return {name: RewardPool.gather([ref]) for name, ref in refs.items()}

    def backprop(self, batch: dict, timings: dict) -> dict[str, float]:
        """DRaFT-K in the mission's shape: the rollout actors run the first T − K denoising steps without gradient;
        the learner continues from their x_{T−K} (same noise streams) with gradient and its differentiable
        rewards; the reward pools score the covers it made (`pool/<reward>`: the pools' check of the learner's
        own scores, and the place a non-differentiable reward would be logged)."""
        import ray

        from icg_rl.distributed.reward import RewardPool
        from icg_rl.rl.backprop import concat_prefix_wires, truncation
        from icg_rl.rl.sampling import REWARD_INPUTS
        from icg_rl.rl.seeding import update_generator

        start = time.perf_counter()
        k = truncation(self.cfg.algo, update_generator(self.cfg.train.seed, self.iteration))
        parts = self.retrying(lambda: ray.get(self.rollout.sample_prefix(batch, self.iteration, k)), self.iteration)
        timings["time/rollout"] = (learn_start := time.perf_counter()) - start
        metrics, images = self.learner.update_backprop(batch, concat_prefix_wires(parts), self.iteration)
        timings["time/learn"] = (reward_start := time.perf_counter()) - learn_start
        inputs = {key: np.asarray(batch[key]) for key in REWARD_INPUTS if key in batch}

        def check_scores() -> dict[str, float]:
            refs = {name: pool.score_refs(images, inputs) for name, pool in self.rewards.items()}
            return {f"pool/{name}": float(RewardPool.gather([ref]).mean()) for name, ref in refs.items()}

        every = self.cfg.train.pool_check_every  # 16 covers × every pool is ~0.17 s on 2 cores: not every step
        if every and self.iteration % every == 0:
            metrics |= self.retrying(check_scores, self.iteration)
        timings["time/reward"] = time.perf_counter() - reward_start
        return metrics

    def retrying(self, work, iteration: int, what: str = "its work", redo=None):
        """`work()`, and again after a rollout or reward actor died and restarted (`ray.max_restarts`): the rollout
        actors get the current weights again, the reward pools are waited for, then `redo()` (e.g. resubmitting what
        was queued on the dead actor) runs before the next attempt. The log says what was retried."""
        from ray.exceptions import RayActorError, RayTaskError

        from icg_rl.distributed.restarts import until_answering

        for attempt in range(self.cfg.ray.max_restarts + 1):
            try:
                return work()
            except (RayActorError, RayTaskError) as err:
                if attempt == self.cfg.ray.max_restarts:
                    raise
                log.warning("iteration %d: a rollout or reward actor failed (%s); waiting for its restart and "
                            "retrying %s (attempt %d of %d)", iteration + 1, type(err).__name__, what, attempt + 2,
                            self.cfg.ray.max_restarts + 1)
                self.recover_rollouts()
                for name, pool in self.rewards.items():  # blocks until a restarting reward actor answers again
                    until_answering(pool.ready, f"reward pool {name!r}")
                if redo is not None:
                    redo()
        raise AssertionError("unreachable")

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
        that dies restarts (`ray.max_restarts`); the batch is submitted again — with the same per-row noise, so the
        result is the same."""
        import ray

        from icg_rl.distributed.reward import RewardPool
        from icg_rl.rl.trajectory import Trajectory

        def collect() -> tuple:
            parts = ray.get([c[0] for c in pending["chunks"]])
            timings["time/rollout"] = time.perf_counter() - pending["start"]
            scores = {n: torch.from_numpy(RewardPool.gather(refs)) for n, refs in pending["score_refs"].items()}
            timings["time/reward"] = time.perf_counter() - pending["start"] - timings["time/rollout"]
            return Trajectory.concat([Trajectory.from_wire(w) for w in parts]), scores

        def resubmit() -> None:
            nonlocal pending
            pending = self.submit(pending["batch"], pending["iteration"])

        return self.retrying(collect, pending["iteration"], "the iteration's rollouts and rewards", redo=resubmit)

    def recover_rollouts(self) -> None:
        """After a rollout actor failed: an elastic pool drops actors whose node left (starting one if none is
        left); a restarted actor holds version 0 until it is given the current weights again."""
        from icg_rl.distributed.restarts import until_answering

        if self.elastic:
            dropped = self.rollout.drop_dead()
            if dropped:
                log.warning("rollout pool shrank: %d actor(s) gone with their node; %d remain", dropped,
                            len(self.rollout.actors))
            if not self.rollout.actors:
                self.rollout.grow(1)
                while not self.rollout.admit():
                    time.sleep(0.5)
        if self.cfg.ray.weight_sync == "object_store":
            until_answering(self.rollout.resync, "rollout pool")
        else:  # a restarted actor left the weight group: remake it and give everyone the current weights again
            until_answering(self.rollout.ready, "rollout pool")
            self.weight_group_formed = False
            self.sync_weights()

    def sync_weights(self) -> dict[str, float]:
        """Learner rank 0's trainable weights → every rollout actor, as version `self.iteration`: through the
        object store, or a weight group on the device (`ray.weight_sync`, distributed/weight_sync.py)."""
        from icg_rl.distributed.weight_sync import form_weight_group, push_weights

        start = time.perf_counter()
        self.version, mode = self.iteration, self.cfg.ray.weight_sync
        if mode == "object_store":
            weights_ref, size = self.learner.weights()

            tries = []

            def push() -> None:  # an actor that dies meanwhile (its node left, a preemption) is dropped or
                # restarted by `retrying`; a retry then reloads only the actors that do not hold this version yet
                if tries:
                    self.rollout.resync()
                else:
                    tries.append(self.version)
                    self.rollout.set_weights(self.version, weights_ref)

            self.retrying(push, self.iteration, "the weight sync")
        else:
            if not self.weight_group_formed:
                form_weight_group(mode, self.learner.source, self.rollout.actors)
                self.weight_group_formed = True
            size = push_weights(mode, self.learner.source, self.rollout.actors, self.version)
            self.rollout.version = self.version
        return {"sync/ms": (time.perf_counter() - start) * 1e3, "sync/bytes": float(size),
                "sync/version": float(self.version)}

    def evaluate(self, final: bool = False) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Held-out covers of the policy that ships: the learner's averaged weights when `train.average_last` > 0
        (the rollout actors sample with them for the evaluation only), else the live ones. `final`: on the
        end-of-run batch (`train.final_eval_pairs`)."""
        from icg_rl.evaluation.heldout import evaluate_heldout

        batch = self.final_heldout if final else self.heldout
        return self.retrying(lambda: evaluate_heldout(
            self.cfg, self.rollout, self.rewards, batch, with_oracle=self.cfg.data.kind == "coverworld",
            weights_ref=self._shipped_weights()), self.iteration, "the evaluation")

    def showcase(self) -> dict:
        """The sample grid's covers (evaluation/showcase.py): a few held-out items, each made by the policy that
        ships for the same few users of spread taste and with the user zeroed, with their oracle P(click) on
        CoverWorld. Its own batch: `evaluate`'s numbers do not depend on it."""
        from icg_rl.evaluation.showcase import sample_showcase

        return self.retrying(lambda: sample_showcase(
            self.cfg, self.rollout, self.showcase_batch, with_oracle=self.cfg.data.kind == "coverworld",
            weights_ref=self._shipped_weights()), self.iteration, "the sample grid")

    def _shipped_weights(self):
        """The learner's averaged weights when `train.average_last` > 0 (the rollout actors sample with them for
        the evaluation only), else None: the live ones the actors hold."""
        return self.learner.weights(averaged=True)[0] if self.cfg.train.average_last > 0 else None

    def shutdown(self) -> None:
        self._batches.close()  # ends the Ray Data iterator while Ray is still up
        join_reader_threads()
        self.learner.shutdown()
        self.rollout.shutdown()
        for pool in self.rewards.values():
            pool.shutdown()
