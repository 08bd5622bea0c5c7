"""Loading a CoverWorld build as a dataset, exactly like any other source (the oracle's files are never read)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from icg_rl.data.schema import RecDataset

TABLES = ("items", "users", "interactions", "variants")


def load_coverworld(path: str | Path) -> RecDataset:
    root = Path(path)
    missing = [f"{t}.parquet" for t in TABLES if not (root / f"{t}.parquet").is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: not a CoverWorld build (missing {', '.join(missing)}); "
                                f"build one with `python -m icg_rl.world build --out {root}`")
    tables = {t: pd.read_parquet(root / f"{t}.parquet") for t in TABLES}
    tables["items"]["genres"] = tables["items"]["genres"].map(list)
    extra = {}
    if (root / "aesthetic_ratings.parquet").is_file():
        extra["aesthetic_ratings"] = pd.read_parquet(root / "aesthetic_ratings.parquet")
    return RecDataset("coverworld", root, tables["items"], tables["users"], tables["interactions"],
                      variants=tables["variants"], extra=extra)
