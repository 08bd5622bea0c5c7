"""benchmarks/preference_gap.py on the micro world with personas: its fits run and its ceilings are ordered the way
the decomposition relies on (the correctly specified persona model sits near the oracle; a two-tower model trained
a couple of epochs is above chance). True-feature rows only, so no CLIP is needed."""

from __future__ import annotations

import pytest

from icg_rl.metrics import roc_auc
from tests.conftest import MICRO_CONFIG, load_benchmark

PERSONAS = ["world.num_users=60", "world.taste_segments=2", "world.segment_spread=0.1",
            "world.impressions_per_user=120"]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("preference_gap")


@pytest.fixture(scope="module")
def rows(bench):
    return bench.WorldRows(PERSONAS, clip_dir="unused", history_len=32, config=str(MICRO_CONFIG))


def test_true_probability_and_splits(rows):
    test = rows.split("test")
    assert len(test) > 0 and test["prob"].between(0, 1).all()
    assert roc_auc(test["prob"].to_numpy(), test["clicked"].to_numpy()) > 0.6  # the oracle sees real signal


def test_persona_logistic_reaches_near_the_oracle_and_two_tower_learns(bench, rows):
    test = rows.split("test")
    oracle = roc_auc(test["prob"].to_numpy(), test["clicked"].to_numpy())
    images = rows.image_inputs("phi")
    assert images.shape == (len(rows.keys), 5 + 5 + 4)  # φ, φ², genre one-hot (4 micro genres)
    logistic = bench.fit_persona_logistic(rows, images)
    assert oracle - 0.08 < logistic <= oracle + 0.03
    assert bench.fit_two_tower(rows, "persona", "phi", images, epochs=3, seed=0) > 0.55
    # the shipped item side (genre tags + standardisation) on these inputs, learning users from history alone
    assert bench.fit_two_tower(rows, "history", "clip", images, epochs=3, seed=0) > 0.55
