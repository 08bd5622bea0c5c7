"""The generator deployment: one ICGPipeline (base + MLLM, loaded once) per replica serving several policies,
requests merged by `@serve.batch` into pipeline calls.

Policies are Ray Serve multiplexed models: the ingress names one per request (`multiplexed_model_id`), Serve routes
the request to a replica that holds it and splits every batch by it, so a batch is one policy's. A replica keeps the
ICG weights of at most `max_policies_per_replica` policies (LRU) and copies a policy's weights into its pipeline
before that policy's batch runs (policies.py); a lock keeps loads, swaps and pipeline calls one at a time.

A batch may mix users, titles, image counts and step/guidance settings: requests that share (steps, guidance) go
through one pipeline call, one image row each, and every image draws its noise from its own generator seeded from
(request seed, image index) — so a request's images do not depend on which other requests shared its batch.
The pipeline runs in a worker thread so the replica's event loop keeps answering health checks meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np
import torch
from ray import serve

from icg_rl.config.serve import Batching, ServeSettings
from icg_rl.models.pipeline import ICGPipeline, load_checkpoint
from icg_rl.models.user import ICGUser
from icg_rl.rl.seeding import derive_seed
from icg_rl.serve.policies import PolicyInfo, PolicyWeights, live_tensors, read_policies
from icg_rl.serve.recovery import BatchWatch
from icg_rl.serve.schema import MAX_SEED

log = logging.getLogger("icg_rl.serve")
SERVING_STREAM = 3  # beside rl/seeding's ROLLOUT, UPDATE, EVALUATION streams


@dataclass(frozen=True)
class CoverJob:
    """A validated request as the generator needs it (built by the ingress; plain data, cheap to send)."""

    title: str
    reference: np.ndarray | None  # uint8 (H, W, 3)
    user_id: str | None
    history: tuple[str, ...]
    num_images: int
    seed: int
    steps: int
    guidance_scale: float


@dataclass
class CoverResult:
    images: list[np.ndarray]  # uint8 (H, W, 3) each
    user_mode: str
    ignored_history_items: int
    model_version: str
    policy: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds, for the ingress' Server-Timing header


def resolve_user(pipe: ICGPipeline, user_id: str | None, history: tuple[str, ...], items: frozenset[str]
                 ) -> tuple[ICGUser, str, int]:
    """-> the ICGUser, its mode (known | history | cold_start) and how many history ids had no features. `items`:
    the ids with features (`icg.item_ids` as a set, made once per replica)."""
    known_user = user_id is not None and user_id in pipe.icg.user_encoder.index
    usable = [h for h in history if h in items or h.split("|", 1)[0] in items]
    user = ICGUser(user_id=user_id if known_user else None, history=usable)
    mode = "known" if known_user else "history" if usable else "cold_start"
    return user, mode, len(history) - len(usable)


def versions() -> dict[str, str]:
    import diffusers
    import ray
    import transformers

    import icg_rl

    return {"icg_rl": icg_rl.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "ray": ray.__version__}


def image_generators(seed: int, count: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(derive_seed(seed, SERVING_STREAM, i)) for i in range(count)]


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED)


# Health: Serve calls check_health every 10 s and replaces the replica after 3 failures in a row; a check that takes
# over 30 s counts as failed (a blocked event loop; a hung pipeline call does not block it, BatchWatch times that).
# So a dead model or a hung pipeline call is out of rotation about 30 s after the check first sees it.
@serve.deployment(name="CoverGenerator", max_ongoing_requests=32, health_check_period_s=10,
                  health_check_timeout_s=30)
class CoverGenerator:
    def __init__(self, settings: dict):
        self.settings = ServeSettings.model_validate(settings)
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.catalog: dict[str, PolicyInfo] = read_policies(self.settings.policy_checkpoints(), self.settings.base,
                                                            self.settings.mllm)
        self.default_policy = self.settings.default_policy
        self.lock = threading.Lock()  # one of: a policy load, a weight swap, a pipeline call
        self.counters = {"base_loads": 0, "weight_swaps": 0, "batches": 0}
        self.in_flight = 0  # requests in this replica: queued for a batch or in one
        self.watch = BatchWatch(self.settings.recovery)
        self.policy_loads: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.pipe = self.load_base(self.catalog[self.default_policy])
        self.live = live_tensors(self.pipe)
        self.items = frozenset(self.pipe.icg.item_ids)  # the same for every policy (read_policies checks item_ids)
        self.active: str | None = self.default_policy  # the policy whose ICG weights the pipeline holds now
        native = self.pipe.denoiser.config.sample_size * self.pipe.vae_scale_factor
        self.image_size = self.settings.image_size or native
        if self.image_size % self.pipe.vae_scale_factor:
            raise ValueError(f"image_size: {self.image_size} is not a multiple of the VAE scale factor "
                             f"{self.pipe.vae_scale_factor}")
        self.reconfigure(self.settings.batching.model_dump())

        async def load(policy: str) -> PolicyWeights:  # Serve caches what this returns, per policy, LRU
            return await asyncio.to_thread(self.load_policy, policy)

        self.get_policy = serve.multiplexed(max_num_models_per_replica=self.settings.max_policies_per_replica)(load)
        log.info("CoverGenerator: policies %s on %s, %d px, batching %s",
                 {name: info.model_version for name, info in self.catalog.items()},
                 self.catalog[self.default_policy].config["base"], self.image_size, self.settings.batching)

    def load_base(self, first: PolicyInfo) -> ICGPipeline:
        """The base model and MLLM (with the first policy's ICG weights): the one heavy load of a replica."""
        pipe = load_checkpoint(first.checkpoint, base=self.settings.base, mllm=self.settings.mllm)
        pipe.set_progress_bar_config(disable=True)
        self.counters["base_loads"] += 1
        return pipe

    def load_policy(self, policy: str) -> PolicyWeights:
        """A policy's ICG weights from its checkpoint (only those: the base stays), kept in memory by Serve."""
        if policy not in self.catalog:  # the ingress checks names; this guards direct handle calls
            raise ValueError(f"policy: {policy!r} is not served here; policies are {list(self.catalog)}")
        with self.lock:
            self.active = None  # a load that fails half-way leaves no policy's weights in the pipeline
            weights = PolicyWeights.load(self.pipe, self.catalog[policy])
            self.active = policy
            self.policy_loads[policy] += 1
        log.info("CoverGenerator: loaded policy %s (%s, %.2f MB)", policy, weights.info.model_version,
                 weights.nbytes / 2**20)
        return weights

    def reconfigure(self, user_config: dict) -> None:
        """`user_config` (deployment option) → batching: change it live with `serve deploy`, no restart."""
        batching = Batching.model_validate(user_config or {})
        self.generate_batch.set_max_batch_size(batching.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self.batching = batching

    def check_health(self) -> None:
        """Serve calls this every `health_check_period_s`; raising (3 times in a row) gets the replica replaced, and
        requests it still held are resent by the ingress (recovery.py)."""
        if self.pipe is None:
            raise RuntimeError("CoverGenerator: no pipeline loaded")
        problem = self.watch.problem()
        if problem is not None:
            log.error("CoverGenerator: unhealthy: %s", problem)
            raise RuntimeError(f"CoverGenerator: {problem}")

    def info(self) -> dict:
        """The catalog and the default policy's details (every replica reads the same checkpoints)."""
        default = self.catalog[self.default_policy]
        config = {k: (len(v) if isinstance(v, list) else v) for k, v in default.config.items()}
        return {"model_version": default.model_version, "checkpoint": str(default.checkpoint), "config": config,
                "image_size": self.image_size, "batching": self.batching.model_dump(),
                "batches": self.counters["batches"], "versions": versions(), "default_policy": self.default_policy,
                "policies": [{"name": name, "model_version": info.model_version, "checkpoint": str(info.checkpoint)}
                             for name, info in self.catalog.items()]}

    def stats(self) -> dict:
        """This replica's own counters (GET /v1/stats shows ReplicaStats' fields; `pid` and `in_flight` only reach
        handle callers: an operator's script, tests/serve/test_replica_death.py)."""
        return {"replica": serve.get_replica_context().replica_id.unique_id, "pid": os.getpid(),
                "in_flight": self.in_flight, **self.counters, "policy_loads": dict(self.policy_loads),
                "requests": dict(self.requests)}

    async def generate(self, job: CoverJob) -> CoverResult:
        """One request. It waits for batch-mates only when it has company: a request that finds the replica idle
        runs at once instead of paying `batch_wait_timeout_s` for nobody (its p50 latency, issue 22)."""
        self.in_flight += 1
        try:
            alone = self.in_flight == 1
            self.generate_batch.set_batch_wait_timeout_s(0.0 if alone else self.batching.batch_wait_timeout_s)
            return await self.generate_batch(job)
        finally:
            self.in_flight -= 1

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def generate_batch(self, jobs: list[CoverJob]) -> list[CoverResult]:
        # Serve splits batches by multiplexed model id: every job here is for this one policy
        policy = await self.get_policy(serve.get_multiplexed_model_id() or self.default_policy)
        self.counters["batches"] += 1
        return await asyncio.to_thread(self.generate_now, jobs, policy)

    def generate_now(self, jobs: list[CoverJob], policy: PolicyWeights) -> list[CoverResult]:
        with self.lock, self.watch.batch():
            started = time.perf_counter()
            if self.active != policy.info.name:
                policy.apply(self.live)
                self.active = policy.info.name
                self.counters["weight_swaps"] += 1
            swapped = time.perf_counter()
            results = self.run_pipeline(jobs, policy.info)
            finished = time.perf_counter()
        self.requests[policy.info.name] += len(jobs)
        for result in results:
            result.timings = {"swap": swapped - started, "pipeline": finished - swapped, "batch_size": len(jobs)}
        return results

    def run_pipeline(self, jobs: list[CoverJob], policy: PolicyInfo) -> list[CoverResult]:
        """Every job's images, one pipeline call per (steps, guidance) group."""
        users = [resolve_user(self.pipe, job.user_id, job.history, self.items) for job in jobs]
        images: dict[int, list[np.ndarray]] = {}
        order = sorted(range(len(jobs)), key=lambda j: (jobs[j].steps, jobs[j].guidance_scale))
        for (steps, guidance), group in groupby(order, key=lambda j: (jobs[j].steps, jobs[j].guidance_scale)):
            group = list(group)
            rows = [(j, i) for j in group for i in range(jobs[j].num_images)]
            references = [jobs[j].reference for j, _ in rows]
            generators = [g for j in group for g in image_generators(jobs[j].seed, jobs[j].num_images)]
            with torch.inference_mode():
                out = self.pipe([jobs[j].title for j, _ in rows],
                                reference_images=references if any(r is not None for r in references) else None,
                                users=[users[j][0] for j, _ in rows], generator=generators,
                                num_inference_steps=steps, guidance_scale=guidance, height=self.image_size,
                                width=self.image_size, output_type="np").images  # (N, H, W, 3) in [0, 1]
            pixels = (np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8)
            for (j, _), image in zip(rows, pixels):
                images.setdefault(j, []).append(image)
        return [CoverResult(images[j], users[j][1], users[j][2], policy.model_version, policy.name)
                for j in range(len(jobs))]
