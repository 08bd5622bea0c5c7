"""Forward-process policy optimization: DiffusionNFT's loss (and AWM's) on the clean samples a rollout made.

No likelihoods and no trajectories: a rollout ships its final latents x₀ (any solver, deterministic allowed); the
rewards of each cover become an optimality probability r ∈ [0, 1]; the learner noises x₀ forward and trains the
denoiser's own regression, pulled toward good covers and pushed from bad ones.

    r                 = ½ + ½ · clip(A / clip, −1, 1)           A: the group advantage (std units)
    x_t               = forward noising of x₀ with ε at a drawn t (the scheduler's `add_noise` / the flow's
                        (1 − σ) x₀ + σ ε)
    y                 = the regression target of the base: ε (ε-prediction), v = α ε − σ x₀ (v-prediction) or
                        v = ε − x₀ (flow matching)
    f_old, f_θ        = the denoiser's output at x_t with the sampling policy's weights and the current ones
    f₊ = (1 − β) f_old + β f_θ        the implicit positive policy
    f₋ = (1 + β) f_old − β f_θ        the implicit negative policy
    L_NFT             = r ‖f₊ − y‖² + (1 − r) ‖f₋ − y‖²        (mean over latent elements, then samples, draws)
    L_AWM             = (2r − 1) ‖f_θ − y‖²                    (advantage-weighted denoising)

Why f₊/f₋: a good cover (r = 1) trains the positive mixture to reproduce it, a bad one (r = 0) trains the negative
mixture to; both mixtures share f_old, so the only thing that moves is f_θ: toward good covers' targets, away from
bad ones', by a step that stays bounded (f₋ reaching y already stops the push). Its gradient at f_θ = f_old (the
first step on a fresh batch) is

    ∇L_NFT = 2β [r (f_θ − y) − (1 − r)(f_θ − y)] ∇f_θ = β (2r − 1) ∇‖f_θ − y‖²,

which is AWM's with weights (2r − 1), scaled by β: the two objectives differ only over several inner steps on
one batch (`algo.nft_inner_steps` > 1), where NFT's f_old (frozen, precomputed) keeps the push bounded and AWM's is
not.

The ε-form of the flow loss. A flow base predicts v = ε − x₀ with x_t = (1 − σ) x₀ + σ ε, so x₀ = ε − v and
x_t = ε − (1 − σ) v, i.e. ε = x_t + (1 − σ) v: for a fixed x_t the ε-prediction is an affine function of the
v-prediction with slope (1 − σ). f₊ and f₋ are mixtures whose weights sum to 1, so the x_t term cancels in
f₊ − y and f₋ − y: with ε-predictions in place of v-predictions every residual is multiplied by (1 − σ), and

    L_NFT^ε(σ) = (1 − σ)² · L_NFT^v(σ).

The same holds for an ε-prediction base against its v-form: they are one objective with a different weight per
noise level, so training ε bases on ε and flow bases on v (their own outputs) is the paper's loss for both;
`tests/rl/test_nft.py` checks the identity on a flow scheduler.
"""

from __future__ import annotations

import numpy as np
import torch

from icg_rl.rl.ddpo import accumulate_gradients
from icg_rl.rl.sampling import predict_noise
from icg_rl.rl.seeding import NFT_DRAWS, group_generators, row_generators
from icg_rl.rl.steps import is_flow


def optimality(advantages: np.ndarray, clip: float) -> np.ndarray:
    """Group advantages (std units) [N] -> optimality probabilities r ∈ [0, 1]: ±`clip` std map to 1 and 0."""
    if clip <= 0:
        raise ValueError(f"algo.nft_clip={clip}; it must be > 0 (the advantage, in std units, that maps to r = 1)")
    return (0.5 + 0.5 * np.clip(np.asarray(advantages, dtype=np.float64) / clip, -1.0, 1.0)).astype(np.float32)


def nft_loss(output: torch.Tensor, old_output: torch.Tensor, target: torch.Tensor, r: torch.Tensor,
             beta: float) -> torch.Tensor:
    """DiffusionNFT: outputs, old outputs, targets [B, ...], r [B] -> per-sample loss [B]."""
    positive = (1 - beta) * old_output + beta * output
    negative = (1 + beta) * old_output - beta * output
    return r * _per_sample(positive - target) + (1 - r) * _per_sample(negative - target)


def awm_loss(output: torch.Tensor, target: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """AWM: the denoising loss weighted by the centred optimality 2r − 1 (the advantage, clipped) -> [B]."""
    return (2 * r - 1) * _per_sample(output - target)


def _per_sample(residual: torch.Tensor) -> torch.Tensor:
    return residual.pow(2).mean(dim=tuple(range(1, residual.ndim)))  # mean over latent elements: (B,)


def draw_noising(scheduler, num_steps: int, x0: torch.Tensor, group_key: np.ndarray, first_row: int, draws: int,
                 shared: bool, seed: int, iteration: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`draws` (timesteps [B], noise [B, C, h, w]) pairs for rows `first_row …` of an iteration's batch. Timesteps
    come uniformly from the sampler's own schedule (`num_steps`): the noise levels the policy denoises at. Every row
    draws from its own generator (`rl/seeding.py`), keyed by its global row, or with `shared` by its group: the
    samples of a group then meet the same (t, ε) — their covers compared at equal noise, only x₀ and the reward
    differ — and the draws do not depend on how the batch is split over learner ranks."""
    scheduler.set_timesteps(num_steps, device=x0.device)
    schedule = scheduler.timesteps.cpu()
    generators = group_generators(seed, iteration, group_key, NFT_DRAWS) if shared else \
        row_generators(seed, iteration, range(first_row, first_row + len(x0)), NFT_DRAWS)
    per_row = [[(schedule[torch.randint(len(schedule), (1,), generator=g)],
                 torch.randn(x0.shape[1:], generator=g, dtype=torch.float32)) for _ in range(draws)]
               for g in generators]  # drawn on the CPU, then moved: the same draws on every device
    return [(torch.cat([row[d][0] for row in per_row]).to(x0.device),
             torch.stack([row[d][1] for row in per_row]).to(x0.device, x0.dtype)) for d in range(draws)]


def noised_and_target(scheduler, x0: torch.Tensor, noise: torch.Tensor,
                      timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, the base's regression target) for clean latents x₀ [B, ...] at per-row timesteps [B]."""
    if is_flow(scheduler):
        sigma = flow_sigmas(scheduler, timesteps).to(x0.dtype).view(-1, *[1] * (x0.ndim - 1))
        return (1 - sigma) * x0 + sigma * noise, noise - x0
    x_t = scheduler.add_noise(x0, noise, timesteps)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return x_t, noise
    if kind == "v_prediction":
        return x_t, scheduler.get_velocity(x0, noise, timesteps)
    raise ValueError(f"algo.name=nft: the scheduler's prediction_type {kind!r} is not supported (epsilon, "
                     f"v_prediction, or a flow-matching scheduler)")


def flow_sigmas(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """σ of each timestep in the flow scheduler's current schedule (its `sigmas` follow `timesteps` in order)."""
    schedule = scheduler.timesteps.to(timesteps.device)
    index = (schedule[None, :] - timesteps[:, None]).abs().argmin(dim=1)  # (B,)
    return scheduler.sigmas.to(timesteps.device)[index]


def nft_gradients(pipe, samples, r: torch.Tensor, algo, draws: list[tuple[torch.Tensor, torch.Tensor]],
                  old_outputs: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor | None], dict]:
    """The NFT (or AWM) gradient of a batch of clean samples, one entry per `pipe.trainable_parameters()`.

    `samples` is a Trajectory whose `latents[:, -1]` are the covers' x₀; `draws` from `draw_noising`;
    `old_outputs` the sampling policy's outputs at those draws (`old_predictions`) — None on the first inner step,
    where they equal the current outputs. As in `ddpo_gradients`, the condition is computed once with gradient and
    each draw's loss is differentiated w.r.t. a detached copy of it (one denoiser graph at a time in memory)."""
    params = pipe.trainable_parameters()
    x0 = samples.latents[:, -1]
    features = pipe.encode_condition_inputs(samples.condition)  # (B, K, d), with grad
    leaf = features.detach().requires_grad_(True)
    grads: list[torch.Tensor | None] = [None] * len(params)
    leaf_grad = torch.zeros_like(leaf)
    totals = {"loss/nft": 0.0, "stats/denoise_mse": 0.0}
    for j, (timesteps, noise) in enumerate(draws):
        x_t, target = noised_and_target(pipe.scheduler, x0, noise, timesteps)
        output = predict_noise(pipe, x_t, timesteps, samples.text, leaf, guidance_scale=1.0)  # CFG-free training
        if algo.nft_objective == "awm":
            loss = awm_loss(output, target, r).mean()
        else:
            old = output.detach() if old_outputs is None else old_outputs[j]
            loss = nft_loss(output, old, target, r, algo.nft_beta).mean()
        step = torch.autograd.grad(loss / len(draws), [leaf, *params], allow_unused=True)
        leaf_grad += step[0]
        grads = accumulate_gradients(grads, step[1:])
        totals["loss/nft"] += float(loss.detach()) / len(draws)
        totals["stats/denoise_mse"] += float(_per_sample(output.detach() - target).mean()) / len(draws)
    grads = accumulate_gradients(grads, torch.autograd.grad(features, params, grad_outputs=leaf_grad,
                                                            allow_unused=True))
    return grads, totals


@torch.no_grad()
def old_predictions(pipe, samples, draws: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """The current (= sampling) policy's outputs at each draw, frozen before the first inner step."""
    features = pipe.encode_condition_inputs(samples.condition)
    x0 = samples.latents[:, -1]
    outputs = []
    for timesteps, noise in draws:
        x_t, _ = noised_and_target(pipe.scheduler, x0, noise, timesteps)
        outputs.append(predict_noise(pipe, x_t, timesteps, samples.text, features, guidance_scale=1.0))
    return outputs


def nft_update(pipe, samples, r: torch.Tensor, algo, seed: int, iteration: int, first_row: int,
               apply, extra_term=None) -> dict[str, float]:
    """One batch of NFT on rows `first_row …` of the iteration's batch: draw the (t, ε) pairs, freeze the sampling
    policy's outputs when there are several inner steps, then `algo.nft_inner_steps` × (gradients, plus
    `extra_term()`'s when given → `apply(grads)`, which takes the optimizer step and returns the gradient norm).
    The in-process trainer's
    `apply` is AdamW, the learner's a DeepSpeed engine step."""
    draws = draw_noising(pipe.scheduler, algo.num_inference_steps, samples.latents[:, -1], samples.group_key,
                         first_row, algo.nft_draws, algo.nft_shared_draws, seed, iteration)
    old = old_predictions(pipe, samples, draws) if algo.nft_inner_steps > 1 else None
    metrics: dict[str, float] = {}
    for inner in range(algo.nft_inner_steps):
        grads, step_metrics = nft_gradients(pipe, samples, r, algo, draws, old)
        if extra_term is not None:  # the learned critic's gradient (rl/critic.py), at the same weights
            more, extra_metrics = extra_term()
            grads, step_metrics = accumulate_gradients(grads, more), step_metrics | extra_metrics
        step_metrics["stats/grad_norm"] = apply(grads)
        metrics = step_metrics if inner == 0 else metrics  # the first step's loss is the batch's (f_θ = f_old)
        metrics["stats/grad_norm"] = step_metrics["stats/grad_norm"]
    metrics["stats/optimality_mean"] = float(r.float().mean())
    return metrics
