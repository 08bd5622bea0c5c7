"""Impressions → training rows for the preference model: (user index, history indices, cover index, label).

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
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from icg_rl.data.history import histories_before
from icg_rl.data.schema import RecDataset, optional_str
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


def sample_negatives(log: pd.DataFrame, items: np.ndarray, per_positive: int, seed: int,
                     exponent: float = POPULARITY_EXPONENT) -> pd.DataFrame:
    """`per_positive` sampled negatives per click of `log` (every split of it, with a `split` column), as rows of
    the log's schema: same user, timestamp and split as their click, clicked=False. Vectorised draws with seeded
    redraws of rejected ones (see the module docstring for the rule); same inputs and seed, same rows."""
    item_index = pd.Index(items)
    item_code = item_index.get_indexer(log["item_id"])
    if (item_code < 0).any():
        raise ValueError(f"interactions name item {log['item_id'][item_code < 0].iloc[0]!r}, which is not in items")
    user_code, _ = pd.factorize(log["user_id"])
    width = np.int64(len(items))
    interacted = np.unique(user_code.astype(np.int64) * width + item_code)  # (user, item) keys of any split
    train = (log["split"] == "train").to_numpy()
    weights = (np.bincount(item_code[train], minlength=len(items)) + 1.0) ** exponent
    probs = weights / weights.sum()
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.flatnonzero(log["clicked"].to_numpy()), per_positive)
    item = _draw(rng, probs, user_code[owner].astype(np.int64) * width, interacted)
    owner, item = owner[item >= 0], item[item >= 0]
    source = log.iloc[owner]
    return pd.DataFrame({
        "user_id": source["user_id"].to_numpy(), "item_id": item_index.to_numpy()[item],
        "timestamp": source["timestamp"].to_numpy(), "clicked": np.zeros(len(owner), dtype=bool),
        "rating": np.full(len(owner), np.nan), "variant_id": np.full(len(owner), None, dtype=object),
        "split": source["split"].to_numpy(),
    })


def _draw(rng: np.random.Generator, probs: np.ndarray, user_key: np.ndarray, forbidden: np.ndarray) -> np.ndarray:
    """Item codes drawn ∝ probs, one per row, redrawn while (user, item) is in the sorted `forbidden` keys; -1 where
    every redraw was forbidden (a user who interacted with nearly the whole catalogue)."""
    picked = rng.choice(len(probs), size=len(user_key), p=probs)
    pending = np.arange(len(user_key))
    for round_ in range(MAX_REDRAWS + 1):
        pending = pending[_contains(forbidden, user_key[pending] + picked[pending])]
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


def impressions(data: RecDataset, history_len: int, negatives_per_positive: int = 4,
                seed: int = 0) -> dict[str, pd.DataFrame]:
    """Each split's impressions (train, valid, test, heldout) with history, cover path and label; negatives are
    sampled for click-only logs (see the module docstring)."""
    log = data.interactions
    if "split" not in log.columns:
        raise ValueError(f"this {data.kind} dataset has no 'split' column: load it with icg_rl.data.load_dataset or "
                         "load_from_config, which split every source by time per user (data/splits.py)")
    if is_click_only(data):
        negatives = sample_negatives(log, data.items["item_id"].to_numpy(), negatives_per_positive, seed)
        log = pd.concat([log[list(negatives.columns)], negatives], ignore_index=True)
    log = log.reset_index(drop=True)
    clicks = data.interactions[data.interactions["clicked"]]
    frame = pd.DataFrame({
        "user_id": log["user_id"].to_numpy(), "item_id": log["item_id"].to_numpy(),
        "timestamp": log["timestamp"].to_numpy(), "history": histories_before(log, clicks, history_len),
        "variant_id": log["variant_id"].to_numpy() if "variant_id" in log else None,
        "cover": cover_paths(data, log).to_numpy(), "label": log["clicked"].to_numpy().astype(np.float32),
        "split": log["split"].to_numpy(),
    })
    return {split: frame[frame["split"] == split].reset_index(drop=True) for split in SPLITS}
