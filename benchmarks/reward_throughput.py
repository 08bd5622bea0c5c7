"""Scoring throughput (images/s) of each reward, in-process, on the CoverWorld build's models.

    python benchmarks/reward_throughput.py [--config configs/coverworld.yaml] [--batch 64] [--repeats 5]

Prints one row per reward: forward-only and forward+backward (reward backprop) throughput, measured in one run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from icg_rl.config import load_config
from icg_rl.rewards.registry import build_reward


def batch_for(size: int, image_size: int, users: list[str], items: list[str]) -> dict:
    rng = np.random.default_rng(0)
    return {"title": ["The Haunted Crypt"] * size,
            "reference_image": rng.integers(0, 255, (size, image_size, image_size, 3), dtype=np.uint8),
            "has_reference": np.ones(size, bool), "user_id": np.array([users[i % len(users)] for i in range(size)]),
            "history": np.array([[items[(i + j) % len(items)] for j in range(4)] for i in range(size)], dtype=object)}


def throughput(reward, images: torch.Tensor, batch: dict, repeats: int, backward: bool) -> float:
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        x = images.clone().requires_grad_(backward)
        start = time.perf_counter()
        with torch.set_grad_enabled(backward):
            scores = reward.score(x, batch)
            if backward:
                scores.sum().backward()
        times.append(time.perf_counter() - start)
    return len(images) / float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    import pandas as pd

    users = pd.read_parquet(f"{cfg.world.dir}/users.parquet")["user_id"].tolist()
    items = pd.read_parquet(f"{cfg.world.dir}/items.parquet")["item_id"].tolist()
    size = cfg.world.image_size
    images = torch.rand(args.batch, 3, size, size)
    batch = batch_for(args.batch, size, users, items)
    print(f"{'reward':<12}{'images/s':>12}{'images/s fwd+bwd':>18}   (batch {args.batch}, {size}px, "
          f"{args.threads} threads)")
    for name in ("aesthetic", "clip_t", "clip_i", "preference"):
        reward = build_reward(name, cfg.reward, cfg.world.dir)
        forward = throughput(reward, images, batch, args.repeats, backward=False)
        both = throughput(reward, images, batch, args.repeats, backward=True)
        print(f"{name:<12}{forward:>12.0f}{both:>18.0f}")


if __name__ == "__main__":
    main()
