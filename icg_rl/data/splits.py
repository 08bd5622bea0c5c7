"""Time-based per-user splits plus held-out users, the same rule for every data source.

Each user's latest `test_fraction` of interactions is `test`, the `valid_fraction` before them `valid`, the rest
`train`; every interaction of a seeded `heldout_user_fraction` of users is `heldout` (cold-start evaluation: those
users are known only by their history). CoverWorld applies the rule when the world is built (world.* fractions,
world.seed) and stores the `split` column; MovieLens and PixelRec get it at load time (`split_dataset`, with the
data.* fractions and data.split_seed), so `python -m icg_rl.preference` and `icg_rl.train` never evaluate on
training rows whatever the source.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd

from icg_rl.data.schema import RecDataset
from icg_rl.data.sorting import user_time_order

SPLITS = ("train", "valid", "test", "heldout")
TRAIN, VALID, TEST, HELDOUT = range(len(SPLITS))  # the `split` column's codes (a categorical over SPLITS)


@dataclass(frozen=True)
class SplitRule:
    """The split's settings (data.valid_fraction, data.test_fraction, data.heldout_user_fraction, data.split_seed)."""

    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    heldout_user_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        # the ranges of DataConfig, checked again for callers that build a rule by hand
        for name, value, ok, allowed in (
            ("valid_fraction", self.valid_fraction, 0.0 <= self.valid_fraction < 0.5, "0 <= value < 0.5"),
            ("test_fraction", self.test_fraction, 0.0 < self.test_fraction < 0.5, "0 < value < 0.5"),
            ("heldout_user_fraction", self.heldout_user_fraction, 0.0 <= self.heldout_user_fraction < 1.0,
             "0 <= value < 1"),
        ):
            if not ok:
                raise ValueError(f"data.{name}: got {value!r}; allowed {allowed}")


def heldout_users(user_ids: pd.Series, fraction: float, seed: int) -> set[str]:
    """A seeded random share of users kept entirely out of training (cold-start evaluation)."""
    ids = np.sort(user_ids.astype(str).unique())
    count = int(round(len(ids) * fraction))
    chosen = np.random.default_rng(seed).permutation(len(ids))[:count]
    return set(ids[chosen].tolist())


def assign_splits(interactions: pd.DataFrame, valid_fraction: float, test_fraction: float,
                  heldout: set[str]) -> pd.Series:
    """A `split` label per row (a categorical over SPLITS): each user's latest `test_fraction` of rows → test, the
    `valid_fraction` before them → valid, the rest → train; every row of a held-out user → heldout. Ties in time
    keep input order."""
    # Integer user codes and one stable lexsort: several times faster than sorting string ids on ml-25m, and a row's
    # label depends only on its rank in its user's timeline (ties in input order) and the user's size, so the labels
    # are exactly those of a stable sort by (user_id, timestamp).
    users = interactions["user_id"]
    codes = users.cat.codes.to_numpy() if isinstance(users.dtype, pd.CategoricalDtype) else pd.factorize(users)[0]
    order = user_time_order(codes, interactions["timestamp"].to_numpy())
    sorted_codes, position = codes[order], np.arange(len(order))
    first = np.maximum.accumulate(np.where(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]], position, 0))
    rank = position - first  # 0-based position in the user's timeline
    size = np.bincount(codes)[sorted_codes] if len(codes) else np.zeros(0, np.int64)
    n_test = np.ceil(size * test_fraction).astype(np.int64)
    n_valid = np.floor(size * valid_fraction).astype(np.int64)
    label = np.where(rank >= size - n_test, TEST, np.where(rank >= size - n_test - n_valid, VALID, TRAIN))
    held = users.isin(heldout).to_numpy()[order]
    out = np.empty(len(order), dtype=np.int8)
    out[order] = np.where(held, HELDOUT, label)
    return pd.Series(pd.Categorical.from_codes(out, categories=SPLITS), index=interactions.index, name="split")


def split_dataset(data: RecDataset, rule: SplitRule) -> RecDataset:
    """`data` with the rule applied: a `split` column on the interactions and a `heldout` flag on the users (as a
    CoverWorld build stores them). Held-out users are drawn from the users table, like CoverWorld's."""
    held = heldout_users(data.users["user_id"], rule.heldout_user_fraction, rule.seed)
    out = copy.copy(data)  # not `dataclasses.replace`: the tables are already in the schema, no need to re-check them
    out.interactions = data.interactions.assign(
        split=assign_splits(data.interactions, rule.valid_fraction, rule.test_fraction, held))
    out.users = data.users.assign(heldout=data.users["user_id"].isin(held).to_numpy())
    return out
