"""Property tests of small pure functions: AUC against its definition, splits against their contract."""

import itertools

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from icg_rl.data.splits import assign_splits
from icg_rl.metrics import expected_calibration_error, roc_auc


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=40))
@settings(max_examples=200, deadline=None)
def test_auc_is_the_share_of_correctly_ordered_pairs(rows):
    scores = np.array([s for s, _ in rows], dtype=float)
    labels = np.array([y for _, y in rows])
    if labels.all() or not labels.any():
        assert np.isnan(roc_auc(scores, labels))
        return
    pairs = [(p, n) for p, n in itertools.product(scores[labels], scores[~labels])]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert abs(roc_auc(scores, labels) - expected) < 1e-12


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 100)), min_size=1, max_size=60),
       st.floats(0.0, 0.4), st.floats(0.05, 0.4))
@settings(max_examples=150, deadline=None)
def test_splits_never_put_training_after_evaluation(rows, valid_fraction, test_fraction):
    log = pd.DataFrame(rows, columns=["user_id", "timestamp"])
    log["split"] = assign_splits(log, valid_fraction, test_fraction, heldout={"c"})
    assert (log.loc[log["user_id"] == "c", "split"] == "heldout").all()
    order = {"train": 0, "valid": 1, "test": 2}
    for _, rows_of_user in log[log["user_id"] != "c"].groupby("user_id"):
        ranked = rows_of_user.sort_values("timestamp", kind="stable")
        stage = ranked["split"].map(order).to_numpy()
        assert (np.diff(stage) >= 0).all()  # train, then valid, then test along time
        assert stage[-1] == 2  # every user has test rows


def test_expected_calibration_error():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 1, 200_000)
    calibrated = rng.random(probs.size) < probs
    assert expected_calibration_error(probs, calibrated) < 0.01  # labels drawn from the probabilities
    # always predicting 0.8 for a 0.2 click rate: off by 0.6 everywhere
    assert abs(expected_calibration_error(np.full(1000, 0.8), np.arange(1000) < 200) - 0.6) < 1e-9
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0  # p = 1 lands in a bin
