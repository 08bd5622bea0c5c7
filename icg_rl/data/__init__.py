"""Data sources in one schema (docs/architecture.md §5) and the Ray Data pair stream.

    from icg_rl.data import load_dataset
    data = load_dataset("movielens", "path/to/ml-1m")   # .items, .users, .interactions
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from icg_rl.data.schema import DataFileError, RecDataset

KINDS = ("coverworld", "movielens", "pixelrec")


def load_dataset(kind: Literal["coverworld", "movielens", "pixelrec"], path: str | Path, *,
                 on_bad_row: Literal["error", "skip"] = "error", positive_rating: float = 4.0) -> RecDataset:
    """Load any supported source into the schema; `kind` picks the loader."""
    if kind == "coverworld":
        from icg_rl.data.coverworld import load_coverworld

        return load_coverworld(path)
    if kind == "movielens":
        from icg_rl.data.movielens import load_movielens

        return load_movielens(path, positive_rating=positive_rating, on_bad_row=on_bad_row)
    if kind == "pixelrec":
        from icg_rl.data.pixelrec import load_pixelrec

        return load_pixelrec(path, on_bad_row=on_bad_row)
    raise ValueError(f"data.kind: got {kind!r}; allowed {', '.join(KINDS)}")


def load_from_config(cfg) -> RecDataset:
    """The dataset a full Config names: `data.kind` + `data.path` (None = the CoverWorld build, `world.dir`)."""
    path = cfg.data.path or cfg.world.dir
    return load_dataset(cfg.data.kind, path, on_bad_row=cfg.data.on_bad_row, positive_rating=cfg.data.positive_rating)


__all__ = ["DataFileError", "KINDS", "RecDataset", "load_dataset", "load_from_config"]
