"""The one table schema every data source is loaded into (docs/architecture.md §5).

items(item_id: str, title: str, genres: list[str], image_path: str | None)
users(user_id: str)                                   (+ any source-specific columns)
interactions(user_id, item_id: categorical over the users' / items' ids, timestamp: int64 seconds, clicked: bool,
             rating: float (NaN when none), variant_id: str | None, split: categorical over SPLITS once split)

Ids are strings for every source, so MovieLens' ints, PixelRec's ids and CoverWorld's ids need no special cases
downstream. In the interactions they are dictionary-encoded: pandas categoricals whose categories are the users and
items tables' ids in table order, so a row costs 4 bytes per id instead of a Python string (ml-latest's 33.8M rows),
and a row's code *is* its user's / item's row in those tables, which the columnar paths (data/columnar.py) use.
Values still read as the id strings (`==`, `isin`, iteration).

`image_path` is relative to the dataset root (or None when the item has no reference image: text-only items must
work everywhere). `clicked` is the positive signal: a click (CoverWorld, PixelRec) or rating ≥ the
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
    "user_id": "category",  # encoded against the users / items tables by `RecDataset` (`as_codes`)
    "item_id": "category",
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
        validate_unique(self)
        self.interactions = conform(self.interactions, INTERACTION_COLUMNS, "interactions")
        for key, table in (("item_id", self.items), ("user_id", self.users)):
            self.interactions[key] = as_codes(self.interactions[key], table[key], f"{self.kind} interactions", key)

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
        if dtype in ("object", "category"):
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
    """Strings or None (never NaN), as an object column: pandas' string inference would turn None into NaN.
    Only the values that are not missing go through `optional_str` (a log without variants costs no loop)."""
    values = column.to_numpy(dtype=object)
    out = np.full(len(values), None, dtype=object)
    present = np.flatnonzero(~pd.isna(values))
    if len(present):
        out[present] = [optional_str(v) for v in values[present]]
    return pd.Series(out, index=column.index, dtype=object)


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


def validate_unique(data: RecDataset) -> None:
    """Ids must be unique in the items and users tables."""
    for table, frame, key in (("items", data.items, "item_id"), ("users", data.users, "user_id")):
        dup = frame[key][frame[key].duplicated()]
        if len(dup):
            raise ValueError(f"{data.kind} {table}: duplicate {key} {dup.iloc[0]!r} ({len(dup)} duplicates)")


def as_codes(column: pd.Series, ids: pd.Series, table: str, key: str) -> pd.Series:
    """An id column as a categorical over `ids` (the users / items table's ids, in table order). Every value must
    be one of `ids`: a ValueError names how many rows are not and one of them."""
    categories = pd.Index(ids.astype(str), dtype=object)
    if isinstance(column.dtype, pd.CategoricalDtype):
        if column.cat.categories.equals(categories):
            return column
        recode = categories.get_indexer(column.cat.categories.astype(str))  # old category -> new code
        old = column.cat.codes.to_numpy()
        codes = np.where(old >= 0, recode[np.maximum(old, 0)], -1)
    else:
        codes = categories.get_indexer(column.astype(str))
    unknown = codes < 0
    if unknown.any():
        raise ValueError(f"{table}: {int(unknown.sum())} rows name an unknown {key}, "
                         f"e.g. {column[unknown].iloc[0]!r}")
    return pd.Series(pd.Categorical.from_codes(codes.astype(np.int32), categories=categories), index=column.index,
                     name=column.name)


def codes(column: pd.Series) -> np.ndarray:
    """The int32 codes of an encoded id column (its rows in the users / items table)."""
    return column.cat.codes.to_numpy().astype(np.int32, copy=False)


def users_from_interactions(interactions: pd.DataFrame) -> pd.DataFrame:
    """A users table for sources that have none: one row per user seen in the interactions."""
    return pd.DataFrame({"user_id": np.unique(interactions["user_id"].astype(str))})
