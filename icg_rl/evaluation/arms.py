"""The evaluation arms: what each (user, item) pair's cover is under each system, on the same noise.

- `reference`: the item's own reference cover (what the platform shows today);
- `base`: the base diffusion model alone — the trained pipeline with its adapter gate at zero, which makes the ICG
  tokens exactly zero so the added cross-attention contributes nothing (and UNet LoRA, if any, disabled);
- `icg_user_zeroed`: the trained ICG policy with the user embedding replaced by zeros (what personalization adds);
- `icg`: the trained policy.

Every generated arm draws row r's noise from the evaluation stream of `rl/seeding.py`, so arms differ only in the
conditioning. Rows can share noise on purpose (`noise_rows`): the diversity probe gives all users of an item the same
noise, so whatever differs between their covers comes from the user.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from icg_rl.rl.sampling import sample_trajectory
from icg_rl.rl.seeding import EVALUATION, row_generators

ARMS = ("reference", "base", "icg_user_zeroed", "icg")
GENERATED = ("base", "icg_user_zeroed", "icg")


@contextmanager
def base_model(pipe):
    """The pipeline as the base model it wraps: adapter gate 0 (ICG tokens ≡ 0) and UNet LoRA off, restored after."""
    gate = pipe.icg.adapter.projection.gate
    saved = gate.detach().clone()
    lora = any("lora_" in n for n, _ in pipe.denoiser.named_parameters())
    with torch.no_grad():
        gate.zero_()
    if lora:
        pipe.denoiser.disable_adapters()
    try:
        yield pipe
    finally:
        with torch.no_grad():
            gate.copy_(saved)
        if lora:
            pipe.denoiser.enable_adapters()


def generate(pipe, batch: dict, arm: str, *, steps: int, eta: float, guidance_scale: float, seed: int,
             batch_size: int, noise_rows: np.ndarray | None = None,
             sde_window: tuple[int, int] | None = None) -> np.ndarray:
    """One generated arm for every row of a stream batch -> uint8 [N, H, W, 3]. `sde_window`: the steps that draw
    noise, as training's rollouts sample (`rl/sampling.rollout_window`); None: every step at `eta`."""
    if arm not in GENERATED:
        raise ValueError(f"arm: {arm!r} is not generated; choose one of {GENERATED}")
    n = len(batch["title"])
    noise_rows = np.arange(n) if noise_rows is None else np.asarray(noise_rows)
    out = []
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        chunk = {k: v[rows] for k, v in batch.items()}
        chunk.setdefault("group_key", np.asarray([str(i) for i in range(start, start + len(chunk["title"]))]))
        noise = row_generators(seed, 0, noise_rows[rows].tolist(), EVALUATION)
        if arm == "base":
            with base_model(pipe):
                trajectory, _ = sample_trajectory(pipe, chunk, steps, eta, guidance_scale, noise,
                                                  sde_window=sde_window)
        else:
            trajectory, _ = sample_trajectory(pipe, chunk, steps, eta, guidance_scale, noise,
                                              zero_user=arm == "icg_user_zeroed", sde_window=sde_window)
        out.append(trajectory.images)
    return np.concatenate(out)


def all_arms(pipe, batch: dict, **kwargs) -> dict[str, np.ndarray]:
    """{arm: uint8 [N, H, W, 3]} for the four arms (reference covers resized as the batch holds them)."""
    arms = {"reference": np.asarray(np.stack(list(batch["reference_image"])), dtype=np.uint8)}
    for arm in GENERATED:
        arms[arm] = generate(pipe, batch, arm, **kwargs)
    return arms
