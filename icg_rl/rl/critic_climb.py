"""How the policy climbs the learned critic (rl/critic.py): the covers it scores are made with the current weights,
through the sampler's own last K steps from the rollout's x_K (DRaFT-K, `algo.nft_critic_steps`) or one x̂₀ step
from a cover noised forward to a late step, and the loss is −λ · the critic's mean score (plus the floors' price).
`critic_term` is an iteration's critic work on a learner rank: fit the critic on the scored batch, then hand the
NFT update a callable for the climb's gradients.
"""

from __future__ import annotations

import torch

from icg_rl.rl.backprop import denoise_suffix
from icg_rl.rl.critic import CoverCritic, cover_features
from icg_rl.rl.nft import flow_sigmas, noised_and_target
from icg_rl.rl.sampling import decode, predict_noise
from icg_rl.rl.steps import is_flow


def predicted_clean(scheduler, x_t: torch.Tensor, output: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """x̂₀ from the denoiser's output at x_t (ε, v or the flow's velocity)."""
    if is_flow(scheduler):
        sigma = flow_sigmas(scheduler, timesteps).to(x_t.dtype).view(-1, *[1] * (x_t.ndim - 1))
        return x_t - sigma * output
    alpha_bar = scheduler.alphas_cumprod.to(x_t.device)[timesteps].to(x_t.dtype).view(-1, *[1] * (x_t.ndim - 1))
    if scheduler.config.prediction_type == "v_prediction":
        return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * output
    return (x_t - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()


def critic_gradients(pipe, samples, critic: CoverCritic, user: torch.Tensor, item: torch.Tensor, weight: float,
                     algo, generator: torch.Generator, floors: torch.Tensor | None = None
                     ) -> tuple[list[torch.Tensor | None], dict[str, float]]:
    """−weight · the critic's mean score of covers made with the current weights -> gradients. The covers:
    with `algo.nft_critic_steps` = K, the sampler's own last K steps replayed from the rollout's x_K (DRaFT-K:
    the path the policy's covers take); with 0, x̂₀ predicted in one step from each cover noised at one of the
    schedule's late steps (the last `nft_critic_late` of them: x̂₀ there is a cover, not a blur the critic never
    saw). `user`, `item`: the rows' `condition_vectors` (fixed for the batch: computed once, not per inner step)."""
    params = pipe.trainable_parameters()
    if algo.nft_critic_steps:
        k = algo.nft_critic_steps
        prefix = {"latents": samples.latents[:, -1 - k], "condition": samples.condition, "k": k,
                  "prompt_embeds": samples.prompt_embeds, "pooled_embeds": samples.pooled_embeds}
        images = denoise_suffix(pipe, prefix, algo, None)  # η = 0: no noise to replay
    else:
        images = one_step_covers(pipe, samples, algo.num_inference_steps, algo.nft_critic_late, generator)
    image = critic.image_features(images.float())
    population, relevant, personal = critic.terms(image, user, item)
    if algo.nft_critic_steps and algo.nft_critic_user_one_step:  # the user's look on one x̂₀ step, the rest on K
        looks = one_step_covers(pipe, samples, algo.num_inference_steps, algo.nft_critic_late, generator)
        personal = critic.terms(critic.image_features(looks.float()), user, item)[2]
    score = algo.nft_critic_population_weight * population + relevant + algo.nft_critic_user_weight * personal
    loss, metrics = -weight * score.mean(), {"critic/policy_score": float(score.detach().mean())}
    if floors is not None and algo.nft_critic_floor_weight > 0:  # each cover pays its own floors (rl/floor_model.py)
        shortfall = critic.floor_shortfall(image, item, floors)
        loss = loss + algo.nft_critic_floor_weight * shortfall.mean()
        metrics |= {"critic/policy_shortfall": float(shortfall.detach().mean()),
                    "critic/policy_below_floor": float((shortfall.detach() > 0).float().mean())}
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return list(grads), metrics


def one_step_covers(pipe, samples, num_steps: int, late_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """The decoded x̂₀ of each cover noised forward to a random late step (with gradient) -> float images."""
    x0 = samples.latents[:, -1]
    pipe.scheduler.set_timesteps(num_steps, device=x0.device)
    schedule = pipe.scheduler.timesteps.cpu()
    late = schedule[-max(1, round(late_fraction * len(schedule))):]
    timesteps = late[torch.randint(len(late), (len(x0),), generator=generator)].to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    x_t, _ = noised_and_target(pipe.scheduler, x0, noise, timesteps)
    features = pipe.encode_condition_inputs(samples.condition)
    output = predict_noise(pipe, x_t, timesteps, samples.text, features, guidance_scale=1.0)
    return decode(pipe, predicted_clean(pipe.scheduler, x_t, output, timesteps).to(pipe.vae.dtype))


def critic_term(pipe, samples, advantages: torch.Tensor, critic: CoverCritic, algo, seed: int, iteration: int,
                gradient_rows: slice | None = None, shown: tuple | None = None, floored: dict | None = None):
    """An iteration's critic work: fit it on the batch's scored covers (all of them, on every learner rank: the
    ranks' critics stay equal), then (after the warm-up) a callable that returns the policy's gradient of the
    critic term at the current weights (called on each NFT inner step), over `gradient_rows` (a rank's share).
    `floored`: the floored rewards' scores and their reference covers' (`floored_scores`), with
    `algo.nft_critic_floor_weight` > 0: each rank's covers pay their own floors on the critic's models of them."""
    from icg_rl.rl.seeding import CRITIC, derive_seed

    image, user, item = cover_features(pipe, samples, critic)
    metrics = critic.observe(image, user, item, samples.group_key, advantages.to(pipe.device), shown, floored)
    if iteration < algo.nft_critic_warmup:
        return None, metrics
    share = slice(None) if gradient_rows is None else gradient_rows
    rows, user, item = samples.rows(share), user[share], item[share]
    floors = critic.floored_columns(floored, len(image), image.device)[share, 1::2] if critic.floors else None
    generator = torch.Generator().manual_seed(derive_seed(seed, CRITIC, iteration, 0 if gradient_rows is None
                                                          else gradient_rows.start))

    def gradients():
        return critic_gradients(pipe, rows, critic, user, item, algo.nft_critic_weight, algo, generator, floors)

    return gradients, metrics
