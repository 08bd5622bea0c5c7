"""Small metric functions shared by the world summary, the preference model and evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; ties get average ranks.
    NaN when only one class is present."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE: Σ_b (n_b / N) · |mean label − mean predicted probability| over `bins` equal-width probability bins —
    how far a click model's probabilities are from observed click rates. NaN for no rows."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if probs.size == 0:
        return float("nan")
    which = np.minimum((probs * bins).astype(int), bins - 1)  # bin of each row; p = 1 goes to the last bin
    gap = np.abs(np.bincount(which, labels, bins) - np.bincount(which, probs, bins))  # |Σ labels − Σ probs| per bin
    return float(gap.sum() / probs.size)


NOTABLE_STAGE_S = 1.0  # stages this long are logged at INFO; shorter ones (a small log's) at DEBUG


def timed(log, name: str, work):
    """Run `work()` and log `<name>: <seconds> s` — at INFO when it took NOTABLE_STAGE_S or more (the stages of a
    paper-size log, as benchmarks/scale.py reads them), else at DEBUG (a small run's log stays short)."""
    import logging
    import time

    began = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - began
    log.log(logging.INFO if seconds >= NOTABLE_STAGE_S else logging.DEBUG, "%s: %.1f s", name, seconds)
    return result
