"""Run tracking (docs/architecture.md §8): every metric goes to `metrics.jsonl` in the run folder, and to wandb unless
`train.tracker=none` (offline by default: `WANDB_MODE=online` plus a login syncs it live, `wandb sync` later).
Reward curves and sample grids are also written as PNG, so a run is readable with no tracker at all."""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass
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

    def rewind(self, step: int) -> None:
        """The run went back to `step` (a rebuilt learner group redoes the iterations after its checkpoint): rows
        after it leave the history and `metrics.jsonl`, so the curves show each iteration once. (wandb keeps what
        it was sent, and skips a step it has already seen, with a warning.)"""
        self.history = [row for row in self.history if row["step"] <= step]
        atomic_write_bytes(self.history_path, "".join(json.dumps(row) + "\n" for row in self.history).encode())

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(image)}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


# The headline of a CoverWorld run: true CTR on the held-out pairs of the policy, the same policy with the user zeroed,
# the items' own covers and a perfect selector of existing covers. Drawn together, since each means something only
# beside the others (the last two are constants of the fixed held-out batch).
CTR_OVERLAY = {"oracle/ctr_icg": "ICG", "oracle/ctr_user_zeroed": "ICG, user zeroed",
               "oracle/ctr_reference": "reference covers", "oracle/ctr_best_variant": "best existing variant"}


@dataclass(frozen=True)
class Panel:
    """One drawn panel: its title, the metrics in it (in legend order) and those drawn as horizontal lines."""

    title: str
    keys: tuple[str, ...]
    constant: tuple[str, ...] = ()


def plot_curves(history: list[dict], prefixes: tuple[str, ...], path: str | Path, title: str) -> list[Panel]:
    """Metrics whose name starts with one of `prefixes` over steps, written as a PNG to `path`; returns the panels
    drawn, in order. When the history has oracle CTRs (CoverWorld), the first panel, spanning the top row, overlays
    `CTR_OVERLAY`'s series (one that never changes as a labelled horizontal line); every other metric then gets a
    panel of its own, and the overlaid CTRs get none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = {k for row in history for k in row if k.startswith(prefixes) and not k.endswith("_std")}
    if not present:
        return []
    overlay = tuple(k for k in CTR_OVERLAY if k in present)
    singles = sorted(present - set(overlay))
    cols = min(3, max(1, len(singles)))
    rows = -(-len(singles) // cols) + (1 if overlay else 0)
    fig = plt.figure(figsize=(4.2 * cols, 2.8 * rows + (0.6 if overlay else 0.0)))
    grid = fig.add_gridspec(rows, cols, height_ratios=[1.25] * bool(overlay) + [1.0] * (rows - bool(overlay)))
    panels = []
    if overlay:
        panels.append(_draw_overlay(fig.add_subplot(grid[0, :]), history, overlay))
    for index, key in enumerate(singles):
        r, c = divmod(index, cols)
        ax = fig.add_subplot(grid[r + bool(overlay), c])
        steps, values = _series(history, key)
        _draw_series(ax, steps, values)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
        panels.append(Panel(key, (key,)))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the suptitle above the panels
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return panels


def _series(history: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(row["step"], row[key]) for row in history if key in row]
    return np.array([s for s, _ in pairs]), np.array([v for _, v in pairs], dtype=float)


def _draw_series(ax, steps: np.ndarray, values: np.ndarray) -> None:
    if len(values) < 30:
        ax.plot(steps, values, marker=".", linewidth=1.2)
    else:  # per-iteration noise in light grey, a moving average on top
        window = max(5, len(values) // 25)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps, values, color="0.8", linewidth=0.6)
        ax.plot(steps[window - 1:], smooth, linewidth=1.4, label=f"mean of {window}")
        ax.legend(fontsize=7, loc="best")


def _draw_overlay(ax, history: list[dict], keys: tuple[str, ...]) -> Panel:
    """The CTR panel: changing series as lines with markers, constant ones as dashed horizontal lines; every
    legend entry ends with the series' last value, the number a reader compares."""
    constant, drawn = [], []
    for key in keys:
        steps, values = _series(history, key)
        drawn.append(values)
        label, color = f"{CTR_OVERLAY[key]} ({values[-1]:.3f})", f"C{list(CTR_OVERLAY).index(key)}"
        if len(values) > 1 and np.ptp(values) <= 1e-9:  # e.g. the reference covers of the fixed held-out batch
            ax.axhline(values[-1], linestyle="--", linewidth=1.2, color=color, label=label)
            constant.append(key)
        else:
            ax.plot(steps, values, marker=".", linewidth=1.6, color=color, label=label)
    low, high = min(v.min() for v in drawn), max(v.max() for v in drawn)
    pad = 0.08 * (high - low) or 0.01
    ax.set_ylim(low - pad, high + pad)  # autoscale leaves no margin at a horizontal line: it would sit on the frame
    ax.set_title("held-out oracle CTR (true P(click) on the held-out pairs)", fontsize=10)
    ax.set_xlabel("training step", fontsize=8)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return Panel("held-out oracle CTR", keys, tuple(constant))
