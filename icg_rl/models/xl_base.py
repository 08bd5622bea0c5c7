"""`build_xl_base`: CoverWorld's SDXL-layout base model under `models/sdxl/`, so the RL loop runs on SDXL's layout.

Built on demand from the saved zoo (`models/sd` UNet, VAE and tokenizer, `models/clip`, `models/judge`) and the
covers, and cached by its own marker, so the zoo's cache key never moves and existing worlds keep their other models.
The folder is what diffusers' `StableDiffusionXLPipeline.save_pretrained` writes and `from_pretrained` loads:

    sdxl/unet              UNet2DConditionModel (zoo.build_xl_unet): the SD UNet's levels with SDXL's conditioning,
                           cross-attention over both encoders' penultimate states (2 × text width) and "text_time"
                           added conditioning (the pooled projection + six size/crop ids)
    sdxl/vae               the zoo's AutoencoderKL
    sdxl/text_encoder      CLIPTextModel: the world CLIP's text tower (SDXL's CLIP-L)
    sdxl/text_encoder_2    CLIPTextModelWithProjection: the same tower and its projection, which SDXL pools (bigG)
    sdxl/tokenizer(_2)     the world's BPE CLIPTokenizer
    sdxl/scheduler         DDIMScheduler on SD's noise schedule (the zoo's sampler; RL's log-probs are DDIM's)
    sdxl/xl_build.json     config hash and summary (written last: no marker, no cache hit)
    xl_base_samples.png    judged samples for held-out titles, one row per genre

The UNet starts from `models/sd/unet` wherever a tensor carries over (`warm_start`), then trains `xl_steps` with the
SD UNet's denoising objective and optimizer recipe (pretrain.train_unet). Prompts are dropped to zero text and
pooled embeddings, SDXL's unconditional branch under `force_zeros_for_empty_prompt`, so the stock pipeline's CFG
works. The size/crop ids are those the pipeline passes at the native 32 px: the same for every cover.

Default budget, world seed 0 (measured on 1 thread on a 2-core box shared with a test job, load 4-6): 600 steps in
569 s (630 s with encoding, saving and judging), loss 0.083 -> 0.063 (the warm start begins near the SD UNet's
0.066), judged genre accuracy of 20-step DDIM samples 1.0 (64 held-out titles; the SD base's: 1.0). A step costs
about what the SD UNet's does (0.85 M vs 0.82 M parameters; the SD UNet's 1800 steps take 230 s uncontended), so
uncontended on 2 threads the build should take ~1.5-2 minutes; that was not measured.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPTokenizer

from icg_rl.config import WorldConfig, ZooConfig
from icg_rl.data.coverworld import load_coverworld
from icg_rl.io import atomic_write_json, atomic_write_png, image_grid
from icg_rl.models import pretrain, zoo
from icg_rl.models.build import _heldout_titles, _save_folder, cached_summary, on_demand_key, require_zoo
from icg_rl.models.flow_base import world_covers
from icg_rl.paths import BASE_FOLDERS, COVERWORLD_XL, world_models
from icg_rl.world.judge import GenreJudge, accuracy

FOLDER = BASE_FOLDERS[COVERWORLD_XL]  # models/sdxl
MARKER = "xl_build.json"
FORMAT_VERSION = 1
LEARNING_RATE = 1e-3  # half the SD UNet's 2e-3: most weights start trained (warm_start)


def xl_key(world_cfg: WorldConfig, zoo_cfg: ZooConfig) -> str:
    """Cache key of the SDXL-layout base: the world's catalog and the zoo config (the zoo it is built from, and the
    `xl_*` budgets; not the other on-demand bases')."""
    return on_demand_key(world_cfg, zoo_cfg, "xl_", FORMAT_VERSION)


def xl_base_is_current(world_dir: str | Path, world_cfg: WorldConfig, zoo_cfg: ZooConfig) -> bool:
    return cached_summary(world_models(world_dir) / FOLDER / MARKER, xl_key(world_cfg, zoo_cfg)) is not None


def ensure_xl_base(world_dir: str | Path, world_cfg: WorldConfig, zoo_cfg: ZooConfig, progress: bool = True) -> Path:
    """The SDXL-layout base's folder (`WORLD/models/sdxl`), built first when missing or stale (needs the zoo)."""
    build_xl_base(world_dir, world_cfg, zoo_cfg, progress=progress)
    return world_models(world_dir) / FOLDER


def build_xl_base(world_dir: str | Path, world_cfg: WorldConfig, zoo_cfg: ZooConfig, progress: bool = True,
                  force: bool = False) -> dict:
    """Build (or reuse) `models/sdxl`; returns its summary: losses, genre accuracy of samples, seconds, params."""
    models_dir = require_zoo(world_dir, world_cfg, zoo_cfg)
    cached = None if force else cached_summary(models_dir / FOLDER / MARKER, xl_key(world_cfg, zoo_cfg))
    if cached is not None:
        return cached | {"cached": True}
    start = time.perf_counter()
    torch.manual_seed(zoo_cfg.seed)
    torch.set_num_threads(zoo_cfg.threads)
    gen = torch.Generator().manual_seed(zoo_cfg.seed)

    pipe, copied = _untrained_pipeline(models_dir, zoo_cfg)
    data = load_coverworld(world_dir)
    images, titles = world_covers(world_dir, data)
    latent_mean, latent_std = pretrain.encode_latents(pipe.vae, images)  # (N, 4, h, w), × scale
    embeds, pooled = _prompt_embeds(pipe, titles)
    uncond, uncond_pooled = torch.zeros_like(embeds[:1]), torch.zeros_like(pooled[:1])  # SDXL's negative: zeros
    time_ids = native_time_ids(pipe, int(pooled.shape[-1]))
    summary = pretrain.train_unet(pipe.unet, latent_mean, latent_std, embeds, uncond, zoo_cfg.xl_steps,
                                  zoo_cfg.batch_size, LEARNING_RATE, gen, progress,
                                  added=(pooled, uncond_pooled, time_ids))
    summary["warm_started_tensors"] = copied
    summary["train_seconds"] = round(time.perf_counter() - start, 1)
    _save_folder(models_dir / FOLDER, pipe.save_pretrained)

    heldout_titles, heldout_labels = _heldout_titles(world_cfg, set(data.items["title"]), zoo_cfg)
    summary["samples"] = judge_xl_samples(models_dir, heldout_titles, heldout_labels, zoo_cfg)
    summary["params"] = sum(p.numel() for p in pipe.unet.parameters())
    summary["build_seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(models_dir / FOLDER / MARKER, {"config_hash": xl_key(world_cfg, zoo_cfg),
                                                     "format_version": FORMAT_VERSION, "summary": summary})
    return summary


def _untrained_pipeline(models_dir: Path, zoo_cfg: ZooConfig) -> tuple[StableDiffusionXLPipeline, str]:
    """The SDXL pipeline around the zoo's saved VAE, tokenizer and CLIP, with a UNet warm-started from the SD UNet
    -> (pipeline, 'copied/total' tensors of the warm start)."""
    clip = CLIPModel.from_pretrained(str(models_dir / "clip"))
    tokenizer = CLIPTokenizer.from_pretrained(str(models_dir / "sd" / "tokenizer"))
    vae = AutoencoderKL.from_pretrained(str(models_dir / "sd" / "vae"))
    text = clip.config.text_config
    unet = zoo.build_xl_unet(zoo_cfg, vae.config.sample_size, text.hidden_size, text.projection_dim)
    copied = warm_start(unet, UNet2DConditionModel.from_pretrained(str(models_dir / "sd" / "unet")))
    pipe = StableDiffusionXLPipeline(
        vae=vae.eval(), text_encoder=zoo.load_text_encoder_from_clip(clip),
        text_encoder_2=zoo.text_encoder_with_projection(clip), tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=unet, scheduler=zoo.sampling_scheduler(), force_zeros_for_empty_prompt=True, add_watermarker=False)
    return pipe, copied


@torch.no_grad()
def warm_start(xl_unet: UNet2DConditionModel, sd_unet: UNet2DConditionModel) -> str:
    """Copy the SD UNet's weights into the SDXL-layout UNet wherever they carry over -> 'copied/total' tensors.

    - same name and shape: copied (resnets, self-attention, norms, time embedding, conv in/out);
    - the 1×1-conv attention projections (proj_in/out) become the equal linear ones (same numbers, reshaped);
    - cross-attention keys/values read [h, h] (the two encoders are one tower, so their penultimate states are
      equal): W goes in as [W/2, W/2], which gives W·h — the SD UNet read the tower's final states, so only near;
    - the "text_time" embedding is new (the SD UNet pooled its text inside): its output layer starts at zero, so the
      added conditioning starts as nothing and training grows it."""
    source = sd_unet.state_dict()
    target = xl_unet.state_dict()
    copied = 0
    for name, tensor in target.items():
        old = source.get(name)
        if old is None:
            continue
        if old.shape == tensor.shape:
            tensor.copy_(old)
        elif old.shape[2:] == (1, 1) and old.shape[:2] == tensor.shape:  # 1×1 conv (C, C, 1, 1) -> linear (C, C)
            tensor.copy_(old[:, :, 0, 0])
        elif name.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) and tensor.shape[1] == 2 * old.shape[1]:
            tensor.copy_(torch.cat([old / 2, old / 2], dim=1))  # (C, 2D)
        else:
            continue
        copied += 1
    xl_unet.load_state_dict(target)
    torch.nn.init.zeros_(xl_unet.add_embedding.linear_2.weight)
    torch.nn.init.zeros_(xl_unet.add_embedding.linear_2.bias)
    return f"{copied}/{len(target)}"


@torch.no_grad()
def _prompt_embeds(pipe: StableDiffusionXLPipeline, titles: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's own prompt encoding, once per distinct title -> embeds [N, L, 2D] (both encoders' penultimate
    states side by side) and pooled [N, P] (text_encoder_2's projection) per title in `titles`."""
    distinct = sorted(set(titles))
    embeds, _, pooled, _ = pipe.encode_prompt(distinct, do_classifier_free_guidance=False)  # (T, L, 2D), (T, P)
    rows = torch.tensor([distinct.index(t) for t in titles])
    return embeds[rows], pooled[rows]  # (N, L, 2D), (N, P)


def native_time_ids(pipe: StableDiffusionXLPipeline, projection_dim: int) -> torch.Tensor:
    """SDXL's size/crop ids [1, 6] as the pipeline builds them without size arguments: original = target = the
    native resolution, crop (0, 0)."""
    size = (pipe.default_sample_size * pipe.vae_scale_factor,) * 2
    return pipe._get_add_time_ids(size, (0, 0), size, dtype=torch.float32, text_encoder_projection_dim=projection_dim)


@torch.no_grad()
def judge_xl_samples(models_dir: Path, titles: list[str], labels: torch.Tensor, zoo_cfg: ZooConfig) -> dict:
    """Load `models/sdxl` the way a user would, sample held-out titles (the zoo's DDIM steps and CFG scale, as the
    SD base's are judged), judge their genres and write the grid."""
    pipe = StableDiffusionXLPipeline.from_pretrained(str(models_dir / FOLDER))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(titles, num_inference_steps=zoo_cfg.eval_inference_steps, guidance_scale=zoo_cfg.eval_guidance_scale,
               generator=torch.Generator().manual_seed(zoo_cfg.seed), output_type="pt")
    pixels = (out.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # (N, H, W, 3)
    atomic_write_png(models_dir / "xl_base_samples.png", image_grid(pixels, columns=zoo_cfg.eval_samples_per_genre))
    genres = json.loads((models_dir / "judge" / "config.json").read_text())["genres"]
    judge = GenreJudge(len(genres))
    judge.load_state_dict(load_file(str(models_dir / "judge" / "judge.safetensors")))
    return {"genre_accuracy": accuracy(judge.eval(), out.images, labels), "chance": 1.0 / len(genres),
            "samples": len(titles), "inference_steps": zoo_cfg.eval_inference_steps,
            "grid": "models/xl_base_samples.png"}
