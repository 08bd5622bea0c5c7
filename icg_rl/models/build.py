"""`build_base_models`: train CoverWorld's tiny base models and save them under `WORLD/models/`, cached by hash.

Order mirrors a real stack: a tokenizer, then CLIP (whose text tower becomes SD's text encoder, as SD1.5 uses
CLIP's), the VAE, the UNet on cached latents, the aesthetic head on CLIP embeddings, the random-init LLaVA, and the
genre judge. The summary proves the base is real: VAE PSNR, CLIP genre retrieval, judged genre accuracy of base
samples for held-out titles (chance = 1 / genres).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file
from transformers import CLIPTokenizer, LlavaProcessor

from icg_rl.config import WorldConfig, ZooConfig, section_hash
from icg_rl.data.coverworld import load_coverworld
from icg_rl.io import atomic_write_json, atomic_write_png, image_grid, read_image
from icg_rl.models import pretrain, zoo
from icg_rl.models.aesthetic_head import AestheticHead
from icg_rl.models.tokenizer import train_clip_tokenizer
from icg_rl.paths import world_models
from icg_rl.world.features import FEATURE_NAMES, describe_looks
from icg_rl.world.genres import genres_for, unique_titles
from icg_rl.world.judge import GenreJudge, accuracy, train_judge

MARKER = "build.json"
FORMAT_VERSION = 5  # 2: deterministic BPE, alt-text captions for CLIP; 3: CLIP attribute-prompt curriculum;
# 4: decile look words in the captions and prompts (world format 4); 5: diffusers' cosine(-with-warmup) learning-rate
# schedule (get_cosine_schedule_with_warmup: the warmup starts at 0, the cosine starts after it)
# Look attributes CLIP also trains on one at a time (pretrain.train_clip's curriculum; the first is bootstrapped):
# composition, which captions never make necessary, and contrast, the colour feature captions carry least of.
CLIP_ATTRIBUTES = ("composition", "contrast")


class PhaseTimer:
    """Wall seconds per build phase, reported in the summary (budget: default build ≤ 10 minutes)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 1)
        self._last = now


# ZooConfig field prefixes of the bases built on demand, each cached by its own marker: `flow_*` shape only the flow
# base (models/flow_base.py), `xl_*` only the SDXL-layout base (models/xl_base.py).
ON_DEMAND_PREFIXES = ("flow_", "xl_")


def zoo_key_fields(zoo_cfg: ZooConfig, own_prefix: str | None = None) -> dict:
    """The zoo config as a cache key sees it: without the on-demand bases' budgets, but for `own_prefix`'s (the base
    whose key this is). Adding a base's fields then moves neither the zoo's key nor another base's."""
    others = {name for name in ZooConfig.model_fields
              if name.startswith(ON_DEMAND_PREFIXES) and not (own_prefix and name.startswith(own_prefix))}
    return zoo_cfg.model_dump(mode="json", exclude=others)


def models_key(world_cfg: WorldConfig, zoo_cfg: ZooConfig) -> str:
    """Cache key of the zoo: the zoo budgets and the world's catalog (users and clicks do not change the models).
    The on-demand bases' budgets (`ON_DEMAND_PREFIXES`) are left out: each is cached on its own."""
    return section_hash(world_cfg.catalog(), zoo_key_fields(zoo_cfg))


def on_demand_key(world_cfg: WorldConfig, zoo_cfg: ZooConfig, prefix: str, format_version: int) -> str:
    """Cache key of a base built on demand (`prefix` "flow_", "xl_"): the world's catalog, the zoo it is built from
    with its own `prefix*` budgets (not the other on-demand bases'), and its format version."""
    return section_hash(world_cfg.catalog(), zoo_key_fields(zoo_cfg, prefix),
                        {f"{prefix}format_version": format_version})


def cached_summary(marker: Path, key: str) -> dict | None:
    """The summary an on-demand base's marker (written last by its build) recorded under `key`; None when the marker
    is missing or was written for another key (the base must be built)."""
    if not marker.is_file():
        return None
    meta = json.loads(marker.read_text())
    return meta["summary"] if meta.get("config_hash") == key else None


def require_zoo(world_dir: str | Path, world_cfg: WorldConfig, zoo_cfg: ZooConfig) -> Path:
    """The world's models folder, or FileNotFoundError naming the command that builds the zoo an on-demand base
    starts from."""
    models_dir = world_models(world_dir)
    if not models_are_current(models_dir, world_cfg, zoo_cfg):
        raise FileNotFoundError(f"world_dir: {world_dir} has no current base models (models/build.json missing or "
                                f"built with another zoo/world config); build them first: python -m icg_rl.world build")
    return models_dir


def models_are_current(models_dir: Path, world_cfg: WorldConfig, zoo_cfg: ZooConfig) -> bool:
    marker = models_dir / MARKER
    if not marker.is_file():
        return False
    meta = json.loads(marker.read_text())
    return meta.get("config_hash") == models_key(world_cfg, zoo_cfg) and meta.get("format_version") == FORMAT_VERSION


def build_base_models(world_dir: str | Path, world_cfg: WorldConfig, zoo_cfg: ZooConfig, progress: bool = True,
                      force: bool = False) -> dict:
    """Build (or reuse) the zoo; returns its summary numbers."""
    models_dir = world_models(world_dir)
    if not force and models_are_current(models_dir, world_cfg, zoo_cfg):
        return json.loads((models_dir / MARKER).read_text())["summary"] | {"cached": True}
    start = time.perf_counter()
    torch.manual_seed(zoo_cfg.seed)
    torch.set_num_threads(zoo_cfg.threads)
    gen = torch.Generator().manual_seed(zoo_cfg.seed)
    data = load_coverworld(world_dir)
    genre_names = [g.name for g in genres_for(world_cfg.num_genres)]
    variants = data.variants.merge(data.items[["item_id", "title", "genres"]], on="item_id")
    images = torch.from_numpy(np.stack([read_image(Path(world_dir) / p) for p in variants["image_path"]]))
    images = images.permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W) in [0, 1]
    labels = torch.tensor([genre_names.index(g[0]) for g in variants["genres"]])
    size = world_cfg.image_size
    summary: dict = {}
    timer = PhaseTimer()

    tokenizer = world_tokenizer(data.items, data.variants, zoo_cfg)
    input_ids = _tokenize(tokenizer, list(variants["title"]))
    clip, summary["clip"] = train_world_clip(tokenizer, variants, images, size, zoo_cfg, gen, progress)
    heldout_titles, heldout_labels = _heldout_titles(world_cfg, set(data.items["title"]), zoo_cfg)
    summary["clip"]["genre_retrieval"] = _genre_retrieval(clip, tokenizer, images, labels, heldout_titles,
                                                          heldout_labels)
    _save_folder(models_dir / "clip", lambda d: (clip.save_pretrained(d), zoo.clip_processor(tokenizer, size)
                                                 .save_pretrained(d)))
    timer.lap("clip")

    vae = zoo.build_vae(size)
    valid = torch.randperm(len(images), generator=gen)[: max(1, len(images) // 10)]
    train_mask = torch.ones(len(images), dtype=torch.bool)
    train_mask[valid] = False
    summary["vae"] = pretrain.train_vae(vae, images[train_mask], zoo_cfg.vae_steps, zoo_cfg.vae_batch_size, 1e-3,
                                        gen, progress)
    summary["vae"]["heldout_psnr_db"] = pretrain.vae_psnr(vae, images[valid])
    timer.lap("vae")

    text_encoder = zoo.load_text_encoder_from_clip(clip)
    with torch.no_grad():
        text_states = text_encoder(input_ids).last_hidden_state  # (N, L, D)
        uncond = text_encoder(_tokenize(tokenizer, [""])).last_hidden_state  # (1, L, D)
    latent_mean, latent_std = pretrain.encode_latents(vae, images)
    unet = zoo.build_unet(zoo_cfg, size)
    summary["unet"] = pretrain.train_unet(unet, latent_mean, latent_std, text_states, uncond, zoo_cfg.unet_steps,
                                          zoo_cfg.batch_size, 2e-3, gen, progress)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=zoo.sampling_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    _save_folder(models_dir / "sd", pipe.save_pretrained)
    timer.lap("unet")

    summary["aesthetic"] = _build_aesthetic(models_dir, clip, images, variants, data, zoo_cfg, gen, progress)
    _save_folder(models_dir / "mllm", lambda d: _save_llava(d, zoo_cfg, models_dir / "sd" / "tokenizer", size))
    timer.lap("aesthetic+mllm")

    judge = GenreJudge(len(genre_names))
    summary["judge"] = train_judge(judge, images, labels, zoo_cfg.judge_steps, zoo_cfg.batch_size, gen, progress)
    _save_folder(models_dir / "judge", lambda d: (save_file(judge.state_dict(), str(Path(d) / "judge.safetensors")),
                                                  atomic_write_json(Path(d) / "config.json",
                                                                    {"genres": genre_names})))
    summary["base_samples"] = _judge_base_samples(models_dir / "sd", judge, heldout_titles, heldout_labels, zoo_cfg)
    timer.lap("judge+samples")
    summary["phase_seconds"] = timer.seconds
    summary["params"] = {name: sum(p.numel() for p in m.parameters())
                         for name, m in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder),
                                         ("clip", clip))}
    summary["build_seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(models_dir / MARKER, {"config_hash": models_key(world_cfg, zoo_cfg),
                                            "format_version": FORMAT_VERSION, "summary": summary})
    return summary


def world_tokenizer(items: pd.DataFrame, variants: pd.DataFrame, zoo_cfg: ZooConfig) -> CLIPTokenizer:
    """The zoo's BPE tokenizer (CLIP's and SD's), learnt on the titles and alt-text captions."""
    return train_clip_tokenizer(list(items["title"]) + list(variants["caption"]), zoo_cfg.vocab_size,
                                zoo_cfg.max_title_tokens)


def clip_texts(variants: pd.DataFrame) -> tuple[list[list[str]], list[list[str]]]:
    """CLIP's texts per variant of the whole catalogue (columns title, caption, phi_*, clipping): the alternatives
    (title, alt-text caption, and the caption's look words alone, which must be matched without a title to lean on)
    and, per attribute of `CLIP_ATTRIBUTES`, a one-word prompt naming it ('far-left'), which
    `pretrain.train_clip`'s curriculum needs to learn it at all. -> (alternatives, prompts), lists of N strings."""
    phi = variants[[f"phi_{name}" for name in FEATURE_NAMES]].to_numpy()
    looks = describe_looks(phi, variants["clipping"].to_numpy())  # the captions' own words (same catalogue)
    words = [look.split() for look in looks]  # word k names feature k (LOOK_WORDS are single, distinct words)
    prompts = [[w[FEATURE_NAMES.index(name)] for w in words] for name in CLIP_ATTRIBUTES]
    return [list(variants["title"]), list(variants["caption"]), looks], prompts


def train_world_clip(tokenizer, variants, images, image_size, zoo_cfg: ZooConfig, gen, progress=True):
    """Build the zoo's CLIP and train it on `clip_texts(variants)` and images [N, 3, H, W] -> (clip, stats)."""
    texts, prompts = clip_texts(variants)
    clip = zoo.build_clip(zoo_cfg, tokenizer, image_size)
    stats = pretrain.train_clip(clip, torch.stack([_tokenize(tokenizer, t) for t in texts], dim=1), images,
                                zoo_cfg.clip_steps, zoo_cfg.batch_size, 2e-3, gen, progress,
                                attribute_ids=torch.stack([_tokenize(tokenizer, p) for p in prompts], dim=1))
    return clip, stats


def _tokenize(tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _heldout_titles(world_cfg: WorldConfig, taken: set[str], zoo_cfg: ZooConfig) -> tuple[list[str], torch.Tensor]:
    """New titles from the grammar that no catalogue item has: the base model never saw them."""
    rng = np.random.default_rng(world_cfg.seed + 10_007)
    titles, labels = [], []
    for g, genre in enumerate(genres_for(world_cfg.num_genres)):
        titles += unique_titles(genre, zoo_cfg.eval_samples_per_genre, rng, set(taken))
        labels += [g] * zoo_cfg.eval_samples_per_genre
    return titles, torch.tensor(labels)


@torch.no_grad()
def _genre_retrieval(clip, tokenizer, images, labels, titles, title_labels) -> float:
    """Share of covers whose nearest held-out title (by CLIP cosine) has the cover's genre."""
    text = clip.get_text_features(input_ids=_tokenize(tokenizer, titles))
    image = clip.get_image_features(pixel_values=pretrain.clip_pixels(images))
    text, image = (getattr(t, "pooler_output", t) for t in (text, image))
    sims = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    return float((title_labels[sims.argmax(-1)] == labels).float().mean())


def _build_aesthetic(models_dir, clip, images, variants, data, zoo_cfg, gen, progress) -> dict:
    ratings = data.extra["aesthetic_ratings"].groupby("image_path")["rating"].mean()
    target = torch.tensor(ratings.loc[variants["image_path"]].to_numpy(), dtype=torch.float32)
    with torch.no_grad():
        embeds = clip.get_image_features(pixel_values=pretrain.clip_pixels(images))
        embeds = getattr(embeds, "pooler_output", embeds)
    head = AestheticHead(in_dim=embeds.shape[-1])
    stats = pretrain.train_aesthetic_head(head, embeds, target, zoo_cfg.aesthetic_steps, zoo_cfg.batch_size, 1e-3,
                                          gen, progress)

    def save(folder):
        head.save(Path(folder) / "head.pth")
        atomic_write_json(Path(folder) / "config.json", {"in_dim": head.in_dim, "clip": "../clip"})

    _save_folder(models_dir / "aesthetic", save)
    return stats


def _save_llava(folder, zoo_cfg: ZooConfig, tokenizer_dir: Path, size: int) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    tokenizer.model_max_length = 512  # room for the image tokens (the SD tokenizer stops at the title length)
    tokenizer.init_kwargs.pop("max_length", None)  # a saved call default that would truncate every prompt to it
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    model = zoo.build_llava(zoo_cfg, tokenizer, size)
    processor = LlavaProcessor(image_processor=zoo.image_processor(size), tokenizer=tokenizer, patch_size=4,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@torch.no_grad()
def _judge_base_samples(sd_dir: Path, judge, titles, labels, zoo_cfg: ZooConfig) -> dict:
    """Load the saved folder the way a user would and judge its samples for held-out titles."""
    pipe = StableDiffusionPipeline.from_pretrained(str(sd_dir))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(titles, num_inference_steps=zoo_cfg.eval_inference_steps, guidance_scale=zoo_cfg.eval_guidance_scale,
               generator=torch.Generator().manual_seed(zoo_cfg.seed), output_type="pt")
    pixels = (out.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # (N, H, W, 3)
    atomic_write_png(sd_dir.parent / "base_samples.png",  # one row per genre, held-out titles
                     image_grid(pixels, columns=zoo_cfg.eval_samples_per_genre))
    return {"genre_accuracy": accuracy(judge, out.images, labels), "chance": 1.0 / int(labels.max() + 1),
            "samples": len(titles), "grid": "models/base_samples.png"}


def _save_folder(final: Path, write) -> None:
    """Write a model folder into a temporary sibling, then swap it in: a crash never leaves half a folder."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
