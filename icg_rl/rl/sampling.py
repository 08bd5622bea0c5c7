"""Sampling the ICG policy step by step, recording what DDPO/GRPO need (the rollout's inner loop), for every base
family: the denoiser call goes through the pipeline's family hooks (`encode_text`, `denoiser_output`) and each step
through `rl/steps.py` (DDIM, or the flow SDE on flow-matching bases).

The denoiser call is the pipeline's own (text prompt + ICG tokens through the adapter, optional CFG with the
unconditional branch seeing no ICG tokens), so a trajectory is exactly what `ICGPipeline.__call__` would draw with
eta > 0 — with each step's log-prob recorded.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from icg_rl.models.images import to_uint8
from icg_rl.models.user import ICGUser
from icg_rl.rl.steps import deterministic_step, initial_sigma, step_with_logprob
from icg_rl.rl.trajectory import Trajectory

# What reward models may read beside the images, shipped with every rollout (in process and to reward actors)
REWARD_INPUTS = ("title", "user_id", "item_id", "history", "reference_image", "has_reference")


def pipeline_inputs(batch: dict) -> tuple[list[str], list, list[ICGUser]]:
    """A stream batch as the pipeline's (titles, reference images or None, users)."""
    titles = [str(t) for t in batch["title"]]
    refs = [img if has else None for img, has in zip(batch["reference_image"], batch["has_reference"])]
    users = [ICGUser(str(u) or None, [str(i) for i in h if i]) for u, h in zip(batch["user_id"], batch["history"])]
    return titles, refs, users


def encode_text(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frozen text condition: (prompt_embeds [B, L, D], pooled [B, P] or None) — the pipeline family's own."""
    return pipe.encode_text(prompts)


def uncond_text(pipe, guidance_scale: float):
    """The unconditional branch's text condition under CFG (what the family's stock pipeline uses), else None."""
    return pipe.uncond_text() if guidance_scale > 1.0 else None


def predict_noise(pipe, latents, t, text, features, guidance_scale: float, uncond=None):
    """The denoiser's prediction (ε, or the velocity of a flow-matching base) for latents [B, C, h, w] at timestep
    t; `text` = (prompt_embeds [B, L, D], pooled [B, P] or None); CFG when guidance_scale > 1."""
    embeds, pooled = text
    if guidance_scale > 1.0:
        latents_in = torch.cat([latents, latents])  # (2B, C, h, w): [uncond; cond]
        embeds = torch.cat([uncond[0].expand_as(embeds), embeds])
        pooled = None if pooled is None else torch.cat([uncond[1].expand_as(pooled), pooled])
        features = torch.cat([torch.zeros_like(features), features])  # the unconditional branch sees no ICG tokens
    else:
        latents_in = latents
    out = pipe.denoiser_output(latents_in, t, embeds, pooled, features)
    if guidance_scale > 1.0:
        uncond_out, cond = out.chunk(2)
        out = uncond_out + guidance_scale * (cond - uncond_out)
    return out


def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> float images [B, 3, H, W] in [0, 1] (differentiable). SD3-family VAEs also shift the latents."""
    config = pipe.vae.config
    images = pipe.vae.decode(latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)).sample
    return (images / 2 + 0.5).clamp(0, 1)


def rollout_window(algo) -> tuple[int, int] | None:
    """The steps a rollout samples with noise: `algo.sde_window` for the policy gradients; for nft every step at
    `algo.eta` > 0, none at η = 0 (deterministic DDIM / the flow ODE: its log-probs are never used)."""
    if algo.name == "nft":
        return None if algo.eta > 0 else (0, 0)
    return algo.sde_window


def kept_steps(algo) -> int | None:
    """The tail of the chain a rollout ships: all of it for the policy gradients (their learner rescores every step);
    for nft the clean latents, and with a critic climbed through the sampler its last `nft_critic_steps` too."""
    if algo.name != "nft":
        return None
    return algo.nft_critic_steps if algo.nft_critic_weight > 0 else 0


def stochastic_steps(num_steps: int, sde_window: tuple[int, int] | None) -> range:
    """The step indices that sample with noise (and carry a log-prob): `algo.sde_window`, or all of them."""
    return range(num_steps) if sde_window is None else range(*sde_window)


@torch.no_grad()
def sample_trajectory(pipe, batch: dict, num_steps: int, eta: float, guidance_scale: float,
                      generator, policy_version: int = 0, zero_user: bool = False,
                      sde_window: tuple[int, int] | None = None,
                      start_generator=None, keep_steps: int | None = None) -> tuple[Trajectory, torch.Tensor]:
    """One rollout of a stream batch (title, reference_image, has_reference, user_id, history, group_key) ->
    (Trajectory, float images [B, 3, H, W]). `generator`: one torch.Generator, or one per row (`rl/seeding.py`:
    rows then draw the same noise however the batch is split). With `sde_window` only those steps draw noise;
    the others are deterministic DDIM steps (log-prob 0: they are never trained), so a sample's reward depends on
    its initial noise and the window's draws only — the credit a policy gradient assigns lands in the window.
    `start_generator` (one generator, or one per row) draws the initial noise x_T instead of `generator`: with
    `rl/seeding.group_generators` every sample of a group starts from the same x_T (DanceGRPO), so the rewards
    inside a group differ only by what the policy's own steps drew. `keep_steps=k` (forward-process methods,
    `rl/nft.py`): the trajectory holds only the chain's last k steps, x_k … x₀ ([B, k+1, C, h, w]; k = 0: the clean
    latents alone), with their timesteps and log-probs; None keeps every step."""
    titles, refs, users = pipeline_inputs(batch)
    condition = pipe.prepare_condition_inputs(titles, refs, users)
    features = pipe.encode_condition_inputs(condition, zero_user)  # (B, K, d)
    text = encode_text(pipe, pipe.prompts(titles))  # (B, L, D), pooled (B, P) or None
    uncond = uncond_text(pipe, guidance_scale)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_steps, device=features.device)
    # CPU generators draw on the CPU, then the noise moves to the model's device (same noise on every device)
    latents = randn_tensor(pipe.latent_shape(len(titles)),
                           generator=generator if start_generator is None else start_generator,
                           device=features.device, dtype=text[0].dtype) * initial_sigma(scheduler)
    chain, log_probs, stochastic = [latents], [], stochastic_steps(num_steps, sde_window)
    for i, t in enumerate(scheduler.timesteps):
        noise = predict_noise(pipe, latents, t, text, features, guidance_scale, uncond)
        if i in stochastic:
            latents, log_prob = step_with_logprob(scheduler, noise, t, latents, eta, generator=generator)
        else:
            latents = deterministic_step(scheduler, noise, t, latents)
            log_prob = torch.zeros(len(latents), device=latents.device)
        chain.append(latents)
        log_probs.append(log_prob.float())  # fp32 whatever the model's dtype (the flow step's already is)
    images = decode(pipe, latents)
    pixels = to_uint8(images)
    kept = len(log_probs) if keep_steps is None else keep_steps  # the tail of the chain a learner needs
    log_probs = torch.stack(log_probs, dim=1)[:, len(log_probs) - kept:] if kept \
        else torch.zeros(len(latents), 0, device=latents.device)
    trajectory = Trajectory(
        latents=torch.stack(chain[len(chain) - kept - 1:], dim=1),  # (B, k+1, C, h, w): x_k … x₀
        log_probs=log_probs,  # (B, k)
        timesteps=scheduler.timesteps[len(scheduler.timesteps) - kept:].clone(),
        condition=condition, prompt_embeds=text[0], pooled_embeds=text[1],
        images=pixels, group_key=np.asarray(batch["group_key"]).astype(str), policy_version=policy_version,
        extra={k: np.asarray(batch[k]) for k in REWARD_INPUTS if k in batch})
    return trajectory, images
