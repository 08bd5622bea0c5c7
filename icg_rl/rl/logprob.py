"""One DDIM step with the log-density of the step it took (DDPO's per-step policy).

Notation (variable → DDIM paper, eq. 12 and 16):
    model_output       ε_θ(x_t, t) (or x_0 / v, per the scheduler's prediction_type)
    alpha_prod_t       ᾱ_t            alpha_prod_t_prev  ᾱ_{t-1}
    pred_original      x̂_0           pred_epsilon       ε̂
    std_dev_t          σ_t(η) = η · sqrt((1 − ᾱ_{t−1}) / (1 − ᾱ_t)) · sqrt(1 − ᾱ_t / ᾱ_{t−1})
    prev_mean          μ_t = sqrt(ᾱ_{t−1}) x̂_0 + sqrt(1 − ᾱ_{t−1} − σ_t²) ε̂
    prev_sample        x_{t−1} ~ N(μ_t, σ_t² I)

Same mean, variance and noise draw as `diffusers.DDIMScheduler.step` (prev timestep = t − T_train / n_steps, the
rule the scheduler applies for every timestep spacing), with `timestep` a Python int or a tensor [B] of per-sample
timesteps (training revisits steps in shuffled order). The log-prob is the exact Gaussian density of `prev_sample`,
reduced over latent dims by the mean (ddpo-pytorch/trl, so their clip ranges carry over) or the sum (the density).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from diffusers.utils.torch_utils import randn_tensor


def _schedule_at(scheduler, timestep, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ᾱ_t and ᾱ_{t−1} at int or per-sample timesteps, shaped to broadcast over `sample` [B, C, h, w]."""
    alphas = scheduler.alphas_cumprod.to(sample.device)
    t = torch.as_tensor(timestep, device=sample.device).long()  # () or (B,)
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    final = torch.as_tensor(scheduler.final_alpha_cumprod, device=sample.device, dtype=alphas.dtype)
    alpha_prod_prev = torch.where(prev_t >= 0, alphas[prev_t.clamp(min=0)], final)  # past the end: ᾱ_final
    shape = (-1, *([1] * (sample.ndim - 1)))
    return alphas[t].reshape(shape).to(sample.dtype), alpha_prod_prev.reshape(shape).to(sample.dtype)


def ddim_step_distribution(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float,
                           use_clipped_model_output: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (μ_t [B, C, h, w], σ_t [B or 1, 1, 1, 1]): the Gaussian the scheduler's stochastic step samples from."""
    if scheduler.num_inference_steps is None:
        raise ValueError("scheduler: call set_timesteps(num_inference_steps) before stepping")
    if eta <= 0.0:
        raise ValueError(f"eta: got {eta}; a log-prob needs a stochastic step (eta > 0), DDPO uses eta = 1")
    cfg = scheduler.config
    # 1. ᾱ at t and at the previous timestep (B or 1, 1, 1, 1)
    alpha_prod_t, alpha_prod_prev = _schedule_at(scheduler, timestep, sample)
    beta_prod_t = 1 - alpha_prod_t
    # 2. x̂_0 and ε̂ from the model output (eq. 12)
    if cfg.prediction_type == "epsilon":
        pred_original = (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5
        pred_epsilon = model_output
    elif cfg.prediction_type == "sample":
        pred_original = model_output
        pred_epsilon = (sample - alpha_prod_t ** 0.5 * pred_original) / beta_prod_t ** 0.5
    elif cfg.prediction_type == "v_prediction":
        pred_original = alpha_prod_t ** 0.5 * sample - beta_prod_t ** 0.5 * model_output
        pred_epsilon = alpha_prod_t ** 0.5 * model_output + beta_prod_t ** 0.5 * sample
    else:
        raise ValueError(f"scheduler.config.prediction_type: got {cfg.prediction_type!r}; allowed epsilon, sample, "
                         f"v_prediction")
    # 3. clip x̂_0 as the scheduler would
    if cfg.thresholding:
        pred_original = scheduler._threshold_sample(pred_original)
    elif cfg.clip_sample:
        pred_original = pred_original.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
    # 4. σ_t (eq. 16)
    variance = (1 - alpha_prod_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_prev)
    std_dev_t = eta * variance ** 0.5  # (B or 1, 1, 1, 1)
    if use_clipped_model_output:
        pred_epsilon = (sample - alpha_prod_t ** 0.5 * pred_original) / beta_prod_t ** 0.5
    # 5. μ_t (eq. 12 without the noise term)
    prev_mean = alpha_prod_prev ** 0.5 * pred_original + (1 - alpha_prod_prev - std_dev_t**2) ** 0.5 * pred_epsilon
    return prev_mean, std_dev_t


def ddim_step_with_logprob(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
                           use_clipped_model_output: bool = False, generator=None,
                           prev_sample: torch.Tensor | None = None,
                           reduce: Literal["mean", "sum"] = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """-> (prev_sample [B, C, h, w], log_prob [B]). Pass `prev_sample` to score a recorded step instead of
    sampling one (the PPO ratio's numerator)."""
    prev_mean, std_dev_t = ddim_step_distribution(scheduler, model_output, timestep, sample, eta,
                                                  use_clipped_model_output)
    if prev_sample is None:
        noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
        prev_sample = prev_mean + std_dev_t * noise
    return prev_sample.type(sample.dtype), gaussian_log_prob(prev_sample.detach(), prev_mean, std_dev_t, reduce)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                      reduce: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """log N(x; mean, std²) per element, reduced over all but the batch dim: [B, C, h, w] -> [B]."""
    log_prob = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)  # (B, C, h, w)
    dims = tuple(range(1, log_prob.ndim))
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce: got {reduce!r}; allowed 'mean', 'sum'")
    return log_prob.mean(dim=dims) if reduce == "mean" else log_prob.sum(dim=dims)  # over (C, h, w)
