"""Impressions → training rows for the preference model: (user, history window, cover, item, label), as columns.

History = the user's clicked items strictly before the impression (no look-ahead), latest `history_len`. Cover =
the image the user was shown (the variant when the log names one, else the item's reference image; None for a
text-only item, which the model scores by its title's features).

Every impression keeps its interaction's `split` (data/splits.py), so validation and test impressions come only
from valid / test rows and held-out users, never from training rows.

Click-only logs (PixelRec; MovieLens, whose ratings are read as clicks: data/movielens.py) record what users chose,
not what they were shown and skipped, so negatives are sampled as recommender papers do: `per_positive` items per
click, drawn with probability ∝ (training interactions + 1)^0.75 (word2vec's smoothed unigram, common in recsys
samplers: popular items are drawn more often, so a model cannot win by merely ranking popular items first, but rare
items still appear; the +1 lets items unseen in training be drawn; counting training rows only keeps the test log
out of the sampler). A negative is never an item the user interacted with in any split. Each split's negatives are
anchored on that split's clicks (same user, time and split), so evaluation impressions are built from held-out rows
only. They are drawn from the same distribution as the training ones: also excluding the user's training negatives
would push evaluation negatives into the long tail on small catalogues (an ml-100k heavy user's training negatives
cover most popular movies), which flatters the popularity baseline.

Impressions are columns of codes (data/columnar.py): a row is its user, item and cover codes, its label and the
[start, end) slice of the click history it may see — ~30 bytes, whatever `history_len` is; the [B, H] history
window is built per batch. `Impressions.frame` turns a split into readable rows (ids, history keys, cover path) for
reports and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from icg_rl.data.columnar import ClickHistory, Covers, cover_codes, covers_of, split_codes
from icg_rl.data.schema import RecDataset, codes, optional_str
from icg_rl.data.sorting import sorted_unique
from icg_rl.data.splits import SPLITS

CLICK_ONLY_KINDS = ("movielens", "pixelrec")  # sources that log choices, not impressions: negatives are sampled
POPULARITY_EXPONENT = 0.75
MAX_REDRAWS = 50  # rounds of redrawing rejected negatives; what is still rejected after them is dropped


def cover_paths(data: RecDataset, frame: pd.DataFrame) -> pd.Series:
    """Image path (relative to the root) of what each row showed; None (never NaN/NA) for a text-only item."""
    item_path = frame["item_id"].map(dict(zip(data.items["item_id"], data.items["image_path"])))
    if data.variants is not None and "variant_id" in frame:
        variant_path = pd.Series(list(zip(frame["item_id"], frame["variant_id"])), index=frame.index).map(
            dict(zip(zip(data.variants["item_id"], data.variants["variant_id"]), data.variants["image_path"])))
        item_path = variant_path.where(variant_path.notna(), item_path)
    return pd.Series([optional_str(p) for p in item_path], index=frame.index, dtype=object)


def is_click_only(data: RecDataset) -> bool:
    """Whether the log needs sampled negatives: a click-only source, or any log without a single non-click."""
    return data.kind in CLICK_ONLY_KINDS or not (~data.interactions["clicked"]).any()


def sample_negatives(user: np.ndarray, item: np.ndarray, split: np.ndarray, clicked: np.ndarray, num_items: int,
                     per_positive: int, seed: int,
                     exponent: float = POPULARITY_EXPONENT) -> tuple[np.ndarray, np.ndarray]:
    """`per_positive` sampled negatives per click of a coded log (user / item codes, split codes, clicked flags;
    every split): (owner, item) as int32 — the log row each negative copies its user, time and split from, and the
    item drawn. Vectorised draws with seeded redraws of rejected ones (see the module docstring for the rule); same
    inputs and seed, same draws."""
    width = np.int64(num_items)
    interacted = sorted_unique(user.astype(np.int64) * width + item)  # (user, item) keys of any split
    weights = (np.bincount(item[split == SPLITS.index("train")], minlength=num_items) + 1.0) ** exponent
    probs = weights / weights.sum()
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.flatnonzero(clicked).astype(np.int32), per_positive)
    drawn = _draw(rng, probs, user[owner], width, interacted)
    keep = drawn >= 0
    return owner[keep], drawn[keep]


def _draw(rng: np.random.Generator, probs: np.ndarray, user: np.ndarray, width: np.int64,
          forbidden: np.ndarray) -> np.ndarray:
    """Item codes (int32) drawn ∝ probs, one per row, redrawn while (user, item) — key user·width + item — is in the
    sorted `forbidden` keys; -1 where every redraw was forbidden (a user who interacted with nearly the whole
    catalogue)."""
    picked = rng.choice(len(probs), size=len(user), p=probs).astype(np.int32)
    pending = np.arange(len(user))
    for round_ in range(MAX_REDRAWS + 1):
        pending = pending[_contains(forbidden, user[pending].astype(np.int64) * width + picked[pending])]
        if not len(pending):
            break
        if round_ == MAX_REDRAWS:
            picked[pending] = -1
        else:
            picked[pending] = rng.choice(len(probs), size=len(pending), p=probs)
    return picked


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which `keys` are in `sorted_keys` (a sorted unique array): one binary search each, no hashing."""
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys


@dataclass
class Impressions:
    """Every split's impressions as columns — split -> source (the log row whose user and time it has: the row
    itself, or for a sampled negative its click's), item, cover, label (uint8), end (where its history stops in
    `history`) — plus the log's user codes and times, the cover table and the click history. ~14 bytes a row."""

    data: RecDataset
    covers: Covers
    history: ClickHistory
    history_len: int
    user: np.ndarray  # int32 per log row
    timestamp: np.ndarray  # int64 per log row
    splits: dict[str, dict[str, np.ndarray]]

    def sizes(self) -> dict[str, int]:
        return {split: len(columns["label"]) for split, columns in self.splits.items()}

    def users(self, split: str, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        return self.user[self.splits[split]["source"][rows]]

    def starts(self, split: str, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        return self.history.starts(self.users(split, rows), self.splits[split]["end"][rows], self.history_len)

    def windows(self, split: str, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """[B, history_len] cover codes of the rows' histories (oldest first, -1 padded)."""
        return self.history.windows(self.starts(split, rows), self.splits[split]["end"][rows], self.history_len)

    def frame(self, split: str) -> pd.DataFrame:
        """A split as readable rows (user_id, item_id, timestamp, history keys, variant_id, cover path, label,
        split): one Python object per row, for reports and tests on small splits."""
        c = self.splits[split]
        variant = [key.split("|", 1)[1] if "|" in key else None for key in self.covers.keys[c["cover"]]]
        histories = [list(self.covers.keys[row[row >= 0]]) for row in self.windows(split)]
        return pd.DataFrame({
            "user_id": self.data.users["user_id"].to_numpy()[self.users(split)].astype(str),
            "item_id": self.data.items["item_id"].to_numpy()[c["item"]].astype(str),
            "timestamp": self.timestamp[c["source"]], "history": pd.Series(histories, dtype=object),
            "variant_id": pd.Series(variant, dtype=object),
            "cover": pd.Series(self.covers.paths[c["cover"]], dtype=object),
            "label": c["label"].astype(np.float32), "split": split,
        })


def impressions(data: RecDataset, history_len: int, negatives_per_positive: int = 4, seed: int = 0) -> Impressions:
    """Each split's impressions (train, valid, test, heldout) with their history ends, covers and labels;
    negatives are sampled for click-only logs (see the module docstring). No Python object per row, and each
    split is built on its own, so the transient arrays are a split's, not the whole log's."""
    log = data.interactions
    if "split" not in log.columns:
        raise ValueError(f"this {data.kind} dataset has no 'split' column: load it with icg_rl.data.load_dataset or "
                         "load_from_config, which split every source by time per user (data/splits.py)")
    covers = covers_of(data)
    user, item, split = codes(log["user_id"]), codes(log["item_id"]), split_codes(log)
    timestamp, clicked = log["timestamp"].to_numpy(np.int64), log["clicked"].to_numpy(bool)
    cover = cover_codes(data, log, covers)
    owner = drawn = np.zeros(0, dtype=np.int32)
    if is_click_only(data):
        owner, drawn = sample_negatives(user, item, split, clicked, len(data.items), negatives_per_positive, seed)
    history = ClickHistory.of(data, covers)
    offset = np.int32 if len(history) < 2**31 else np.int64
    splits = {}
    for code, name in enumerate(SPLITS):
        rows = np.flatnonzero(split == code).astype(np.int32)
        negatives = np.flatnonzero(split[owner] == code)
        source = np.concatenate([rows, owner[negatives]])  # the split's log rows, then their sampled negatives
        items = np.concatenate([item[rows], drawn[negatives]])
        # a negative shows its item's reference cover; without variants a cover is its item
        covers_shown = items if cover is item else np.concatenate([cover[rows], drawn[negatives]])
        splits[name] = {"source": source, "item": items, "cover": covers_shown,
                        "label": np.concatenate([clicked[rows], np.zeros(len(negatives), bool)]).astype(np.uint8),
                        "end": history.ends(user[source], timestamp[source]).astype(offset)}
    return Impressions(data, covers, history, history_len, user, timestamp, splits)
