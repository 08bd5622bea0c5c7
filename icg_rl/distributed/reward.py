"""Reward scoring on Ray (docs/architecture.md §8): a plain `RewardWorker`, a pool of its actors per reward, and
`check_fits`.

    pool = RewardPool("aesthetic", cfg.reward, cfg.world.dir, num_workers=2, num_cpus=0.5)
    scores = pool.score(images_uint8, batch, chunk_size=16)   # np.ndarray [B] float32, rows in input order

`RewardWorker` runs without Ray (tests, in-process scoring); the pool wraps it in `ray.remote` actors that restart
on failure and retry their chunk. Actors get only the reward sub-config and the world folder, never the whole
config. Ray leaves an actor whose resource request exceeds the cluster pending forever without an error, so every
pool checks its request against the cluster first and fails with the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from icg_rl.distributed.placement import check_fits, torch_threads
from icg_rl.models.images import to_float_images
from icg_rl.rewards.base import RewardModel
from icg_rl.rewards.registry import build_reward


class RewardWorker:
    """One reward model, scoring batches: uint8 [B, H, W, 3] arrays or float [B, 3, H, W] tensors in [0, 1].

    `factory(reward_cfg, world_dir) -> RewardModel`, when given, is used instead of the registry: a reward
    registered only in the caller's process (a test's) is unknown in a Ray worker process, a picklable factory is
    not. `threads` sets torch's intra-op threads (None leaves them); one per requested CPU keeps actors sharing a
    machine from oversubscribing it.
    """

    def __init__(self, name: str, reward_cfg, world_dir: str, threads: int | None = 1,
                 factory: Callable[..., RewardModel] | None = None, device: str | None = None):
        if threads is not None:
            if threads < 1:
                raise ValueError(f"RewardWorker threads: must be >= 1 or None, got {threads}")
            torch.set_num_threads(threads)
        self.name = name
        self.model = factory(reward_cfg, world_dir) if factory is not None else build_reward(name, reward_cfg,
                                                                                             world_dir)
        self.device = torch.device(device or "cpu")
        self.model.to(self.device).eval()

    def ready(self) -> dict:
        """Returns once the model is built: lets a pool surface construction errors early."""
        return {"name": self.name, "differentiable": bool(self.model.differentiable)}

    def score(self, images, batch: dict | None = None) -> np.ndarray:
        """images uint8 ndarray [B, H, W, 3] or float Tensor [B, 3, H, W] in [0, 1] -> scores float32 [B]."""
        x = to_float_images(images, f"reward {self.name!r}").to(self.device)
        with torch.no_grad():
            scores = self.model.score(x, batch or {})  # (B,)
        return scores.detach().to(torch.float32).cpu().numpy()


class RewardPool:
    """`num_workers` Ray actors of one reward; a batch is split into chunks scored in parallel, in row order.

    Chunks go round robin over the actors (each actor queues its own); with equal chunk sizes that is as balanced
    as a free-actor queue and keeps `score_async` a plain list of refs. Actors restart up to `max_restarts` times
    and a chunk caught by a crash is retried as often.
    """

    def __init__(self, name: str, reward_cfg, world_dir: str, num_workers: int, num_cpus: float,
                 num_gpus: float = 0.0, max_restarts: int = 3, factory: Callable[..., RewardModel] | None = None,
                 threads: int | None = None, task_retries: int | None = None):
        import ray

        if num_workers < 1:
            raise ValueError(f"RewardPool {name!r}: num_workers must be >= 1, got {num_workers}")
        if num_cpus < 0 or num_gpus < 0:
            raise ValueError(f"RewardPool {name!r}: num_cpus and num_gpus must be >= 0, got {num_cpus}, {num_gpus}")
        check_fits({f"reward pool {name!r}": (num_workers, num_cpus, num_gpus)})
        self.name = name
        # task_retries None: Ray retries a crashed chunk by itself; 0: the caller sees the failure (and can log it)
        actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
                               max_task_retries=max_restarts if task_retries is None else task_retries)(RewardWorker)
        threads = torch_threads(num_cpus, threads)
        device = "cuda" if num_gpus > 0 else None
        self.actors = [actor_cls.remote(name, reward_cfg, str(world_dir), threads, factory, device)
                       for _ in range(num_workers)]
        self._next = 0  # round-robin start, so one-chunk calls do not all land on actor 0

    def ready(self, timeout_s: float | None = None) -> list[dict]:
        """Block until every actor has built its model; raises the construction error of a failed one."""
        import ray

        return ray.get([a.ready.remote() for a in self.actors], timeout=timeout_s)

    def score(self, images, batch: dict | None = None, chunk_size: int | None = None) -> np.ndarray:
        """Scores float32 [B] in the rows' original order (see `score_async` for the arguments)."""
        return self.gather(self.score_async(images, batch, chunk_size))

    def score_async(self, images, batch: dict | None = None, chunk_size: int | None = None) -> list:
        """Submit the chunks and return one `ray.ObjectRef` per chunk, in row order; `gather` joins them.

        `chunk_size` None splits the batch evenly over the actors. Every array, tensor or list in `batch` with B
        rows is sliced alongside the images; scalars and strings go to every chunk unchanged.
        """
        if not self.actors:
            raise RuntimeError(f"RewardPool {self.name!r} is shut down")
        batch = batch or {}
        n = len(images)
        if chunk_size is None:
            chunk_size = max(1, math.ceil(n / len(self.actors)))
        if chunk_size < 1:
            raise ValueError(f"RewardPool {self.name!r}: chunk_size must be >= 1 or None, got {chunk_size}")
        check_rows(batch, n, self.name)
        refs = []
        for lo in range(0, n, chunk_size):
            hi = min(lo + chunk_size, n)
            actor = self.actors[self._next % len(self.actors)]
            self._next += 1
            refs.append(actor.score.remote(_rows(images, lo, hi), slice_batch(batch, lo, hi, n)))
        return refs

    def score_refs(self, images_ref, batch_ref) -> object:
        """Queue one chunk whose images and batch are still being produced (ObjectRefs of a rollout task): Ray
        starts scoring the moment they exist, so a pool never waits for the rest of the batch. Returns one ref."""
        if not self.actors:
            raise RuntimeError(f"RewardPool {self.name!r} is shut down")
        actor = self.actors[self._next % len(self.actors)]
        self._next += 1
        return actor.score.remote(images_ref, batch_ref)

    @staticmethod
    def gather(refs: Sequence) -> np.ndarray:
        """Chunk refs from `score_async` -> scores float32 [B], concatenated in the refs' order."""
        import ray

        if not refs:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(ray.get(list(refs))).astype(np.float32, copy=False)

    def shutdown(self) -> None:
        """Kill the actors (no restart); the pool can no longer score."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


def _is_rows(value) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor, list, tuple)) and getattr(value, "ndim", 1) > 0


def check_rows(batch: dict, n: int, name: str) -> None:
    """Every row-like batch value must have B rows; a mismatch would silently pair rows with the wrong images."""
    for key, value in batch.items():
        if _is_rows(value) and len(value) != n:
            raise ValueError(f"reward {name!r}: batch[{key!r}] has {len(value)} rows, the images have {n}; "
                             f"batch arrays and lists must have one row per image")


def slice_batch(batch: dict, lo: int, hi: int, n: int) -> dict:
    """Rows [lo, hi) of every row-like value (array, tensor, list with n rows); other values unchanged."""
    return {key: _rows(value, lo, hi) if _is_rows(value) and len(value) == n else value
            for key, value in batch.items()}


def _rows(value, lo: int, hi: int):
    # A pickled torch view carries its whole storage; clone so each chunk ships only its rows.
    if isinstance(value, torch.Tensor):
        return value[lo:hi].clone()
    return value[lo:hi]


def pool_reference_scores(pools: dict, floors: dict, batch: dict) -> dict[str, torch.Tensor]:
    """The floored rewards' scores of each row's reference cover, by the reward pools (NaN for items without one):
    the pool-side twin of `rl/backprop.py::reference_scores`, for the policy-gradient path."""
    if not floors:
        return {}
    from icg_rl.rl.backprop import without_reference
    from icg_rl.rl.sampling import REWARD_INPUTS

    images = np.asarray(batch["reference_image"])
    inputs = {k: batch[k] for k in REWARD_INPUTS if k in batch}
    missing = without_reference(batch, len(images))
    return {name: torch.from_numpy(RewardPool.gather(pools[name].score_async(images, inputs)))
            .masked_fill(missing, float("nan")) for name in floors}
