"""Sorting a log's columns fast: the two sorts every paper-size path starts with."""

from __future__ import annotations

import numpy as np


def user_time_order(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """The order that sorts rows by (user, time), ties in input order: one stable argsort of a combined int64 key
    (~3× faster than `np.lexsort` of the two columns at ml-latest's 33.8M rows), lexsort when it would overflow."""
    if not len(user):
        return np.zeros(0, dtype=np.int64)
    t0, span = int(timestamp.min()), int(timestamp.max()) - int(timestamp.min()) + 1
    if (int(user.max()) + 1) * span >= 2**62:
        return np.lexsort((timestamp, user))
    return np.argsort(user.astype(np.int64) * span + (timestamp - t0), kind="stable")


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """`np.unique` by sorting: numpy 2.x's hash-based unique takes ~30 s on 33.8M distinct int64 keys, a sort ~3 s."""
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if len(ordered) else ordered
