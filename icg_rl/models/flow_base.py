"""`build_flow_base`: CoverWorld's second base model, an SD3-layout rectified-flow transformer, under `models/sd3/`.

Built on demand from the saved zoo (`models/sd` VAE and tokenizer, `models/clip`, `models/judge`) and the covers, and
cached by its own marker, so the zoo's cache key never moves and existing worlds keep their other models. The folder
is what diffusers' `StableDiffusion3Pipeline.save_pretrained` writes and `from_pretrained` loads:

    sd3/transformer          SD3Transformer2DModel (zoo.build_sd3_transformer) on 8×8×4 latents, patch 2
    sd3/vae                  the zoo's AutoencoderKL with shift_factor 0.0: SD3 decodes latents / scale + shift
    sd3/text_encoder(_2)     CLIPTextModelWithProjection: the world CLIP's text tower + projection (both the same)
    sd3/tokenizer(_2)        the world's BPE CLIPTokenizer
    sd3/scheduler            FlowMatchEulerDiscreteScheduler(shift=zoo.flow_shift)
    sd3/flow_build.json      config hash and summary (written last: no marker, no cache hit)
    flow_base_samples.png    judged samples for held-out titles, one row per genre

text_encoder_3 / tokenizer_3 are None (model_index.json says null), which diffusers loads only when told so, as for
a real SD3 run without T5: `StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)`
(`load_flow_pipeline`). The pipeline then appends `max_sequence_length` (default 256) zero tokens of width
joint_attention_dim, which training reproduces exactly with one token (zoo.RepeatedTailAttnProcessor). Sample with
the default max_sequence_length: another count shifts the attention the model learnt.

Default budget, world seed 0, 2 CPU threads: 1100 steps in 168 s (≈185 s with encoding, saving and judging), loss
1.41 -> 0.435, judged genre accuracy of 10-step samples 0.97 (64 held-out titles; the UNet base's: 0.97).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusion3Pipeline
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPTokenizer

from icg_rl.config import WorldConfig, ZooConfig
from icg_rl.data.coverworld import load_coverworld
from icg_rl.io import atomic_write_json, atomic_write_png, image_grid, read_image
from icg_rl.models import pretrain, zoo
from icg_rl.models.build import _heldout_titles, _save_folder, cached_summary, on_demand_key, require_zoo
from icg_rl.paths import BASE_FOLDERS, COVERWORLD_FLOW, world_models
from icg_rl.world.judge import GenreJudge, accuracy

FOLDER = BASE_FOLDERS[COVERWORLD_FLOW]  # models/sd3
MARKER = "flow_build.json"
FORMAT_VERSION = 2  # 2: patch 2, 4 blocks, 1100 steps (a 4-minute build)
T5_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length: zero T5 tokens per prompt without T5
LEARNING_RATE = 1e-3
EVAL_INFERENCE_STEPS = 10  # Euler steps of the judged samples (what zoo.flow_shift was chosen for)


def flow_key(world_cfg: WorldConfig, zoo_cfg: ZooConfig) -> str:
    """Cache key of the flow base: the world's catalog and the zoo config (the zoo it is built from, and the
    `flow_*` budgets; not the other on-demand bases')."""
    return on_demand_key(world_cfg, zoo_cfg, "flow_", FORMAT_VERSION)


def flow_base_is_current(world_dir: str | Path, world_cfg: WorldConfig, zoo_cfg: ZooConfig) -> bool:
    return cached_summary(world_models(world_dir) / FOLDER / MARKER, flow_key(world_cfg, zoo_cfg)) is not None


def ensure_flow_base(world_dir: str | Path, world_cfg: WorldConfig, zoo_cfg: ZooConfig, progress: bool = True) -> Path:
    """The flow base's folder (`WORLD/models/sd3`), built first when missing or stale (needs the zoo built)."""
    build_flow_base(world_dir, world_cfg, zoo_cfg, progress=progress)
    return world_models(world_dir) / FOLDER


def build_flow_base(world_dir: str | Path, world_cfg: WorldConfig, zoo_cfg: ZooConfig, progress: bool = True,
                    force: bool = False) -> dict:
    """Build (or reuse) `models/sd3`; returns its summary: losses, genre accuracy of samples, seconds, params."""
    models_dir = require_zoo(world_dir, world_cfg, zoo_cfg)
    cached = None if force else cached_summary(models_dir / FOLDER / MARKER, flow_key(world_cfg, zoo_cfg))
    if cached is not None:
        return cached | {"cached": True}
    start = time.perf_counter()
    torch.manual_seed(zoo_cfg.seed)
    torch.set_num_threads(zoo_cfg.threads)
    gen = torch.Generator().manual_seed(zoo_cfg.seed)

    pipe = _untrained_pipeline(models_dir, zoo_cfg)
    data = load_coverworld(world_dir)
    images, titles = world_covers(world_dir, data)
    latent_mean, latent_std = pretrain.encode_latents(pipe.vae, images)  # (N, 4, h, w), × scale, shift 0
    embeds, pooled, uncond, uncond_pooled = _prompt_embeds(pipe, titles)
    summary = pretrain.train_flow_transformer(pipe.transformer, latent_mean, latent_std, embeds, pooled, uncond,
                                              uncond_pooled, zoo_cfg.flow_steps, zoo_cfg.batch_size, LEARNING_RATE,
                                              gen, progress, tail_repeats=T5_TOKENS)
    summary["train_seconds"] = round(time.perf_counter() - start, 1)
    _save_folder(models_dir / FOLDER, pipe.save_pretrained)

    heldout_titles, heldout_labels = _heldout_titles(world_cfg, set(data.items["title"]), zoo_cfg)
    summary["samples"] = judge_flow_samples(models_dir, heldout_titles, heldout_labels, zoo_cfg)
    summary["params"] = sum(p.numel() for p in pipe.transformer.parameters())
    summary["build_seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(models_dir / FOLDER / MARKER, {"config_hash": flow_key(world_cfg, zoo_cfg),
                                                     "format_version": FORMAT_VERSION, "summary": summary})
    return summary


def load_flow_pipeline(folder: str | Path, **kwargs) -> StableDiffusion3Pipeline:
    """`models/sd3` through diffusers' own loader, told that the folder has no T5 (kwargs: torch_dtype, ...)."""
    return StableDiffusion3Pipeline.from_pretrained(str(folder), text_encoder_3=None, tokenizer_3=None, **kwargs)


def _untrained_pipeline(models_dir: Path, zoo_cfg: ZooConfig) -> StableDiffusion3Pipeline:
    """The SD3 pipeline around the zoo's saved VAE, tokenizer and CLIP, with a fresh transformer."""
    clip = CLIPModel.from_pretrained(str(models_dir / "clip"))
    tokenizer = CLIPTokenizer.from_pretrained(str(models_dir / "sd" / "tokenizer"))
    vae = AutoencoderKL.from_pretrained(str(models_dir / "sd" / "vae"))
    vae.register_to_config(shift_factor=0.0)  # SD3 decodes latents / scaling_factor + shift_factor
    text = clip.config.text_config
    latent_size = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
    transformer = zoo.build_sd3_transformer(zoo_cfg, text.hidden_size, text.projection_dim, latent_size)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=zoo.flow_scheduler(zoo_cfg.flow_shift), vae=vae.eval(),
        text_encoder=zoo.text_encoder_with_projection(clip), tokenizer=tokenizer,
        text_encoder_2=zoo.text_encoder_with_projection(clip), tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None)


def world_covers(world_dir: str | Path, data) -> tuple[torch.Tensor, list[str]]:
    """Every cover variant of `data` (load_coverworld's) as float [N, 3, H, W] in [0, 1], with its item's title."""
    variants = data.variants.merge(data.items[["item_id", "title"]], on="item_id")
    images = torch.from_numpy(np.stack([read_image(Path(world_dir) / p) for p in variants["image_path"]]))
    return images.permute(0, 3, 1, 2).float() / 255.0, list(variants["title"])  # (N, 3, H, W)


@torch.no_grad()
def _prompt_embeds(pipe: StableDiffusion3Pipeline, titles: list[str]):
    """The pipeline's own prompt encoding, once per distinct title, with one zero T5 token (standing for
    T5_TOKENS). -> embeds [N, L, D], pooled [N, P] per title in `titles`, and the "" prompt's [1, L, D], [1, P]."""
    distinct = sorted(set(titles))
    embeds, _, pooled, _ = pipe.encode_prompt(distinct, None, None, do_classifier_free_guidance=False,
                                              max_sequence_length=1)  # (T, 32 + 1, D), (T, P)
    uncond, _, uncond_pooled, _ = pipe.encode_prompt("", None, None, do_classifier_free_guidance=False,
                                                     max_sequence_length=1)  # (1, 33, D), (1, P)
    rows = torch.tensor([distinct.index(t) for t in titles])
    return embeds[rows], pooled[rows], uncond, uncond_pooled  # (N, 33, D), (N, P)


@torch.no_grad()
def judge_flow_samples(models_dir: Path, titles: list[str], labels: torch.Tensor, zoo_cfg: ZooConfig,
                       shift: float | None = None) -> dict:
    """Load `models/sd3` the way a user would, sample held-out titles (EVAL_INFERENCE_STEPS Euler steps, the zoo's
    CFG scale; `shift` overrides the saved scheduler's), judge their genres and write the grid."""
    pipe = load_flow_pipeline(models_dir / FOLDER)
    pipe.set_progress_bar_config(disable=True)
    if shift is not None:
        pipe.scheduler = zoo.flow_scheduler(shift)
    out = pipe(titles, num_inference_steps=EVAL_INFERENCE_STEPS, guidance_scale=zoo_cfg.eval_guidance_scale,
               generator=torch.Generator().manual_seed(zoo_cfg.seed), output_type="pt")
    pixels = (out.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # (N, H, W, 3)
    atomic_write_png(models_dir / "flow_base_samples.png", image_grid(pixels, columns=zoo_cfg.eval_samples_per_genre))
    genres = json.loads((models_dir / "judge" / "config.json").read_text())["genres"]
    judge = GenreJudge(len(genres))
    judge.load_state_dict(load_file(str(models_dir / "judge" / "judge.safetensors")))
    return {"genre_accuracy": accuracy(judge.eval(), out.images, labels), "chance": 1.0 / len(genres),
            "samples": len(titles), "inference_steps": EVAL_INFERENCE_STEPS, "grid": "models/flow_base_samples.png"}
