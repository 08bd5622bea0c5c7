"""One policy step for either kind of base: DDIM (SD1.5/SDXL, ε-prediction) or the flow SDE (SD3, velocity).

    step_distribution(scheduler, output, t, x, eta)           -> (mean, std): the step's Gaussian
    step_with_logprob(scheduler, output, t, x, eta, ...)      -> (x', log π(x' | x)): sample or score a step
    deterministic_step(scheduler, output, t, x)               -> x': the noise-free step (outside the SDE window)

`eta` is DDIM's η for DDIM schedulers and the noise level η of Flow-GRPO's SDE for flow-matching schedulers
(`rl/flow_logprob.py`): the same knob, "how much noise a step draws", so GRPO, DDPO and reward backprop run on
either family unchanged.
"""

from __future__ import annotations

import torch

from icg_rl.rl.flow_logprob import ode_step, sde_step_distribution, sde_step_with_logprob
from icg_rl.rl.logprob import ddim_step_distribution, ddim_step_with_logprob


def is_flow(scheduler) -> bool:
    """Flow-matching schedulers (FlowMatchEulerDiscreteScheduler and kin) step along a velocity."""
    return "FlowMatch" in type(scheduler).__name__


def initial_sigma(scheduler) -> float:
    """The scale of x_T: the scheduler's `init_noise_sigma` (flow-matching schedulers start at σ = 1 and have none)."""
    return getattr(scheduler, "init_noise_sigma", 1.0)


def step_distribution(scheduler, model_output, timestep, sample, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    if is_flow(scheduler):
        return sde_step_distribution(scheduler, model_output, timestep, sample, eta)
    return ddim_step_distribution(scheduler, model_output, timestep, sample, eta)


def step_with_logprob(scheduler, model_output, timestep, sample, eta: float, generator=None,
                      prev_sample: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (prev_sample [B, C, h, w], log_prob [B], mean over latent elements). With `prev_sample` the recorded step
    is scored instead of drawn."""
    if is_flow(scheduler):
        prev, log_prob, _, _ = sde_step_with_logprob(scheduler, model_output, timestep, sample, noise_level=eta,
                                                     prev_sample=prev_sample, generator=generator)
        return prev, log_prob
    return ddim_step_with_logprob(scheduler, model_output, timestep, sample, eta=eta, generator=generator,
                                  prev_sample=prev_sample)


def deterministic_step(scheduler, model_output, timestep, sample) -> torch.Tensor:
    if is_flow(scheduler):
        return ode_step(scheduler, model_output, timestep, sample)
    return scheduler.step(model_output, timestep, sample, eta=0.0).prev_sample


def sampling_step(scheduler, model_output, timestep, sample, eta: float, generator=None) -> torch.Tensor:
    """The step reward backprop differentiates through: noise drawn with `eta` > 0 (reparameterised: the gradient
    flows through the mean), the deterministic step at `eta` = 0."""
    if eta <= 0:
        return deterministic_step(scheduler, model_output, timestep, sample)
    if is_flow(scheduler):
        return step_with_logprob(scheduler, model_output, timestep, sample, eta, generator)[0]
    return scheduler.step(model_output, timestep, sample, eta=eta, generator=generator).prev_sample
