"""Tolerances for equivalence tests, measured instead of read off one machine.

Two correct computations of the same float32 step agree only up to summation order: CPU kernels split reductions by
thread count and batch shape, and processors differ in how they vectorise them. So an equivalence test first computes
its own reference several times with another summation order (another thread count, permuted rows) — the *noise
floor* of this step on this machine — and allows the compared result a small multiple of that spread, plus a few
float32 ulps of the value (the spread can be 0 where every variant rounds alike).
"""

from __future__ import annotations

import numpy as np

FLOOR_MULTIPLE = 10.0  # a result computed in yet another order lands within a few spreads of the references
ULPS = 8.0 * float(np.finfo(np.float32).eps)  # relative: a handful of float32 roundings


def spread(values) -> float:
    """max − min of repeated computations of one number (or of one array, element-wise max)."""
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in values])
    return float((stacked.max(axis=0) - stacked.min(axis=0)).max())


def assert_within_floor(got, references, name: str) -> None:
    """|got − centre of the references| ≤ FLOOR_MULTIPLE · spread + ULPS · |value|, element-wise."""
    stacked = np.stack([np.asarray(r, dtype=np.float64) for r in references])
    centre = stacked.mean(axis=0)
    floor = spread(references)
    allowed = FLOOR_MULTIPLE * floor + ULPS * np.maximum(np.abs(centre), 1e-3)
    error = np.abs(np.asarray(got, dtype=np.float64) - centre)
    worst = np.unravel_index(np.argmax(error - allowed), np.shape(error)) if np.ndim(error) else ()
    assert np.all(error <= allowed), (
        f"{name}: off by {float(np.max(error)):.3g} where the references' own spread (noise floor) is {floor:.3g}; "
        f"allowed {float(np.asarray(allowed)[worst]):.3g} at {worst}")
