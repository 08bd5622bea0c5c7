"""The log as columns of integer codes: what every paper-size path (impressions, pairs, histories) works on.

Nothing here holds a Python object per row. A dataset's interactions carry their ids dictionary-encoded
(data/schema.py), so a row's user and item *are* rows of the users and items tables, and:

- `Covers`: the cover table — every item (its reference cover) then every cover variant, in that order, with its
  key ("item" or "item|variant", data/history.py) and image path. A row's `cover` code is the image it showed.
  Item features (models/item_features.py) and the preference model's item rows use the same order.
- `ClickHistory`: every click as (user, time, cover), sorted by user then time, with per-user offsets (CSR). A
  history is a slice of it: `ends(user, time)` finds where each row's "clicks strictly before" stop, `windows`
  builds the [B, H] matrix of the latest H cover codes (oldest first, -1 padded) inside a batch function, so a
  history costs two integers per row until a batch needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from icg_rl.data.schema import RecDataset, codes, optional_str
from icg_rl.data.sorting import user_time_order
from icg_rl.data.splits import SPLITS

NO_COVER = -1  # history padding in a window of cover codes


@dataclass
class Covers:
    """The cover table: items first (code = item code), then the variants (code = items + variant row)."""

    keys: np.ndarray  # object (N,): "item" or "item|variant"
    paths: np.ndarray  # object (N,): image path relative to the dataset root, or None
    item: np.ndarray  # int32 (N,): the item each cover belongs to
    num_items: int

    def __len__(self) -> int:
        return len(self.keys)


def covers_of(data: RecDataset) -> Covers:
    """The dataset's cover table (see `Covers`)."""
    items = data.items
    keys, paths = [items["item_id"].astype(str).to_numpy(dtype=object)], [items["image_path"].to_numpy(dtype=object)]
    owner = [np.arange(len(items), dtype=np.int32)]
    if data.variants is not None and len(data.variants):
        v = data.variants
        item_ids = v["item_id"].astype(str).to_numpy(dtype=object)
        keys.append(np.char.add(np.char.add(item_ids.astype(str), "|"), v["variant_id"].astype(str).to_numpy(str))
                    .astype(object))
        paths.append(v["image_path"].to_numpy(dtype=object))
        owner.append(pd.Index(items["item_id"].astype(str)).get_indexer(item_ids).astype(np.int32))
    paths_all = np.concatenate(paths)
    paths_all = np.array([optional_str(p) for p in paths_all], dtype=object)  # one spelling of "no image"
    return Covers(np.concatenate(keys), paths_all, np.concatenate(owner), len(items))


def cover_codes(data: RecDataset, frame: pd.DataFrame, covers: Covers) -> np.ndarray:
    """The cover each row of an interactions `frame` showed: its variant's when the log names one, else its item's."""
    item = codes(frame["item_id"])
    if len(covers) == covers.num_items or "variant_id" not in frame:
        return item
    variant = frame["variant_id"]
    named = variant.notna().to_numpy() & (variant.astype(str) != "").to_numpy()
    out = item.copy()
    if named.any():
        keys = np.char.add(np.char.add(frame["item_id"][named].astype(str).to_numpy(str), "|"),
                           variant[named].astype(str).to_numpy(str))
        found = pd.Index(covers.keys[covers.num_items:]).get_indexer(keys.astype(object))
        out[np.flatnonzero(named)[found >= 0]] = covers.num_items + found[found >= 0]
    return out.astype(np.int32)


def split_codes(frame: pd.DataFrame) -> np.ndarray:
    """The `split` column as int8 codes into SPLITS (a categorical, or strings from an older world build)."""
    split = frame["split"]
    if isinstance(split.dtype, pd.CategoricalDtype) and tuple(split.cat.categories) == SPLITS:
        return split.cat.codes.to_numpy().astype(np.int8)
    return pd.Index(SPLITS).get_indexer(split.astype(str)).astype(np.int8)


class ClickHistory:
    """Every click, sorted by (user, time), as one array of cover codes with per-user offsets."""

    def __init__(self, user: np.ndarray, timestamp: np.ndarray, cover: np.ndarray, num_users: int):
        order = user_time_order(user, timestamp)
        self.cover = cover[order].astype(np.int32)
        users, times = user[order].astype(np.int64), timestamp[order].astype(np.int64)
        self.offsets = np.searchsorted(users, np.arange(num_users + 1)).astype(np.int64)
        self.t0 = int(times.min()) if len(times) else 0
        self.span = (int(times.max()) - self.t0 + 3) if len(times) else 3
        # one sorted int64 key per click (user major, time minor) makes `ends` a single searchsorted; when users ×
        # time span would overflow int64, times are replaced by their dense rank (same order, smaller span)
        self._ranks = None
        if (num_users + 1) * self.span >= 2**62:
            self._ranks = np.unique(times)
            times, self.t0, self.span = np.searchsorted(self._ranks, times), 0, len(self._ranks) + 3
        self.key = users * self.span + (times - self.t0 + 1)

    @classmethod
    def of(cls, data: RecDataset, covers: Covers) -> ClickHistory:
        """The clicks of a whole dataset (every split: a history is what happened before, whatever the split)."""
        log = data.interactions
        clicked = log["clicked"].to_numpy()
        clicks = log[clicked]
        return cls(codes(clicks["user_id"]), clicks["timestamp"].to_numpy(), cover_codes(data, clicks, covers),
                   len(data.users))

    def __len__(self) -> int:
        return len(self.cover)

    def ends(self, user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
        """For each (user, time): the index just past the user's last click strictly before that time."""
        time = np.asarray(timestamp, dtype=np.int64)
        if self._ranks is not None:
            time = np.searchsorted(self._ranks, time, side="left")  # rank of the first click time >= it
        relative = np.clip(time - self.t0 + 1, 0, self.span - 1)
        return np.searchsorted(self.key, np.asarray(user, dtype=np.int64) * self.span + relative, side="left")

    def starts(self, user: np.ndarray, end: np.ndarray, length: int) -> np.ndarray:
        """Where the latest `length` clicks before `end` begin (not before the user's first click)."""
        return np.maximum(self.offsets[np.asarray(user, dtype=np.int64)], np.asarray(end, dtype=np.int64) - length)

    def windows(self, start: np.ndarray, end: np.ndarray, length: int) -> np.ndarray:
        """[B, length] cover codes of clicks start..end (oldest first), NO_COVER padded at the end."""
        return windows_from(self.cover, start, end, length)


def windows_from(cover: np.ndarray, start: np.ndarray, end: np.ndarray, length: int) -> np.ndarray:
    """`ClickHistory.windows` from the shipped cover array alone (inside a Ray worker's batch function)."""
    start, end = np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64)
    index = start[:, None] + np.arange(length, dtype=np.int64)[None, :]
    if not len(cover):
        return np.full(index.shape, NO_COVER, dtype=np.int32)
    return np.where(index < end[:, None], cover[np.minimum(index, len(cover) - 1)], NO_COVER).astype(np.int32)
