"""Run tracking (docs/architecture.md §8): every metric goes to `metrics.jsonl` in the run folder, and to wandb unless
`train.tracker=none` (offline by default: `WANDB_MODE=online` plus a login syncs it live, `wandb sync` later).
Reward curves and sample grids are also written as PNG, so a run is readable with no tracker at all."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from icg_rl.io import atomic_write_bytes

log = logging.getLogger(__name__)


class Tracker:
    def __init__(self, kind: str, out: str | Path, config: dict, name: str | None = None):
        if kind not in ("wandb", "none"):
            raise ValueError(f"train.tracker: got {kind!r}; allowed: 'wandb', 'none'")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.history_path = self.out / "metrics.jsonl"
        self.history: list[dict] = []
        self.run = None
        if kind == "wandb":
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(project="icg_rl", dir=str(self.out), config=config, name=name,
                                  settings=wandb.Settings(console="off", x_disable_stats=True))
            log.info("wandb run %s (%s) in %s", self.run.id, os.environ["WANDB_MODE"], self.out / "wandb")

    def log(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step} | {k: float(v) for k, v in metrics.items()}
        self.history.append(row)
        with open(self.history_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(image)}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def plot_curves(history: list[dict], prefixes: tuple[str, ...], path: str | Path, title: str) -> list[str]:
    """One panel per metric whose name starts with one of `prefixes` (x = step); returns the metrics drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for row in history for k in row if k.startswith(prefixes) and not k.endswith("_std")})
    if not keys:
        return []
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        steps, values = zip(*[(row["step"], row[key]) for row in history if key in row])
        if len(values) < 30:
            ax.plot(steps, values, marker=".", linewidth=1.2)
        else:  # per-iteration noise in light grey, a moving average on top
            window = max(5, len(values) // 25)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps, values, color="0.8", linewidth=0.6)
            ax.plot(steps[window - 1:], smooth, linewidth=1.4, label=f"mean of {window}")
            ax.legend(fontsize=7, loc="best")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return keys
