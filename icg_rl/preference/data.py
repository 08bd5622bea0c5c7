"""Impressions → training rows for the preference model: (user index, history indices, cover index, label).

History = the user's clicked items strictly before the impression (no look-ahead), latest `history_len`. Cover =
the image the user was shown (the variant when the log names one, else the item's reference image). Logs with no
shown-but-not-clicked rows (PixelRec) get sampled negatives: random items the user never interacted with.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from icg_rl.data.history import histories_before
from icg_rl.data.schema import RecDataset


def cover_paths(data: RecDataset, frame: pd.DataFrame) -> pd.Series:
    """Image path (relative to the root) of what each row showed; None for a text-only item."""
    item_path = frame["item_id"].map(dict(zip(data.items["item_id"], data.items["image_path"])))
    if data.variants is None or "variant_id" not in frame:
        return item_path
    variant_path = pd.Series(list(zip(frame["item_id"], frame["variant_id"])), index=frame.index).map(
        dict(zip(zip(data.variants["item_id"], data.variants["variant_id"]), data.variants["image_path"])))
    return variant_path.where(variant_path.notna(), item_path)


def with_negatives(log: pd.DataFrame, items: np.ndarray, per_positive: int, seed: int) -> pd.DataFrame:
    """Add `per_positive` sampled unclicked items per click when the log has no negatives of its own."""
    if (~log["clicked"]).any():
        return log
    rng = np.random.default_rng(seed)
    seen = log.groupby("user_id")["item_id"].agg(set).to_dict()
    rows = []
    for user, ts in zip(log["user_id"], log["timestamp"]):
        candidates = rng.choice(items, size=per_positive * 3)
        fresh = [i for i in candidates if i not in seen[user]][:per_positive]
        rows += [{"user_id": user, "item_id": i, "timestamp": ts, "clicked": False, "variant_id": None}
                 for i in fresh]
    extra = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "clicked", "variant_id"])
    for column in set(log.columns) - set(extra.columns):
        extra[column] = log[column].iloc[0] if column == "split" else None
    return pd.concat([log, extra], ignore_index=True)


def impression_rows(data: RecDataset, split: str, history_len: int, negatives_per_positive: int = 4,
                    seed: int = 0) -> pd.DataFrame:
    """The split's impressions with history, cover path and label (negatives sampled if the log has none)."""
    log = data.interactions
    if "split" in log.columns:
        log = log[log["split"] == split]
    log = with_negatives(log.reset_index(drop=True), data.items["item_id"].to_numpy(), negatives_per_positive,
                         seed)
    clicks = data.interactions[data.interactions["clicked"]]
    return pd.DataFrame({
        "user_id": log["user_id"].to_numpy(), "item_id": log["item_id"].to_numpy(),
        "history": histories_before(log, clicks, history_len),
        "variant_id": log["variant_id"].to_numpy() if "variant_id" in log else None,
        "cover": cover_paths(data, log).to_numpy(), "label": log["clicked"].to_numpy().astype(np.float32),
    })
