"""DDPO's loss: PPO-clip on per-step log-probs, with an optional KL to the reference (adapter-off) policy.

Per sample i and recorded step t, with advantage A_i clipped to ±adv_clip:
    ratio      = exp(log π_θ(x_{t−1} | x_t) − log π_old(x_{t−1} | x_t))
    unclipped  = −A_i · ratio
    clipped    = −A_i · clip(ratio, 1 − ε, 1 + ε)
    policy     = mean(max(unclipped, clipped))
    kl         = mean(‖μ_θ − μ_ref‖² / (2 σ_t²))   — the closed-form KL of two Gaussians with the same σ_t
                                                    (per latent element, the same reduction as the log-prob)
    loss       = policy + kl_coef · kl
"""

from __future__ import annotations

import torch

from icg_rl.rl.sampling import predict_noise, stochastic_steps, uncond_text
from icg_rl.rl.steps import step_distribution, step_with_logprob


def ppo_clip_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float,
                  adv_clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """log_prob, old_log_prob, advantages: [B] -> (loss, {'approx_kl', 'clip_fraction', 'ratio'})."""
    advantages = advantages.clamp(-adv_clip, adv_clip)
    ratio = torch.exp(log_prob - old_log_prob)  # (B,)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()  # mean over samples
    with torch.no_grad():
        stats = {
            "approx_kl": 0.5 * ((log_prob - old_log_prob) ** 2).mean(),
            "clip_fraction": ((ratio - 1.0).abs() > clip_range).float().mean(),
            "ratio": ratio.mean(),
        }
    return loss, stats


def gaussian_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, σ²) ‖ N(ref_mean, σ²)) per sample, averaged over latent dims: [B, C, h, w] -> [B]."""
    per_element = (mean - ref_mean) ** 2 / (2 * std**2)  # (B, C, h, w)
    return per_element.mean(dim=tuple(range(1, per_element.ndim)))  # mean over (C, h, w)


def ddpo_gradients(pipe, trajectory, advantages: torch.Tensor, algo, generator: torch.Generator
                   ) -> tuple[list[torch.Tensor | None], dict[str, float]]:
    """The DDPO gradient of a trajectory batch, one entry per `pipe.trainable_parameters()` (None = unused).

    PPO-clip on a random `timestep_fraction` of the recorded steps. The condition (MLLM meta tokens → user
    refinement) is recomputed once with the current weights; each step's loss is differentiated w.r.t. a detached
    copy of it and the UNet-side parameters (one step's UNet graph at a time lives in memory), and the accumulated
    dL/d(condition) is pushed through the condition encoder once at the end. Gradients are returned, not stored
    in `.grad`: a plain optimizer (`ddpo_update`) and a DeepSpeed engine (`gradient_surrogate`) apply them alike."""
    params = pipe.trainable_parameters()
    steps = trajectory.log_probs.shape[1]
    window = torch.as_tensor(stochastic_steps(steps, algo.sde_window))  # the steps that drew noise
    chosen = window[torch.randperm(len(window), generator=generator)][: max(1, round(algo.timestep_fraction
                                                                                       * len(window)))]
    features = pipe.encode_condition_inputs(trajectory.condition)  # (B, K, d), with grad
    leaf = features.detach().requires_grad_(True)
    uncond = uncond_text(pipe, algo.guidance_scale)
    pipe.scheduler.set_timesteps(steps, device=leaf.device)
    grads: list[torch.Tensor | None] = [None] * len(params)
    leaf_grad = torch.zeros_like(leaf)
    totals: dict[str, float] = {"loss/policy": 0.0, "loss/kl": 0.0, "stats/approx_kl": 0.0, "stats/clip_fraction": 0.0}
    for j in chosen.tolist():
        t, latents, next_latents = trajectory.timesteps[j], trajectory.latents[:, j], trajectory.latents[:, j + 1]
        noise = predict_noise(pipe, latents, t, trajectory.text, leaf, algo.guidance_scale, uncond)
        _, log_prob = step_with_logprob(pipe.scheduler, noise, t, latents, algo.eta, prev_sample=next_latents)
        loss, stats = ppo_clip_loss(log_prob, trajectory.log_probs[:, j], advantages, algo.clip_range, algo.adv_clip)
        if algo.kl_coef > 0:
            kl = step_kl(pipe, latents, t, trajectory.text, leaf, noise, algo, uncond)
            loss = loss + algo.kl_coef * kl
            totals["loss/kl"] += float(kl.detach()) / len(chosen)
        step_grads = torch.autograd.grad(loss / len(chosen), [leaf, *params], allow_unused=True)
        leaf_grad += step_grads[0]
        grads = accumulate_gradients(grads, step_grads[1:])
        totals["loss/policy"] += float(loss.detach()) / len(chosen)
        totals["stats/approx_kl"] += float(stats["approx_kl"]) / len(chosen)
        totals["stats/clip_fraction"] += float(stats["clip_fraction"]) / len(chosen)
    # the accumulated dL/d(condition) into meta tokens, user encoder, refiner
    grads = accumulate_gradients(grads, torch.autograd.grad(features, params, grad_outputs=leaf_grad,
                                                            allow_unused=True))
    return grads, totals


def accumulate_gradients(total: list, new) -> list:
    """Element-wise sum of two per-parameter gradient lists (None = no gradient yet / unused)."""
    return [n if t is None else (t if n is None else t + n) for t, n in zip(total, new)]


def gradient_surrogate(params, grads) -> torch.Tensor:
    """A scalar whose gradient w.r.t. each parameter is exactly the given gradient: Σ_p ⟨p, g_p⟩ with g constant.
    An engine that owns the backward pass (DeepSpeed's ZeRO hooks reduce gradients as autograd produces them)
    runs one `engine.backward(surrogate)` instead of our per-step loop."""
    terms = [(p * g.detach()).sum() for p, g in zip(params, grads) if g is not None]
    if not terms:
        raise RuntimeError("gradient_surrogate: no parameter received a gradient")
    return torch.stack(terms).sum()


def ddpo_update(pipe, trajectory, advantages: torch.Tensor, optimizer, algo,
                generator: torch.Generator) -> dict[str, float]:
    """One in-process DDPO update: `algo.ppo_epochs` × (gradients, global-norm clip, optimizer step). The loss is
    the first epoch's (ratio 1); the trust-region statistics are the last epoch's."""
    params, totals = pipe.trainable_parameters(), {}
    for _ in range(algo.ppo_epochs):
        grads, step = ddpo_gradients(pipe, trajectory, advantages, algo, generator)
        totals = step if not totals else totals | {k: v for k, v in step.items() if k.startswith("stats/")}
        totals["stats/grad_norm"] = apply_gradients(params, grads, optimizer, algo.max_grad_norm)
    return totals


def apply_gradients(params, grads, optimizer, max_grad_norm: float) -> float:
    """An in-process optimizer step with the given gradients, global-norm clipped; returns the norm before it."""
    for p, g in zip(params, grads):
        p.grad = g if g is not None else torch.zeros_like(p)
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def step_kl(pipe, latents, t, text, features, noise, algo, uncond) -> torch.Tensor:
    """KL of this step's Gaussian to the reference policy's: the same model with the adapter switched off."""
    with torch.no_grad(), pipe.icg.adapter.disabled():
        ref_noise = predict_noise(pipe, latents, t, text, features, algo.guidance_scale, uncond)
        ref_mean, _ = step_distribution(pipe.scheduler, ref_noise, t, latents, algo.eta)
    mean, std = step_distribution(pipe.scheduler, noise, t, latents, algo.eta)
    return gaussian_kl(mean, ref_mean, std).mean()  # mean over samples
