"""Flow-GRPO's stochastic step for flow-matching (rectified-flow) models and its log-probability — the counterpart of
`rl/logprob.py`'s DDIM step for SD3-family bases (`FlowMatchEulerDiscreteScheduler`).

Notation (diffusers' flow-matching convention; time runs from t = 1, pure noise, down to t = 0, data):

    x_t = (1 − t) x_0 + t ε                      the interpolation the model was trained on, t = σ = timestep / T
    v = ε − x_0                                  what the transformer predicts (its velocity)
    x_0 = x_t − t v,   ε = x_t + (1 − t) v       so E[ε | x_t] and the score follow from v:
    ∇ log p_t(x_t) = −E[ε | x_t] / t = −(x_t + (1 − t) v) / t

The sampler's ODE dx = v dt has a family of SDEs with the same marginals p_t (add noise σ_t dw and correct the drift
by −σ_t²/2 ∇ log p_t, time running backwards):

    dx = [v + σ_t² / (2t) · (x + (1 − t) v)] dt + σ_t dw,      σ_t = η · sqrt(t / (1 − t))

η is `noise_level`. At t = 1 the ratio t / (1 − t) is infinite, so the first step uses the next grid point's t in the
denominator. One Euler–Maruyama step from t to t' < t (Δt = t' − t < 0):

    mean = x (1 + σ_t² Δt / (2t)) + v (1 + σ_t² (1 − t) / (2t)) Δt        (η → 0: x + v Δt, the scheduler's own step)
    x'   = mean + σ_t sqrt(−Δt) · z,   z ~ N(0, I)
    log π(x' | x) = mean over the non-batch dimensions of log N(x'; mean, σ_t² (−Δt))

in fp32, the same reduction as the DDIM log-probability, so GRPO's ratios and clipping carry over unchanged.
"""

from __future__ import annotations

import math

import torch
from diffusers.utils.torch_utils import randn_tensor


def step_sigmas(scheduler, timestep, batch: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: (t, t', t in the noise scale's denominator) for `timestep` (a scalar or one per row) on the
    scheduler's current grid; shapes (batch,)."""
    steps = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
    if steps.numel() == 1:
        steps = steps.expand(batch)
    if steps.numel() != batch:
        raise ValueError(f"timestep: expected a scalar or {batch} values (one per row), got {steps.numel()}")
    grid = scheduler.timesteps.to(torch.float32).cpu()
    index = torch.tensor([scheduler.index_for_timestep(t, grid) for t in steps])
    sigmas = scheduler.sigmas.to(torch.float32).cpu()
    t, t_next = sigmas[index], sigmas[index + 1]
    denominator_t = torch.where(t >= 1.0, sigmas[1], t)  # t = 1 would divide by zero: the next grid point's t
    return t.to(device), t_next.to(device), denominator_t.to(device)


def sde_step_distribution(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor,
                          noise_level: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (mean [B, C, h, w], std [B, 1, 1, 1]) in fp32: the Gaussian one reverse-SDE step samples from."""
    if noise_level <= 0:
        raise ValueError(f"noise_level: must be > 0 for a stochastic step with a log-probability, got {noise_level} "
                         f"(outside the SDE window sample with the scheduler's own ODE step)")
    batch = sample.shape[0]
    x, v = sample.float(), model_output.float()
    t, t_next, t_denominator = step_sigmas(scheduler, timestep, batch, x.device)
    shape = (batch,) + (1,) * (x.ndim - 1)
    dt = (t_next - t).view(shape)
    sigma = (noise_level * torch.sqrt(t / (1.0 - t_denominator))).view(shape)
    t = t.view(shape)
    mean = x * (1 + sigma ** 2 * dt / (2 * t)) + v * (1 + sigma ** 2 * (1 - t) / (2 * t)) * dt
    return mean, sigma * torch.sqrt(-dt)


def sde_step_with_logprob(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor,
                          noise_level: float = 0.7, prev_sample: torch.Tensor | None = None,
                          generator: torch.Generator | list[torch.Generator] | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One reverse-SDE step (module docstring) -> (prev_sample, log_prob (B,), prev_sample_mean, step std (B,)).

    With `prev_sample` given its log-probability under this step is returned (PPO's recomputation); otherwise the
    step draws one with `generator` (one per row for per-row noise streams)."""
    dtype, batch = sample.dtype, sample.shape[0]
    mean, std = sde_step_distribution(scheduler, model_output, timestep, sample, noise_level)
    if prev_sample is None:
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
        prev_sample = (mean + std * noise).to(dtype)
    log_prob = (-((prev_sample.float() - mean) ** 2) / (2 * std ** 2) - torch.log(std)
                - 0.5 * math.log(2 * math.pi))
    return prev_sample, log_prob.mean(dim=tuple(range(1, mean.ndim))), mean.to(dtype), std.reshape(batch)


def ode_step(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
    """The deterministic Euler step x + v (t' − t) of the flow ODE (the scheduler's own step, without its step
    counter: usable at any grid timestep, per row), in the sample's dtype."""
    t, t_next, _ = step_sigmas(scheduler, timestep, sample.shape[0], sample.device)
    dt = (t_next - t).view((-1,) + (1,) * (sample.ndim - 1))
    return (sample.float() + model_output.float() * dt).to(sample.dtype)
