"""The one table schema every data source is loaded into (docs/architecture.md §5).

items(item_id: str, title: str, genres: list[str], image_path: str | None)
users(user_id: str)                                   (+ any source-specific columns)
interactions(user_id: str, item_id: str, timestamp: int64 seconds, clicked: bool, rating: float (NaN when none),
             variant_id: str | None)

Ids are strings for every source, so MovieLens' ints, PixelRec's ids and CoverWorld's ids need no special cases
downstream. `image_path` is relative to the dataset root (or None when the item has no reference image: text-only
items must work everywhere). `clicked` is the positive signal: a click (CoverWorld, PixelRec) or rating ≥ the
configured threshold (MovieLens); rows that were shown but not clicked have clicked=False.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ITEM_COLUMNS = {"item_id": "string", "title": "string", "genres": "object", "image_path": "object"}
USER_COLUMNS = {"user_id": "string"}
INTERACTION_COLUMNS = {
    "user_id": "string",
    "item_id": "string",
    "timestamp": "int64",
    "clicked": "bool",
    "rating": "float64",
    "variant_id": "object",
}


class DataFileError(ValueError):
    """A malformed data file: names the file, the (1-based) line when known, and what is wrong."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass
class RecDataset:
    """Items, users and interactions of one source, in the schema above, plus where its images live."""

    kind: str
    root: Path
    items: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame
    skipped_rows: dict[str, int] = field(default_factory=dict)  # file name -> rows skipped (skip mode only)
    variants: pd.DataFrame | None = None  # item_id, variant_id, image_path: alternative covers, if any
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)  # source-specific tables (e.g. aesthetic ratings)

    def __post_init__(self) -> None:
        self.items = conform(self.items, ITEM_COLUMNS, "items")
        self.users = conform(self.users, USER_COLUMNS, "users")
        self.interactions = conform(self.interactions, INTERACTION_COLUMNS, "interactions")
        validate_references(self)

    def image_file(self, item_id: str) -> Path | None:
        """Absolute path of the item's reference image, or None for a text-only item."""
        rel = self.items.loc[self.items["item_id"] == item_id, "image_path"]
        if rel.empty or (path := optional_str(rel.iloc[0])) is None:
            return None
        return self.root / path


def conform(frame: pd.DataFrame, columns: dict[str, str], table: str) -> pd.DataFrame:
    """Check the required columns exist and cast them to the schema's dtypes (extra columns are kept)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{table} table lacks column(s) {missing}; the schema needs {list(columns)}")
    frame = frame.copy()
    for column, dtype in columns.items():
        if dtype == "object":
            continue
        frame[column] = frame[column].astype(dtype)
    if table == "items":
        frame["genres"] = frame["genres"].map(lambda g: [str(x) for x in g] if g is not None else [])
        frame["image_path"] = _optional_strings(frame["image_path"])
    if table == "interactions":
        frame["variant_id"] = _optional_strings(frame["variant_id"])
    ordered = list(columns) + [c for c in frame.columns if c not in columns]
    return frame[ordered].reset_index(drop=True)


def _optional_strings(column: pd.Series) -> pd.Series:
    """Strings or None (never NaN), as an object column: pandas' string inference would turn None into NaN."""
    return pd.Series([optional_str(v) for v in column], index=column.index, dtype=object)


def optional_str(value: object) -> str | None:
    """An optional text field (an image path, a variant id) as a string, or None for every spelling of "none".

    Lookups on pandas columns turn None into NaN (object/str columns) or pd.NA (all-missing or string columns), and
    `pd.NA != pd.NA` is neither True nor False, so `is not None` / `v == v` checks let them through or raise; this is
    the one test for "no image" (None, NaN, pd.NA, "") that every image consumer uses.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if np.isscalar(value) and not isinstance(value, str) and pd.isna(value):  # NaN of any float type
        return None
    return str(value) or None


def validate_references(data: RecDataset) -> None:
    """Every interaction must point at a known user and item; ids must be unique."""
    for table, frame, key in (("items", data.items, "item_id"), ("users", data.users, "user_id")):
        dup = frame[key][frame[key].duplicated()]
        if len(dup):
            raise ValueError(f"{data.kind} {table}: duplicate {key} {dup.iloc[0]!r} ({len(dup)} duplicates)")
    for key, frame in (("item_id", data.items), ("user_id", data.users)):
        unknown = ~data.interactions[key].isin(frame[key])
        if unknown.any():
            raise ValueError(
                f"{data.kind} interactions: {int(unknown.sum())} rows name an unknown {key}, "
                f"e.g. {data.interactions.loc[unknown, key].iloc[0]!r}"
            )


def users_from_interactions(interactions: pd.DataFrame) -> pd.DataFrame:
    """A users table for sources that have none: one row per user seen in the interactions."""
    return pd.DataFrame({"user_id": np.unique(interactions["user_id"].astype(str))})
