"""The generator deployment: one ICGPipeline per replica, requests merged by `@serve.batch` into pipeline calls.

A batch may mix users, titles, image counts and step/guidance settings: requests that share (steps, guidance) go
through one pipeline call, one image row each, and every image draws its noise from its own generator seeded from
(request seed, image index) — so a request's images do not depend on which other requests shared its batch.
The pipeline runs in a worker thread so the replica's event loop keeps answering health checks meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from ray import serve

from icg_rl.models.pipeline import WEIGHTS_NAME, ICGPipeline, load_checkpoint
from icg_rl.models.user import ICGUser
from icg_rl.rl.seeding import derive_seed
from icg_rl.serve.schema import MAX_SEED, Batching, ServeSettings

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


def model_version(checkpoint: Path) -> str:
    digest = hashlib.sha256((checkpoint / WEIGHTS_NAME).read_bytes()).hexdigest()
    return f"icg-{digest[:12]}"


def load_policy(settings: ServeSettings) -> ICGPipeline:
    """The checkpoint's ICGPipeline on the base/MLLM it was trained with (or the configured replacements)."""
    pipe = load_checkpoint(settings.checkpoint, base=settings.base, mllm=settings.mllm)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def resolve_user(pipe: ICGPipeline, user_id: str | None, history: tuple[str, ...]) -> tuple[ICGUser, str, int]:
    """-> the ICGUser, its mode (known | history | cold_start) and how many history ids had no features."""
    known_user = user_id is not None and user_id in pipe.icg.user_encoder.index
    table = pipe.icg.feature_table()
    usable = [h for h in history if h in table or h.split("|", 1)[0] in table]
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


@serve.deployment(name="CoverGenerator", max_ongoing_requests=32, health_check_period_s=10)
class CoverGenerator:
    def __init__(self, settings: dict):
        self.settings = ServeSettings.model_validate(settings)
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        self.pipe = load_policy(self.settings)
        self.version = model_version(Path(self.settings.checkpoint))
        native = self.pipe.denoiser.config.sample_size * self.pipe.vae_scale_factor
        self.image_size = self.settings.image_size or native
        if self.image_size % self.pipe.vae_scale_factor:
            raise ValueError(f"image_size: {self.image_size} is not a multiple of the VAE scale factor "
                             f"{self.pipe.vae_scale_factor}")
        self.reconfigure(self.settings.batching.model_dump())
        self.batches = 0
        log.info("CoverGenerator: %s from %s, %d px, batching %s", self.version, self.settings.checkpoint,
                 self.image_size, self.settings.batching)

    def reconfigure(self, user_config: dict) -> None:
        """`user_config` (deployment option) → batching: change it live with `serve deploy`, no restart."""
        batching = Batching.model_validate(user_config or {})
        self.generate.set_max_batch_size(batching.max_batch_size)
        self.generate.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self.batching = batching

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and it gets replaced."""
        if self.pipe is None:
            raise RuntimeError("CoverGenerator: no pipeline loaded")

    def info(self) -> dict:
        config = {k: (len(v) if isinstance(v, list) else v) for k, v in self.pipe.icg.config.items()}
        return {"model_version": self.version, "checkpoint": str(self.settings.checkpoint), "config": config,
                "image_size": self.image_size, "batching": self.batching.model_dump(), "batches": self.batches,
                "versions": versions()}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def generate(self, jobs: list[CoverJob]) -> list[CoverResult]:
        self.batches += 1
        return await asyncio.to_thread(self.generate_now, jobs)

    def generate_now(self, jobs: list[CoverJob]) -> list[CoverResult]:
        """Every job's images, one pipeline call per (steps, guidance) group."""
        users = [resolve_user(self.pipe, job.user_id, job.history) for job in jobs]
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
        return [CoverResult(images[j], users[j][1], users[j][2], self.version) for j in range(len(jobs))]
