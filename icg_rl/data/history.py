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
    """For each row (user_id, timestamp): the user's latest `history_len` clicked cover keys strictly before it.

    Lists of strings, for the few rows a request or a report needs; the paper-size paths keep histories as
    offsets into `data.columnar.ClickHistory` and never build these."""
    from icg_rl.data.columnar import ClickHistory

    if history_len == 0:
        return [[] for _ in range(len(rows))]
    variants = clicks["variant_id"] if "variant_id" in clicks else pd.Series([None] * len(clicks), index=clicks.index)
    keys = np.array([cover_key(i, v) for i, v in zip(clicks["item_id"], variants)], dtype=object)
    users, _ = pd.factorize(pd.concat([clicks["user_id"].astype(str), rows["user_id"].astype(str)],
                                      ignore_index=True))
    click_user, row_user = users[:len(clicks)], users[len(clicks):]
    history = ClickHistory(click_user, clicks["timestamp"].to_numpy(), np.arange(len(clicks)),
                           int(users.max()) + 1 if len(users) else 0)
    end = history.ends(row_user, rows["timestamp"].to_numpy())
    window = history.windows(history.starts(row_user, end, history_len), end, history_len)
    return [list(keys[row[row >= 0]]) for row in window]
