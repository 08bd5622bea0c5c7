"""Rollout actors (docs/architecture.md §1, §8): hold the frozen models plus the current ICG weights, sample
trajectories.

    pool = RolloutPool(cfg, user_ids, item_features, num_workers=2, num_cpus=0.5)
    pool.set_weights(version, weights_ref)                      # from the learner, through the object store
    chunks = pool.sample(batch, iteration, version)             # [(trajectory_ref, images_ref, reward_batch_ref)]

A batch is split into contiguous row chunks, one per actor. Each row draws its noise from its own generator
(`rl/seeding.py`), so the samples do not depend on how many actors there are. Each chunk returns three objects:
the trajectory (for the learner) and the images and reward inputs, which reward pools can be handed while the
chunk is still sampling. An actor that crashes restarts (`max_restarts`), rebuilds its models and is given the
current weights again; its chunk is retried.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from icg_rl.distributed.placement import in_object_store, torch_threads
from icg_rl.distributed.reward import slice_batch
from icg_rl.distributed.weight_sync import WeightGroupMember
from icg_rl.distributed.weights import VersionedWeights
from icg_rl.models.trainable import weights_loaded
from icg_rl.rl.sampling import REWARD_INPUTS, kept_steps, rollout_window, sample_trajectory
from icg_rl.rl.seeding import ROLLOUT, group_generators, row_generators
from icg_rl.rl.speed import autocast, prepare_denoiser

log = logging.getLogger(__name__)


class RolloutWorker(WeightGroupMember):
    """One policy copy for sampling. Runs without Ray too (tests, the in-process comparison). Weights arrive
    through the object store (`set_weights`) or a weight group (`receive_weights`, `weight_sync.py`)."""

    def __init__(self, cfg, user_ids: list[str], item_features: dict, threads: int | None = 1,
                 device: str | None = None):
        from icg_rl.models.pipeline import pipeline_from_config

        if threads is not None:
            torch.set_num_threads(threads)
        self.cfg = cfg
        self.pipe = pipeline_from_config(cfg, user_ids=user_ids, item_features=item_features)
        self.pipe.to(device or "cpu")
        self.pipe.set_progress_bar_config(disable=True)
        prepare_denoiser(self.pipe, cfg.rollout.compile)
        self.weights = VersionedWeights()

    def ready(self) -> dict:
        return {"version": self.weights.version, "device": str(self.pipe.device)}

    def set_weights(self, version: int, arrays: dict) -> float:
        """Load weights `version` (must be newer than the held one); returns the load time in ms."""
        start = time.perf_counter()
        self.weights.apply(self.pipe, version, arrays)
        return (time.perf_counter() - start) * 1e3

    def version(self) -> int:
        return self.weights.version

    def rewind(self) -> None:
        """The run went back to a checkpoint: accept the (older) weights version it syncs next."""
        self.weights.rewind()

    def held_weights(self) -> tuple[int, dict]:
        """(version, trainable arrays) this actor samples with: what a sync delivered, for checks and debugging."""
        from icg_rl.models.trainable import trainable_arrays

        return self.weights.version, trainable_arrays(self.pipe)

    def sample(self, batch: dict, first_row: int, iteration: int, version: int, stream: int = ROLLOUT,
               zero_user: bool = False, weights: dict | None = None) -> tuple[dict, np.ndarray, dict]:
        """Rows of a stream batch -> (trajectory wire dict, images uint8 [B, H, W, 3], reward inputs).

        `first_row` is the chunk's first row in the whole batch (it picks the rows' noise generators); `version`
        must be the weights version this actor holds (a stale actor refuses instead of sampling). `weights`
        (evaluation of the learner's averaged policy) are sampled with for this call only; the held version's
        weights are back in place after it."""
        self.weights.check(version)
        algo = self.cfg.algo
        rows = range(first_row, first_row + len(batch["group_key"]))
        noise = row_generators(self.cfg.train.seed, iteration, rows, stream)
        start = group_generators(self.cfg.train.seed, iteration, batch["group_key"]) \
            if algo.shared_start and stream == ROLLOUT else None
        with weights_loaded(self.pipe, weights) as pipe, autocast(pipe.device, self.cfg.rollout.precision):
            trajectory, _ = sample_trajectory(pipe, batch, algo.num_inference_steps, algo.eta, algo.guidance_scale,
                                              noise, policy_version=version, zero_user=zero_user,
                                              sde_window=rollout_window(algo), start_generator=start,
                                              keep_steps=kept_steps(algo))  # nft: x₀ (and the critic's tail)
        reward_inputs = {k: np.asarray(batch[k]) for k in REWARD_INPUTS if k in batch}
        return trajectory.to_wire(), trajectory.images, reward_inputs

    def sample_prefix(self, batch: dict, first_row: int, iteration: int, version: int, k: int) -> dict:
        """Reward backprop's first T − K denoising steps (no gradient) for rows of a batch -> the prefix wire
        dict (`rl/backprop.py`): x_{T−K}, its condition and each row's noise-generator state."""
        from icg_rl.rl.backprop import denoise_prefix, prefix_to_wire

        self.weights.check(version)
        rows = range(first_row, first_row + len(batch["group_key"]))
        noise = row_generators(self.cfg.train.seed, iteration, rows)  # the learner's own streams (rl/local.py)
        with autocast(self.pipe.device, self.cfg.rollout.precision):
            prefix = denoise_prefix(self.pipe, batch, self.cfg.algo, noise, k)
        return prefix_to_wire(prefix, noise)


class RolloutPool:
    """`num_workers` RolloutWorker actors; `sample` splits a batch over them and returns refs per chunk."""

    def __init__(self, cfg, user_ids: list[str], item_features: dict, num_workers: int, num_cpus: float,
                 num_gpus: float = 0.0, threads: int | None = None, max_restarts: int = 3):
        import ray

        self.cfg, self.version, self._weights_ref = cfg, 0, None
        self._actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
                                     max_task_retries=max_restarts)(RolloutWorker)
        users_ref, features_ref = in_object_store(user_ids), in_object_store(item_features)  # one copy for all
        self._args = (cfg, users_ref, features_ref, torch_threads(num_cpus, threads), "cuda" if num_gpus > 0 else None)
        self.actors = [self._actor_cls.remote(*self._args) for _ in range(num_workers)]
        self.starting: list[tuple] = []  # (actor, ready ref): joining the pool once built and given the weights

    def ready(self, timeout_s: float | None = None) -> list[dict]:
        import ray

        return ray.get([a.ready.remote() for a in self.actors], timeout=timeout_s)

    def set_weights(self, version: int, weights_ref) -> float:
        """Every actor loads `weights_ref` (an ObjectRef of the arrays); returns the slowest load in ms."""
        import ray

        self.version, self._weights_ref = version, weights_ref
        return max(ray.get([a.set_weights.remote(version, weights_ref) for a in self.actors]))  # (starting
        # actors get the newest version when `admit` takes them in)

    def sample(self, batch: dict, iteration: int, stream: int = ROLLOUT, zero_user: bool = False,
               weights_ref=None) -> list[tuple]:
        """Submit the batch in contiguous chunks (one per actor); returns [(trajectory_ref, images_ref,
        reward_inputs_ref)] in row order. Nothing waits here. `weights_ref`: sample with these weights instead of
        the held version's, for this batch only (evaluating the averaged policy)."""
        return [actor.sample.options(num_returns=3).remote(chunk, lo, iteration, self.version, stream, zero_user,
                                                           weights_ref)
                for actor, lo, chunk in self._chunks(batch)]

    def sample_prefix(self, batch: dict, iteration: int, k: int) -> list:
        """Submit reward backprop's no-gradient prefix in contiguous chunks (one per actor) -> refs in row order."""
        return [actor.sample_prefix.remote(chunk, lo, iteration, self.version, k)
                for actor, lo, chunk in self._chunks(batch)]

    def _chunks(self, batch: dict) -> list[tuple[object, int, dict]]:
        """(actor, first row, rows) for contiguous chunks of a batch, one per actor (fewer when rows are few)."""
        n = len(batch["group_key"])
        bounds = group_bounds(np.asarray(batch["group_key"]), len(self.actors))
        return [(actor, int(lo), slice_batch(batch, int(lo), int(hi), n))
                for actor, lo, hi in zip(self.actors, bounds[:-1], bounds[1:])]

    def grow(self, count: int) -> None:
        """Start `count` more actors; they join `actors` (at the next `sample`) once built and holding the weights."""
        for _ in range(count):
            actor = self._actor_cls.remote(*self._args)
            ready = actor.set_weights.remote(self.version, self._weights_ref) if self._weights_ref is not None \
                else actor.ready.remote()
            self.starting.append((actor, ready, self.version))

    def admit(self) -> int:
        """Move started actors that are ready (and hold the current weights) into the pool; returns how many."""
        import ray

        admitted = 0
        for actor, ready, version in list(self.starting):
            done, _ = ray.wait([ready], timeout=0)
            if not done:
                continue
            self.starting.remove((actor, ready, version))
            try:
                ray.get(ready)
            except ray.exceptions.RayActorError:
                continue  # died while starting (its node left)
            if version != self.version:
                ray.get(actor.set_weights.remote(self.version, self._weights_ref))
            self.actors.append(actor)
            admitted += 1
        return admitted

    def drop_dead(self, timeout_s: float = 30.0) -> int:
        """Remove actors that no longer answer (their node left); returns how many were dropped."""
        import ray

        pings = {actor.version.remote(): actor for actor in self.actors}
        done, _ = ray.wait(list(pings), num_returns=len(pings), timeout=timeout_s)
        alive = []
        for ref in done:
            try:
                ray.get(ref)
                alive.append(pings[ref])
            except ray.exceptions.RayActorError:
                continue
        dropped = len(self.actors) - len(alive)
        self.actors = [a for a in self.actors if a in alive]
        return dropped

    def rewind(self) -> None:
        """Every actor accepts an older weights version next (the run went back to a checkpoint)."""
        import ray

        ray.get([a.rewind.remote() for a in self.actors])
        for actor, _, _ in self.starting:  # loading the newer weights: an elastic pool starts them again
            ray.kill(actor, no_restart=True)
        self.version, self._weights_ref, self.starting = -1, None, []

    def resync(self) -> None:
        """Give every actor the current weights again (after a restart an actor holds version 0)."""
        import ray

        if self._weights_ref is None:
            return
        versions = ray.get([a.version.remote() for a in self.actors])
        stale = [a for a, v in zip(self.actors, versions) if v != self.version]
        if stale:
            log.warning("%d rollout actor(s) restarted; reloading weights version %d", len(stale), self.version)
            ray.get([a.set_weights.remote(self.version, self._weights_ref) for a in stale])

    def shutdown(self) -> None:
        import ray

        for actor in self.actors + [a for a, _, _ in self.starting]:
            ray.kill(actor, no_restart=True)
        self.actors, self.starting = [], []


def group_bounds(group_key: np.ndarray, parts: int) -> np.ndarray:
    """Chunk bounds [0, …, N] for `parts` contiguous chunks that never split a group (consecutive equal keys): a
    reward whose score depends on the scored batch (`preference_lift` centres on its audience) then sees every
    sample of a group with the same batch, so in-group reward differences are the covers' alone. Fewer chunks
    when there are fewer groups."""
    n = len(group_key)
    starts = np.flatnonzero(np.r_[True, group_key[1:] != group_key[:-1]])  # (G,) first row of each group
    even = np.linspace(0, n, min(parts, len(starts)) + 1)[1:-1]  # the even split's inner bounds
    inner = starts[np.abs(starts[None, :] - even[:, None]).argmin(axis=1)] if len(even) else starts[:0]
    return np.unique(np.r_[0, inner, n]).astype(int)
