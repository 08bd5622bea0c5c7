"""How much of φ the world CLIP's image embedding carries: held-out linear probes, per φ dimension.

Builds a CoverWorld in memory (no files), trains its CLIP exactly as `build_base_models` does
(`build.world_tokenizer` + `build.train_world_clip`), then fits a ridge probe from the pooled, L2-normalised image
embedding to each φ dimension on 80% of the items and scores R² on the other 20% (every variant of a held-out item
stays out of the fit, so the probe cannot lean on an item's other covers). Rewards and the preference model read
looks from this embedding, so each dimension should probe at R² ≥ 0.8.

    python benchmarks/clip_probe.py --world-seed 0 1
    python benchmarks/clip_probe.py --set zoo.clip_steps=1500 --set zoo.threads=1

Prints a markdown table: R² per φ dimension and world seed, genre retrieval (build.py's `_genre_retrieval`) and
CLIP training seconds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from icg_rl.config import load_config
from icg_rl.models import build, pretrain
from icg_rl.world.features import FEATURE_NAMES
from icg_rl.world.generate import generate_world
from icg_rl.world.genres import genres_for

HELDOUT_SHARE = 0.2
RIDGE = 1e-3


def probe_r2(embeddings: np.ndarray, phi: np.ndarray, item_ids, seed: int = 0) -> dict[str, float]:
    """Held-out R² of a ridge probe embeddings (N, D) -> each column of phi (N, 5). A random 20% of the distinct
    item_ids (N,) is held out with all its rows; the probe has an intercept. -> {feature name: R²}."""
    item_ids = np.asarray(item_ids)
    items = np.unique(item_ids)
    rng = np.random.default_rng(seed)
    test = np.isin(item_ids, rng.choice(items, max(1, int(len(items) * HELDOUT_SHARE)), replace=False))
    x = np.c_[np.asarray(embeddings, dtype=np.float64), np.ones(len(item_ids))]
    gram = x[~test].T @ x[~test] + RIDGE * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, x[~test].T @ phi[~test])  # (D + 1, 5)
    residual = ((phi[test] - x[test] @ weights) ** 2).sum(axis=0)
    total = ((phi[test] - phi[test].mean(axis=0)) ** 2).sum(axis=0)
    return {name: float(1.0 - r / t) for name, r, t in zip(FEATURE_NAMES, residual, total)}


@torch.no_grad()
def image_embeddings(clip, images: torch.Tensor) -> np.ndarray:
    """Pooled, L2-normalised CLIP image embeddings of images [N, 3, H, W] in [0, 1] -> (N, D)."""
    out = clip.get_image_features(pixel_values=pretrain.clip_pixels(images))
    return F.normalize(getattr(out, "pooler_output", out), dim=-1).numpy()


def run_seed(config: str | None, overrides: list[str], world_seed: int) -> dict:
    """One world seed: build the world, train its CLIP as build.py does, probe. -> R² per dimension + extras."""
    cfg = load_config(config, [*overrides, f"world.seed={world_seed}"])
    torch.manual_seed(cfg.zoo.seed)  # as build_base_models: same CLIP initialisation
    torch.set_num_threads(cfg.zoo.threads)
    world = generate_world(cfg.world, progress=False)
    variants = world.variants.merge(world.items[["item_id", "title", "genres"]], on="item_id")
    images = torch.from_numpy(np.stack([world.images[p] for p in variants["image_path"]]))
    images = images.permute(0, 3, 1, 2).float() / 255.0
    tokenizer = build.world_tokenizer(world.items, world.variants, cfg.zoo)
    start = time.perf_counter()
    clip, _ = build.train_world_clip(tokenizer, variants, images, cfg.world.image_size, cfg.zoo,
                                     torch.Generator().manual_seed(cfg.zoo.seed), progress=False)
    seconds = time.perf_counter() - start
    phi = variants[[f"phi_{name}" for name in FEATURE_NAMES]].to_numpy()
    result = probe_r2(image_embeddings(clip, images), phi, variants["item_id"], seed=0)
    names = [g.name for g in genres_for(cfg.world.num_genres)]
    labels = torch.tensor([names.index(g[0]) for g in variants["genres"]])
    titles, title_labels = build._heldout_titles(cfg.world, set(world.items["title"]), cfg.zoo)
    result["genre retrieval"] = build._genre_retrieval(clip, tokenizer, images, labels, titles, title_labels)
    result["CLIP training s"] = seconds
    return result


def markdown_table(results: dict[int, dict]) -> str:
    seeds = list(results)
    rows = ["| | " + " | ".join(f"world seed {s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
    for key in [*FEATURE_NAMES, "genre retrieval", "CLIP training s"]:
        label = f"R² {key}" if key in FEATURE_NAMES else key
        digits = 1 if key == "CLIP training s" else 3
        rows.append(f"| {label} | " + " | ".join(f"{results[s][key]:.{digits}f}" for s in seeds) + " |")
    worst = [min(results[s][k] for k in FEATURE_NAMES) for s in seeds]
    rows.append("| min R² | " + " | ".join(f"{w:.3f}" for w in worst) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-seed", type=int, nargs="+", default=[0], help="world seed(s) to probe (default 0)")
    parser.add_argument("--config", default=None, help="config YAML (default configs/coverworld.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (e.g. zoo.clip_steps=1500, zoo.threads=1)")
    args = parser.parse_args(argv)
    results = {seed: run_seed(args.config, args.set, seed) for seed in args.world_seed}
    print(markdown_table(results))


if __name__ == "__main__":
    main()
