"""Item features: one frozen-CLIP vector per item (and per cover variant) — the L2-normalised image embedding of
its cover, or of its title when it has none (CLIP's joint space keeps them comparable). Users' histories are made
of these, in the ICG user encoder and in the preference model's user tower alike (one definition of a user).

`catalogue_features` computes them once per (embedding model, item table) and caches them on disk
(`data.cache_dir`, default `<dataset>/.icg_cache`): preference, train, evaluate and serve read the same matrix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from icg_rl.data.history import cover_key
from icg_rl.data.schema import RecDataset, optional_str
from icg_rl.io import atomic_write_json, read_image
from icg_rl.models.clip_embedder import CLIPEmbedder
from icg_rl.models.images import to_float_images

log = logging.getLogger("icg_rl.catalogue")
TEXT_BATCH = 1024  # titles per CLIP text forward (86.5K titles at once would need tens of GB of activations)
CACHE_FORMAT = 1


@torch.no_grad()
def embed_image_files(embedder: CLIPEmbedder, paths: list[Path], batch_size: int = 256) -> torch.Tensor:
    """Normalised CLIP image embeddings of image files [N, D] (images resized to CLIP's input size)."""
    out = []
    for start in range(0, len(paths), batch_size):
        images = [read_image(p) for p in paths[start:start + batch_size]]
        size = embedder.image_size
        pixels = [to_float_images(img[None], str(path)) for img, path in zip(images, paths[start:start + batch_size])]
        batch = torch.cat([F.interpolate(x, size=(size, size), mode="bicubic", antialias=True)
                           for x in pixels]).clamp(0, 1)
        out.append(F.normalize(embedder.image_embeds(batch.to(embedder.mean.device)), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, embedder.clip.config.projection_dim)


@torch.no_grad()
def compute_item_features(embedder: CLIPEmbedder, data: RecDataset) -> tuple[list[str], torch.Tensor]:
    """(keys, features [N, D]): one row per item (its reference cover, or its title when it has none) and, when the
    source has cover variants, one per variant under its cover key "item|variant" (data/history.py)."""
    ids = data.items["item_id"].tolist()
    features = torch.zeros(len(ids), embedder.clip.config.projection_dim)
    with_image = [i for i, p in enumerate(data.items["image_path"]) if optional_str(p) is not None]
    if with_image:
        paths = [data.root / data.items["image_path"].iloc[i] for i in with_image]
        features[with_image] = embed_image_files(embedder, paths)
    text_only = [i for i, p in enumerate(data.items["image_path"]) if optional_str(p) is None]
    if text_only:
        titles = data.items["title"].iloc[text_only].tolist()
        for start in range(0, len(titles), TEXT_BATCH):
            chunk = text_only[start:start + TEXT_BATCH]
            features[chunk] = F.normalize(embedder.text_embeds(titles[start:start + TEXT_BATCH]), dim=-1).cpu()
    if data.variants is None or data.variants.empty:
        return ids, features
    keys = [cover_key(i, v) for i, v in zip(data.variants["item_id"], data.variants["variant_id"])]
    covers = embed_image_files(embedder, [data.root / p for p in data.variants["image_path"]])
    return ids + keys, torch.cat([features, covers])


def save_item_features(folder: str | Path, ids: list[str], features: torch.Tensor) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".item_features.safetensors.tmp"
    save_file({"features": features.contiguous()}, str(tmp))
    tmp.replace(folder / "item_features.safetensors")
    atomic_write_json(folder / "item_ids.json", ids)


def load_item_features(folder: str | Path) -> dict[str, np.ndarray]:
    folder = Path(folder)
    ids = json.loads((folder / "item_ids.json").read_text())
    features = load_file(str(folder / "item_features.safetensors"))["features"]
    return dict(zip(ids, features))


@dataclass
class CatalogueFeatures:
    """One feature row per cover key (items first, then variants: `data.columnar.Covers` order)."""

    keys: np.ndarray  # object (N,)
    matrix: np.ndarray  # float32 (N, D)
    clip_dir: Path

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(zip(self.keys.tolist(), self.matrix))


def catalogue_features(cfg, data: RecDataset, device: str = "cpu") -> CatalogueFeatures:
    """The catalogue's item features, from the cache when this (embedding model, item table) was embedded before,
    else computed and cached (written atomically: a folder renamed into place)."""
    from icg_rl.paths import clip_folder

    clip_dir = clip_folder(cfg.reward, cfg.world.dir)
    folder = cache_root(cfg, data) / f"catalogue-{catalogue_hash(clip_dir, data)}"
    if (folder / "item_ids.json").is_file():
        log.info("catalogue features: reusing %s", folder)
        keys = np.asarray(json.loads((folder / "item_ids.json").read_text()), dtype=object)
        return CatalogueFeatures(keys, load_file(str(folder / "item_features.safetensors"))["features"].numpy(),
                                 clip_dir)
    log.info("catalogue features: embedding %d items%s with %s (cached in %s)", len(data.items),
             "" if data.variants is None else f" and {len(data.variants)} variants", clip_dir, folder)
    embedder = CLIPEmbedder.from_pretrained(clip_dir).to(device)
    keys, features = compute_item_features(embedder, data)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_item_features(tmp, keys, features)
    try:
        tmp.rename(folder)
    except OSError:  # another process cached the same features first
        shutil.rmtree(tmp, ignore_errors=True)
    return CatalogueFeatures(np.asarray(keys, dtype=object), features.numpy(), clip_dir)


def cache_root(cfg, data: RecDataset) -> Path:
    """`data.cache_dir`, or `.icg_cache` in the dataset folder."""
    root = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else data.root / ".icg_cache"
    root.mkdir(parents=True, exist_ok=True)
    return root


def catalogue_hash(clip_dir: Path, data: RecDataset) -> str:
    """What the features depend on: the embedding model's files (names, sizes, modification times) and the
    catalogue (item ids, titles, image paths; the variants' keys and paths)."""
    import pandas as pd

    digest = hashlib.sha256(f"format {CACHE_FORMAT}".encode())
    for path in sorted(p for p in Path(clip_dir).rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(clip_dir)} {stat.st_size} {stat.st_mtime_ns}".encode())
    tables = [data.items[["item_id", "title", "image_path"]]]
    if data.variants is not None and len(data.variants):
        tables.append(data.variants[["item_id", "variant_id", "image_path"]])
    for table in tables:
        digest.update(pd.util.hash_pandas_object(table.astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def policy_context(cfg, data: RecDataset, device: str = "cpu") -> tuple[list[str], dict[str, np.ndarray]]:
    """What an ICG policy is built with besides its weights: the known (training) user ids and the item features
    histories are made of. Computed once (by the driver, or on_cluster) and shipped to every actor that builds the
    policy."""
    from icg_rl.data.columnar import split_codes
    from icg_rl.data.schema import codes

    features = catalogue_features(cfg, data, device)
    log_ = data.interactions
    train = split_codes(log_) == 0 if "split" in log_ else np.ones(len(log_), dtype=bool)
    clicks = np.bincount(codes(log_["user_id"])[train], minlength=len(data.users))  # (users,) training rows
    known = np.flatnonzero(clicks)
    if len(known) > cfg.model.max_user_ids:  # the most active keep an id (stable: ties by table order)
        known = np.sort(known[np.argsort(-clicks[known], kind="stable")[:cfg.model.max_user_ids]])
        log.info("user ids: the %d most active of %d training users get an id embedding (model.max_user_ids); "
                 "the others are their history", len(known), int((clicks > 0).sum()))
    users = np.sort(data.users["user_id"].to_numpy().astype(str)[known])
    return users.tolist(), features.as_dict()


def policy_context_on_cluster(cfg, data: RecDataset, cpus: float, gpus: float) -> tuple[list[str], dict]:
    """policy_context as a Ray task with the reward role's resources (the CLIP models live there): on a GPU cluster a
    real catalogue's CLIP-L embeddings take minutes on a GPU instead of an hour on a CPU-only head node. The task
    reads the data folder itself, as the rollout and reward actors do."""
    import ray

    def run(cfg, data):
        return policy_context(cfg, data, "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")

    return ray.get(ray.remote(run).options(num_cpus=cpus, num_gpus=gpus, max_retries=0).remote(cfg, data))
