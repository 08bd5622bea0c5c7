"""Data sources in one schema (docs/architecture.md §5) and the Ray Data pair stream.

    from icg_rl.data import load_dataset
    data = load_dataset("movielens", "path/to/ml-1m")   # .items, .users, .interactions (with a `split` column)

Owns: the table schema, the CoverWorld / MovieLens / PixelRec / tabular loaders, the split rule, users' histories and
the (user, item) pair stream. May import: config, paths, metrics, io (it knows nothing of models or the world's truth).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from icg_rl.data.schema import DataFileError, RecDataset
from icg_rl.data.splits import SPLITS, SplitRule, split_dataset

KINDS = ("coverworld", "movielens", "pixelrec")
DEFAULT_SPLIT = SplitRule()  # the DataConfig defaults


def load_dataset(kind: Literal["coverworld", "movielens", "pixelrec"], path: str | Path, *,
                 on_bad_row: Literal["error", "skip"] = "error", positive_rating: float = 4.0,
                 posters_dir: str | Path | None = None, split: SplitRule | None = DEFAULT_SPLIT) -> RecDataset:
    """Load any supported source into the schema; `kind` picks the loader.

    Every source comes back split the same way (data/splits.py): CoverWorld with the split stored at build time,
    MovieLens and PixelRec split here by `split` (None: no `split` column, the loader's tables as read).
    """
    if kind == "coverworld":
        from icg_rl.data.coverworld import load_coverworld

        return load_coverworld(path)  # its split was made (by the same rule) when the world was built
    if kind == "movielens":
        from icg_rl.data.movielens import load_movielens

        data = load_movielens(path, positive_rating=positive_rating, on_bad_row=on_bad_row, posters_dir=posters_dir)
    elif kind == "pixelrec":
        from icg_rl.data.pixelrec import load_pixelrec

        data = load_pixelrec(path, on_bad_row=on_bad_row)
    else:
        raise ValueError(f"data.kind: got {kind!r}; allowed {', '.join(KINDS)}")
    return data if split is None else split_dataset(data, split)


def load_from_config(cfg) -> RecDataset:
    """The dataset a full Config names: `data.kind` + `data.path` (None = the CoverWorld build, `world.dir`)."""
    d = cfg.data
    if d.posters_dir is not None and d.kind != "movielens":
        from icg_rl.config import ConfigError

        raise ConfigError(f"data.posters_dir: got {d.posters_dir!r}, but data.kind is {d.kind!r}; only movielens "
                          "reads posters (PixelRec's images/ or cover/ folder and CoverWorld's covers are found "
                          "in the dataset folder)")
    rule = SplitRule(d.valid_fraction, d.test_fraction, d.heldout_user_fraction, d.split_seed)
    return load_dataset(d.kind, d.path or cfg.world.dir, on_bad_row=d.on_bad_row, positive_rating=d.positive_rating,
                        posters_dir=d.posters_dir, split=rule)


__all__ = ["DataFileError", "KINDS", "RecDataset", "SPLITS", "SplitRule", "load_dataset", "load_from_config"]
