"""Time-based per-user splits plus held-out users, the same for every data source."""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "valid", "test", "heldout")


def heldout_users(user_ids: pd.Series, fraction: float, seed: int) -> set[str]:
    """A seeded random share of users kept entirely out of training (cold-start evaluation)."""
    ids = np.sort(user_ids.astype(str).unique())
    count = int(round(len(ids) * fraction))
    chosen = np.random.default_rng(seed).permutation(len(ids))[:count]
    return set(ids[chosen].tolist())


def assign_splits(interactions: pd.DataFrame, valid_fraction: float, test_fraction: float,
                  heldout: set[str]) -> pd.Series:
    """A `split` label per row: each user's latest `test_fraction` of rows → test, the `valid_fraction` before
    them → valid, the rest → train; every row of a held-out user → heldout. Ties in time keep input order."""
    order = interactions.sort_values(["user_id", "timestamp"], kind="stable")
    rank = order.groupby("user_id").cumcount().to_numpy()  # 0-based position in the user's timeline
    size = order.groupby("user_id")["user_id"].transform("size").to_numpy()
    n_test = np.ceil(size * test_fraction).astype(int)
    n_valid = np.floor(size * valid_fraction).astype(int)
    labels = np.where(rank >= size - n_test, "test", np.where(rank >= size - n_test - n_valid, "valid", "train"))
    labels = np.where(order["user_id"].isin(heldout).to_numpy(), "heldout", labels)
    return pd.Series(labels, index=order.index, name="split").reindex(interactions.index)
