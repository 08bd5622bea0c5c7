"""Reward backprop (DRaFT-K / AlignProp): sample the chain, keep gradient through the last K denoising steps and
the VAE decode, and ascend the differentiable rewards directly.

The first T − K steps run without gradient (their latents are constants); the last K run with it, each UNet call
under activation checkpointing so memory grows with K only through the latents. The two halves are separate
functions because they run in separate places in the Ray trainer: rollout actors run `denoise_prefix` and ship
x_{T−K} with its condition and noise-generator states; the learner runs `denoise_suffix` and the rewards, at
K / T of a rollout's cost. With `random_truncation`, K is
drawn uniformly in 1..K each update (AlignProp's randomized truncation, which keeps early steps from dominating).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from torch.utils.checkpoint import checkpoint

from icg_rl.rl.sampling import decode, encode_text, pipeline_inputs, predict_noise, uncond_text
from icg_rl.rl.steps import initial_sigma, sampling_step


def check_differentiable(rewards: dict, weights: dict[str, float]) -> None:
    bad = [name for name, w in weights.items() if w != 0 and not rewards[name].differentiable]
    if bad:
        raise ValueError(f"algo.name=backprop needs differentiable rewards, but reward.weights gives weight to "
                         f"{bad}, which {'is' if len(bad) == 1 else 'are'} not differentiable; set their weight to 0 "
                         f"or use algo.name=nft (or ddpo, grpo), which need only the scores")


@torch.no_grad()
def reference_scores(rewards: dict, floors: dict, batch: dict) -> dict[str, torch.Tensor]:
    """The floored rewards' scores of each row's reference cover (NaN for items without one): what a generated
    cover must keep a share of (rewards/mix.py)."""
    if not floors:
        return {}
    from icg_rl.models.images import to_float_images

    pixels = to_float_images(np.asarray(batch["reference_image"]), "reference covers")
    missing = without_reference(batch, len(pixels))
    return {name: rewards[name].score(pixels, batch).masked_fill(missing, float("nan")) for name in floors}


def without_reference(batch: dict, rows: int) -> torch.Tensor:
    """[rows] bool: the rows whose item has no reference cover (`has_reference` False; all have one without it)."""
    return ~torch.as_tensor(np.asarray(batch.get("has_reference", np.ones(rows, bool)), dtype=bool))


def truncation(algo, generator: torch.Generator) -> int:
    """K of this update: `algo.backprop_steps`, or with `random_truncation` a uniform draw in 1..K."""
    if algo.random_truncation:
        return int(torch.randint(1, algo.backprop_steps + 1, (1,), generator=generator))
    return algo.backprop_steps


@torch.no_grad()
def denoise_prefix(pipe, batch: dict, algo, noise_generators, k: int) -> dict:
    """The first T − K steps, without gradient (DRaFT's constants) -> {"latents": x_{T−K} [B, C, h, w],
    "condition": raw inputs, "prompt_embeds": [B, L, D], "pooled_embeds": [B, P] or None, "k": K}. A rollout
    actor runs this; `noise_generators` advance as the steps draw, and the learner continues from their states
    (`prefix_to_wire`)."""
    titles, refs, users = pipeline_inputs(batch)
    condition = pipe.prepare_condition_inputs(titles, refs, users)
    features = pipe.encode_condition_inputs(condition)  # (B, K, d)
    text = encode_text(pipe, pipe.prompts(titles))
    uncond = uncond_text(pipe, algo.guidance_scale)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(algo.num_inference_steps, device=features.device)
    latents = randn_tensor(pipe.latent_shape(len(titles)), generator=noise_generators, device=features.device,
                           dtype=features.dtype) * initial_sigma(scheduler)
    for t in scheduler.timesteps[: len(scheduler.timesteps) - k]:
        noise = predict_noise(pipe, latents, t, text, features, algo.guidance_scale, uncond)
        latents = sampling_step(scheduler, noise, t, latents, algo.eta, noise_generators)
    return {"latents": latents, "condition": condition, "prompt_embeds": text[0], "pooled_embeds": text[1], "k": k}


def denoise_suffix(pipe, prefix: dict, algo, noise_generators) -> torch.Tensor:
    """The last K steps from x_{T−K}, with gradient (each UNet call checkpointed), and the decode -> float images
    [B, 3, H, W]. The condition is recomputed with the current weights: gradient reaches every ICG parameter."""
    features = pipe.encode_condition_inputs(prefix["condition"])  # (B, K, d), with grad
    uncond = uncond_text(pipe, algo.guidance_scale)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(algo.num_inference_steps, device=features.device)
    latents = prefix["latents"].to(features.device)
    pooled = prefix.get("pooled_embeds")
    text = (prefix["prompt_embeds"].to(features.device), None if pooled is None else pooled.to(features.device))
    for t in scheduler.timesteps[len(scheduler.timesteps) - prefix["k"]:]:
        args = (pipe, latents, t, text, features, algo.guidance_scale, uncond)
        noise = checkpoint(predict_noise, *args, use_reentrant=False) if algo.gradient_checkpointing \
            else predict_noise(*args)
        latents = sampling_step(scheduler, noise, t, latents, algo.eta, noise_generators)
    return decode(pipe, latents)  # with grad through the last K steps


def prefix_to_wire(prefix: dict, noise_generators: list[torch.Generator]) -> dict:
    """A prefix as numpy for the object store, with each row's noise-generator state (the learner draws the last
    K steps' noise from where the rollout stopped: the same chain as one process sampling all T steps)."""
    pooled = prefix.get("pooled_embeds")
    return {"latents": prefix["latents"].cpu().numpy(), "prompt_embeds": prefix["prompt_embeds"].cpu().numpy(),
            "pooled_embeds": None if pooled is None else pooled.cpu().numpy(),
            "condition": {k: v.cpu().numpy() for k, v in prefix["condition"].items()}, "k": prefix["k"],
            "noise_states": np.stack([g.get_state().numpy() for g in noise_generators])}


def prefix_from_wire(wire: dict) -> tuple[dict, list[torch.Generator]]:
    generators = []
    for state in wire["noise_states"]:
        generator = torch.Generator()
        generator.set_state(torch.from_numpy(np.ascontiguousarray(state)))
        generators.append(generator)
    pooled = wire.get("pooled_embeds")
    prefix = {"latents": torch.from_numpy(wire["latents"]), "prompt_embeds": torch.from_numpy(wire["prompt_embeds"]),
              "pooled_embeds": None if pooled is None else torch.from_numpy(np.array(pooled)),
              "condition": {k: torch.from_numpy(np.array(v)) for k, v in wire["condition"].items()}, "k": wire["k"]}
    return prefix, generators


def concat_prefix_wires(parts: list[dict]) -> dict:
    """Row chunks of one batch's prefix (one per rollout actor, in row order) -> one prefix."""
    if len({p["k"] for p in parts}) != 1:
        raise ValueError(f"prefix chunks were sampled with different K: {[p['k'] for p in parts]}")
    from icg_rl.rl.trajectory import concat_conditions

    # (copies: arrays from the object store are read-only, and torch warns on every such view)
    condition = concat_conditions([{k: torch.from_numpy(np.array(v)) for k, v in p["condition"].items()}
                                   for p in parts])
    return {"latents": np.concatenate([p["latents"] for p in parts]), "k": parts[0]["k"],
            "prompt_embeds": np.concatenate([p["prompt_embeds"] for p in parts]),
            "pooled_embeds": None if parts[0].get("pooled_embeds") is None
            else np.concatenate([p["pooled_embeds"] for p in parts]),
            "condition": {k: v.numpy() for k, v in condition.items()},
            "noise_states": np.concatenate([p["noise_states"] for p in parts])}


def slice_prefix_wire(wire: dict, rows: slice) -> dict:
    from icg_rl.rl.trajectory import slice_condition

    index = np.arange(len(wire["latents"]))[rows]
    condition = slice_condition({k: torch.from_numpy(np.array(v)) for k, v in wire["condition"].items()}, index)
    pooled = wire.get("pooled_embeds")
    return {"latents": wire["latents"][index], "prompt_embeds": wire["prompt_embeds"][index], "k": wire["k"],
            "pooled_embeds": None if pooled is None else pooled[index],
            "condition": {k: v.numpy() for k, v in condition.items()}, "noise_states": wire["noise_states"][index]}


def backprop_loss(pipe, batch: dict, rewards: dict, mixer, algo, generator: torch.Generator, noise_generators=None,
                  gather_scores: Callable[[dict], dict] | None = None, prefix: dict | None = None):
    """The reward-backprop loss of a stream batch -> (loss, metrics, images [B, 3, H, W] detached).

    `noise_generators` (one per row, see `rl/seeding.py`) draw the sampling noise; `generator` draws the
    truncation. `prefix`: the first T − K steps already run elsewhere (a rollout actor's `denoise_prefix`; then
    `noise_generators` must continue from its states) — without it they run here. `gather_scores` lets
    data-parallel ranks normalise with the statistics of the *global* batch: it receives this rank's detached
    scores and returns every rank's, which update the mixer before it normalises."""
    check_differentiable(rewards, mixer.weights)
    noise_generators = noise_generators if noise_generators is not None else generator
    if prefix is None:
        prefix = denoise_prefix(pipe, batch, algo, noise_generators, truncation(algo, generator))
    images = denoise_suffix(pipe, prefix, algo, noise_generators)
    scores = {name: reward.score(images, batch) for name, reward in rewards.items()}
    reference = reference_scores(rewards, mixer.floors, batch)
    if gather_scores is not None:  # the global batch's statistics (and floor prices) on every rank
        mixer.update(gather_scores({n: s.detach() for n, s in scores.items()}),
                     gather_scores(reference) if reference else None)
        total, metrics = mixer(scores, update=False, reference_scores=reference)
    else:
        total, metrics = mixer(scores, reference_scores=reference)
    loss = -total.mean()  # ascend the mixed reward
    metrics["loss/backprop"] = float(loss.detach())
    metrics["stats/backprop_steps"] = prefix["k"]
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
