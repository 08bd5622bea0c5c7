"""Reward backprop (DRaFT-K / AlignProp): sample the chain, keep gradient through the last K denoising steps and
the VAE decode, and ascend the differentiable rewards directly.

The first T − K steps run without gradient (their latents are constants); the last K run with it, each UNet call
under activation checkpointing so memory grows with K only through the latents. With `random_truncation`, K is
drawn uniformly in 1..K each update (AlignProp's randomized truncation, which keeps early steps from dominating).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from torch.utils.checkpoint import checkpoint

from icg_rl.rl.sampling import decode, encode_prompts, pipeline_inputs, predict_noise


def check_differentiable(rewards: dict, weights: dict[str, float]) -> None:
    bad = [name for name, w in weights.items() if w != 0 and not rewards[name].differentiable]
    if bad:
        raise ValueError(f"algo.name=backprop needs differentiable rewards, but reward.weights gives weight to "
                         f"{bad}; set their weight to 0 or use algo.name=ddpo")


@torch.no_grad()
def reference_scores(rewards: dict, floors: dict, batch: dict) -> dict[str, torch.Tensor]:
    """The floored rewards' scores of each row's reference cover (NaN for items without one): what a generated
    cover must keep a share of (rewards/mix.py)."""
    if not floors:
        return {}
    from icg_rl.distributed.reward import to_float_images

    pixels = to_float_images(np.asarray(batch["reference_image"]), "reference covers")
    missing = without_reference(batch, len(pixels))
    return {name: rewards[name].score(pixels, batch).masked_fill(missing, float("nan")) for name in floors}


def without_reference(batch: dict, rows: int) -> torch.Tensor:
    """[rows] bool: the rows whose item has no reference cover (`has_reference` False; all have one without it)."""
    return ~torch.as_tensor(np.asarray(batch.get("has_reference", np.ones(rows, bool)), dtype=bool))


def backprop_loss(pipe, batch: dict, rewards: dict, mixer, algo, generator: torch.Generator, noise_generators=None,
                  gather_scores: Callable[[dict], dict] | None = None):
    """The reward-backprop loss of a stream batch -> (loss, metrics, images [B, 3, H, W] detached).

    `noise_generators` (one per row, see `rl/seeding.py`) draw the sampling noise; `generator` draws the
    truncation. `gather_scores` lets data-parallel ranks normalise with the statistics of the *global* batch: it
    receives this rank's detached scores and returns every rank's, which update the mixer before it normalises."""
    check_differentiable(rewards, mixer.weights)
    noise_generators = noise_generators if noise_generators is not None else generator
    titles, refs, users = pipeline_inputs(batch)
    features = pipe.encode_condition_inputs(pipe.prepare_condition_inputs(titles, refs, users))  # (B, K, d)
    prompt_embeds = encode_prompts(pipe, pipe.prompts(titles))
    uncond = encode_prompts(pipe, [""]) if algo.guidance_scale > 1.0 else None
    scheduler = pipe.scheduler
    scheduler.set_timesteps(algo.num_inference_steps, device=features.device)
    size = pipe.unet.config.sample_size
    latents = randn_tensor((len(titles), pipe.unet.config.in_channels, size, size), generator=noise_generators,
                           device=features.device, dtype=features.dtype) * scheduler.init_noise_sigma
    k = algo.backprop_steps
    if algo.random_truncation:
        k = int(torch.randint(1, k + 1, (1,), generator=generator))
    steps = len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps):
        with_grad = i >= steps - k
        with torch.set_grad_enabled(with_grad):
            args = (pipe, latents, t, prompt_embeds, features if with_grad else features.detach(),
                    algo.guidance_scale, uncond)
            if with_grad and algo.gradient_checkpointing:
                noise = checkpoint(predict_noise, *args, use_reentrant=False)
            else:
                noise = predict_noise(*args)
            latents = scheduler.step(noise, t, latents, eta=algo.eta, generator=noise_generators).prev_sample
    images = decode(pipe, latents)  # (B, 3, H, W), with grad through the last K steps
    scores = {name: reward.score(images, batch) for name, reward in rewards.items()}
    reference = reference_scores(rewards, mixer.floors, batch)
    if gather_scores is not None:
        mixer.update(gather_scores({n: s.detach() for n, s in scores.items()}))
        total, metrics = mixer(scores, update=False, reference_scores=reference)
    else:
        total, metrics = mixer(scores, reference_scores=reference)
    loss = -total.mean()  # ascend the mixed reward
    metrics["loss/backprop"] = float(loss.detach())
    metrics["stats/backprop_steps"] = k
    return loss, metrics, images.detach()


def backprop_update(pipe, batch: dict, rewards: dict, mixer, algo, optimizer, generator: torch.Generator,
                    noise_generators=None):
    """One in-process reward-backprop update -> (metrics, images [B, 3, H, W] detached)."""
    loss, metrics, images = backprop_loss(pipe, batch, rewards, mixer, algo, generator, noise_generators)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    metrics["stats/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, algo.max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return metrics, images
