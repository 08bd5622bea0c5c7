"""What recomputing the denoiser's activations costs the reward-only recipe's update (`algo.gradient_checkpointing`).

    python benchmarks/checkpointing_cost.py [--config configs/coverworld_nft.yaml] [--repeats 2] [KEY=VALUE ...]

The critic's climb and reward backprop run the sampler's last K steps with gradient (`rl/backprop.py`
denoise_suffix); with `algo.gradient_checkpointing` each UNet call's activations are recomputed in backward. That
saves memory on real checkpoints and costs time everywhere. In process (`rl/local.py`), one trainer per setting,
alternating: 21 iterations past the critic's warm-up, then 12 timed ones. Prints the update's and the whole
iteration's seconds per setting, and how far the two trainers' weights are apart after the same iterations
(recomputation is exact: 0 expected).
"""

from __future__ import annotations

import argparse
import time

import torch

from icg_rl.config import load_config
from icg_rl.rl.local import LocalTrainer


def timed_run(config: str, overrides: list[str], checkpointing: bool, warm: int = 21, timed: int = 12):
    cfg = load_config(config, [*overrides, f"algo.gradient_checkpointing={str(checkpointing).lower()}"])
    trainer = LocalTrainer(cfg)
    for _ in range(warm):
        trainer.step()
    updates, start = [], time.perf_counter()
    for _ in range(timed):
        updates.append(trainer.step()["time/update"])
    seconds = (time.perf_counter() - start) / timed
    weights = [p.detach().clone() for p in trainer.pipe.trainable_parameters()]
    return sum(updates) / timed, seconds, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/coverworld_nft.yaml")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(2)
    overrides = ["train.tracker=none", *args.overrides]
    rows, weights = [], {}
    for repeat in range(args.repeats):
        for checkpointing in (True, False):
            update, iteration, weights[checkpointing] = timed_run(args.config, overrides, checkpointing)
            rows.append((repeat, checkpointing, update, iteration))
    print("| repeat | gradient_checkpointing | update s | iteration s |\n|---|---|---|---|")
    for repeat, checkpointing, update, iteration in rows:
        print(f"| {repeat} | {checkpointing} | {update:.3f} | {iteration:.3f} |")
    apart = max(float((a - b).abs().max()) for a, b in zip(weights[True], weights[False]))
    print(f"largest weight difference between the settings after the same iterations: {apart:.3g}")


if __name__ == "__main__":
    main()
