"""Brief pretraining of the zoo's base models on CoverWorld, each with its standard objective.

- CLIP: symmetric InfoNCE over (cover, text) pairs (CLIPModel's own `return_loss`): titles and alt-text captions,
  plus one-attribute prompts on a curriculum (`clip_step_plan`), cosine learning rate.
- VAE: reconstruction (MSE) + a small KL to N(0, I); afterwards `scaling_factor` = 1 / std(latents), as SD sets it.
- UNet: epsilon prediction under the SD noise schedule, 10% of prompts dropped to "" so CFG works (SDXL's layout: to
  zero text and pooled embeddings, what its pipeline's CFG uses).
- SD3 transformer (the flow base): rectified flow with logit-normal times, as SD3 trains; the same 10% dropout.
- Aesthetic head: MSE to the public ratings, on frozen CLIP image embeddings.

Inputs are in-memory tensors: images float [N, 3, H, W] in [0, 1]. Each loop shows a progress bar and returns a
small dict of numbers for the build summary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_schedule_with_warmup
from tqdm.auto import tqdm

from icg_rl.models.zoo import IMAGE_MEAN, IMAGE_STD, RepeatedTailAttnProcessor, train_noise_scheduler

CONDITION_DROPOUT = 0.1


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> CLIP-normalised pixel values (what CLIPImageProcessor produces at this size)."""
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _bar(steps: int, desc: str, progress: bool):
    return tqdm(range(steps), desc=desc, unit="step", disable=not progress, mininterval=2.0)


# The CLIP curriculum. Captions name every look word and a title, so a random batch is told apart by colour words
# and titles alone and nothing asks where the motif sits: the CLS token starts as a mean over patches, blind to a
# mirror image, and caption training alone leaves composition out of the embedding (linear-probe R² ≈ 0). Batches
# whose texts all name one attribute (its look word alone, 'far-left') make that attribute the only way to match.
# Trained from scratch, such batches first collapse their prompts onto one text embedding (loss = log batch), a
# saddle both towers must leave together, which plain training never did; with the text tower locked the prompts
# stay apart and the image tower learns the attribute within ~150 steps, after which the text tower follows.
# Measured (benchmarks/clip_probe.py, 1500 steps): every φ dimension probes at R² ≥ 0.84 over world seeds 0-1 and
# zoo seeds 0-2, genre retrieval ≥ 0.93. With 800 steps the locked phase is too short to be reliable.
LOCKED_TEXT_SHARE = 0.1  # first share of steps: attribute-0 batches only, the text tower gets no updates
BOOTSTRAP_SHARE = 0.2  # then until this share: two attribute-0 batches per caption batch (the text tower learns them)
ATTRIBUTE_EVERY = 4  # afterwards every 4th batch is a prompt batch, the attributes taking turns


def clip_step_plan(steps: int, num_attributes: int) -> list[int | None]:
    """Which texts each CLIP step trains on: None = the captions, k = attribute prompt k."""
    if num_attributes == 0:
        return [None] * steps
    locked, bootstrap = int(steps * LOCKED_TEXT_SHARE), int(steps * BOOTSTRAP_SHARE)
    plan: list[int | None] = [None if i >= locked and i % 3 == 2 else 0 for i in range(bootstrap)]
    rest = range(steps - bootstrap)
    return plan + [(i // ATTRIBUTE_EVERY) % num_attributes if i % ATTRIBUTE_EVERY == 0 else None for i in rest]


def train_clip(clip, input_ids, images, steps, batch_size, lr, generator, progress=True,
               attribute_ids=None) -> dict:
    """Contrastive training with a cosine learning rate; input_ids [N, L] (one text per image) or [N, A, L] (A
    alternative texts, e.g. title and alt-text caption, one drawn per step and image), images [N, 3, H, W].
    attribute_ids [N, K, L] (optional): prompts that each name one look attribute of the image, trained on the
    curriculum above (attribute 0 is bootstrapped). Returns the last caption-batch and prompt-batch losses."""
    if input_ids.ndim == 2:
        input_ids = input_ids[:, None]  # (N, 1, L)
    plan = clip_step_plan(steps, 0 if attribute_ids is None else attribute_ids.shape[1])
    locked = int(steps * LOCKED_TEXT_SHARE) if attribute_ids is not None else 0
    eos = clip.config.text_config.eos_token_id
    clip.train()
    optimizer = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=steps)
    losses = {"final_loss": 0.0}
    for step in _bar(steps, "clip", progress):
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        if plan[step] is None:
            texts = input_ids[idx, torch.randint(input_ids.shape[1], (batch_size,), generator=generator)]
        else:
            texts = attribute_ids[idx, plan[step]]
        out = clip(input_ids=_trim_padding(texts, eos), pixel_values=clip_pixels(images[idx]), return_loss=True)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if step < locked:
            _drop_text_grads(clip)
        optimizer.step()
        schedule.step()
        losses["final_loss" if plan[step] is None else "attribute_loss"] = float(out.loss.detach())
    clip.eval()
    return losses


def _drop_text_grads(clip) -> None:
    """Lock the text tower for this step: AdamW leaves parameters without a gradient untouched."""
    for param in [*clip.text_model.parameters(), *clip.text_projection.parameters()]:
        param.grad = None


def _trim_padding(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Drop the columns after the batch's longest text (up to its first EOS). Exact: CLIP's text tower is causal
    and pools at the first EOS, so later padding never reaches the embedding; short prompts then cost little."""
    ends = (input_ids == eos_token_id).int().argmax(dim=1)  # first EOS per text (0 if none)
    length = input_ids.shape[1] if bool((ends == 0).any()) else int(ends.max()) + 1
    return input_ids[:, :length]


def train_vae(vae, images, steps, batch_size, lr, generator, progress=True, kl_weight=1e-6) -> dict:
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, fused=True)  # one kernel per step: ~8% of a CPU step
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in _bar(steps, "vae", progress):
        x = images[torch.randint(len(images), (batch_size,), generator=generator)] * 2 - 1  # [-1, 1]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        loss = F.mse_loss(recon, x) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i:i + 256] * 2 - 1).latent_dist.mean
                             for i in range(0, len(images), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return {"scaling_factor": vae.config.scaling_factor}


@torch.no_grad()
def vae_psnr(vae, images: torch.Tensor) -> float:
    """Mean PSNR (dB) of reconstructing `images` through the posterior mean."""
    psnrs = []
    for i in range(0, len(images), 256):
        x = images[i:i + 256]
        recon = (vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
        mse = ((recon - x) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        psnrs.append(10 * torch.log10(1.0 / mse))
    return float(torch.cat(psnrs).mean())


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, already multiplied by the scaling factor."""
    means, stds = [], []
    for i in range(0, len(images), 256):
        dist = vae.encode(images[i:i + 256] * 2 - 1).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    scale = vae.config.scaling_factor
    return torch.cat(means) * scale, torch.cat(stds) * scale


def denoiser_optimizer(params, lr: float, steps: int):
    """The denoisers' recipe (UNet and flow transformer): fused AdamW, and diffusers' cosine schedule after a warmup
    of 5 % of the steps -> (optimizer, schedule)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4, fused=True)
    warmup = max(1, steps // 20)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def clipped_step(loss, module, optimizer, schedule) -> float:
    """One denoiser update: backward, gradient norm clipped to 1, optimizer and schedule step -> the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    return float(loss.detach())


def train_unet(unet, latent_mean, latent_std, text_states, uncond_state, steps, batch_size, lr, generator,
               progress=True, added=None) -> dict:
    """text_states [N, L, D] per image; uncond_state [1, L, D] (the "" prompt) for condition dropout. `added`: SDXL's
    "text_time" conditioning, (pooled [N, P] per image, uncond_pooled [1, P] swapped in with the text, time_ids
    [1, 6] for every row); None for a UNet without it. Returns the mean loss of the first and the last 50 steps (a
    quarter of the steps in short runs)."""
    unet.train()
    noise_scheduler = train_noise_scheduler()
    optimizer, schedule = denoiser_optimizer(unet.parameters(), lr, steps)
    losses = []
    for _ in _bar(steps, "unet", progress):
        idx = torch.randint(len(latent_mean), (batch_size,), generator=generator)
        latents = latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        drop = torch.rand(batch_size, generator=generator) < CONDITION_DROPOUT
        states = torch.where(drop[:, None, None], uncond_state.expand_as(text_states[idx]), text_states[idx])
        extra = {}
        if added is not None:
            pooled, uncond_pooled, time_ids = added
            extra["added_cond_kwargs"] = {"text_embeds": torch.where(drop[:, None], uncond_pooled, pooled[idx]),
                                          "time_ids": time_ids.expand(batch_size, -1)}  # (B, P), (B, 6)
        pred = unet(noise_scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=states, **extra).sample
        loss = F.mse_loss(pred, noise)
        losses.append(clipped_step(loss, unet, optimizer, schedule))
    unet.eval()
    window = max(1, min(50, steps // 4))
    return {"initial_loss": sum(losses[:window]) / window, "final_loss": sum(losses[-window:]) / window}


def train_flow_transformer(transformer, latent_mean, latent_std, prompt_embeds, pooled_embeds, uncond_embeds,
                           uncond_pooled, steps, batch_size, lr, generator, progress=True, tail_repeats=256) -> dict:
    """Rectified flow (SD3, Esser et al. 2024): x_t = (1 − t)·x_0 + t·ε, the transformer predicts v = ε − x_0 at
    timestep 1000·t (FlowMatchEulerDiscreteScheduler's), t = sigmoid(n), n ~ N(0, 1) (logit-normal).

    latent_mean/std [N, 4, h, w] (scaled, as the pipeline decodes them); prompt_embeds [N, L, D] and pooled_embeds
    [N, P] per latent, as StableDiffusion3Pipeline.encode_prompt gives them with max_sequence_length=1: the last
    token is T5's zero token, which stands for `tail_repeats` of them (zoo.RepeatedTailAttnProcessor); uncond_* [1, ...]
    the "" prompt, swapped in for 10% of the rows so CFG works. Returns the mean loss of the first and the last 50
    steps (a quarter of the steps in short runs).
    """
    stock = transformer.attn_processors
    transformer.set_attn_processor(RepeatedTailAttnProcessor(tail_repeats))
    transformer.train()
    optimizer, schedule = denoiser_optimizer(transformer.parameters(), lr, steps)
    losses = []
    for _ in _bar(steps, "flow", progress):
        idx = torch.randint(len(latent_mean), (batch_size,), generator=generator)
        x0 = latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.sigmoid(torch.randn(batch_size, generator=generator))  # (B,) logit-normal in (0, 1)
        x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        drop = torch.rand(batch_size, generator=generator) < CONDITION_DROPOUT
        states = torch.where(drop[:, None, None], uncond_embeds, prompt_embeds[idx])  # (B, L, D)
        pooled = torch.where(drop[:, None], uncond_pooled, pooled_embeds[idx])  # (B, P)
        pred = transformer(x_t, states, pooled, t * 1000).sample
        loss = F.mse_loss(pred, noise - x0)  # mean over batch and latent dims
        losses.append(clipped_step(loss, transformer, optimizer, schedule))
    transformer.eval()
    transformer.set_attn_processor(stock)
    window = max(1, min(50, steps // 4))
    return {"initial_loss": sum(losses[:window]) / window, "final_loss": sum(losses[-window:]) / window}


def train_aesthetic_head(head, embeddings, ratings, steps, batch_size, lr, generator, progress=True) -> dict:
    """embeddings [N, d] (CLIP image embeds), ratings [N] -> regression by MSE; returns held-out correlation."""
    n_valid = max(1, len(ratings) // 10)
    order = torch.randperm(len(ratings), generator=generator)
    valid, train = order[:n_valid], order[n_valid:]
    head.train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    for _ in _bar(steps, "aesthetic", progress):
        idx = train[torch.randint(len(train), (batch_size,), generator=generator)]
        loss = F.mse_loss(head(embeddings[idx]), ratings[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        pred = head(embeddings[valid])
    corr = torch.corrcoef(torch.stack([pred, ratings[valid]]))[0, 1]
    return {"valid_correlation": float(corr)}
