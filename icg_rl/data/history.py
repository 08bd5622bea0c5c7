"""A user's history: the covers they clicked, latest last — the one definition both the ICG user encoder and the
preference model's user tower consume.

A history entry is a *cover key*: "item|variant" when the log says which cover the user saw (CoverWorld's A/B
variants), else the item id. What a user clicked on is the best evidence of their visual taste, so the key points
at the image they actually clicked; lookups fall back to the item when a key is unknown (a client that sends item
ids only).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def cover_key(item_id: str, variant_id: str | None) -> str:
    return f"{item_id}|{variant_id}" if variant_id else str(item_id)


def lookup_key(key: str, table: dict):
    """The table entry for a cover key, falling back to its item (the part before '|'); None when unknown."""
    if key in table:
        return table[key]
    return table.get(key.split("|", 1)[0])


def histories_before(rows: pd.DataFrame, clicks: pd.DataFrame, history_len: int) -> list[list[str]]:
    """For each row (user_id, timestamp): the user's latest `history_len` clicked cover keys strictly before it."""
    if history_len == 0:
        return [[] for _ in range(len(rows))]
    ordered = clicks.sort_values("timestamp", kind="stable")
    variants = ordered["variant_id"] if "variant_id" in ordered else pd.Series([None] * len(ordered))
    keys = np.array([cover_key(i, v) for i, v in zip(ordered["item_id"], variants)], dtype=object)
    by_user = {u: (ordered["timestamp"].to_numpy()[idx], keys[idx])
               for u, idx in ordered.groupby("user_id").indices.items()}
    out = []
    for user, ts in zip(rows["user_id"], rows["timestamp"]):
        times, items = by_user.get(user, (np.empty(0, np.int64), np.empty(0, object)))
        end = int(np.searchsorted(times, ts, side="left"))  # clicks strictly before this row
        out.append(list(items[max(0, end - history_len):end]))
    return out
