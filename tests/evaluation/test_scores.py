"""The evaluation's statistics and the oracle's CTR on hand-made images, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from icg_rl.evaluation.scores import mean_ci, ndcg_at_k, simulated_ab_test, two_proportion_p, wilson


def test_mean_ci_and_wilson_by_hand():
    ci = mean_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    half = 1.959964 * np.std([1, 2, 3, 4], ddof=1) / 2
    assert ci["mean"] == 2.5 and ci["ci_low"] == pytest.approx(2.5 - half) and ci["n"] == 4
    assert mean_ci(np.array([np.nan, 1.0, 1.0]))["n"] == 2
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12) and wilson(0, 10)[1] > 0


def test_two_proportion_p():
    assert two_proportion_p(50, 100, 50, 100) == pytest.approx(1.0)
    # 60/100 vs 40/100: z = 0.2 / sqrt(0.25 * 0.02) = 2.828 -> p = 0.00468
    assert two_proportion_p(60, 100, 40, 100) == pytest.approx(math.erfc(2.8284271 / math.sqrt(2)), rel=1e-6)


def test_simulated_ab_test_is_seeded_and_centred_on_the_truth():
    probs = {"reference": np.full(50, 0.2), "icg": np.full(50, 0.3)}
    table = simulated_ab_test(probs, 400, seed=3)
    assert table == simulated_ab_test(probs, 400, seed=3)
    assert table["icg"]["impressions"] == 20_000 and table["icg"]["true_ctr"] == pytest.approx(0.3)
    assert table["reference"]["ci_low"] < 0.2 < table["reference"]["ci_high"]
    assert table["icg"]["ci_low"] < 0.3 < table["icg"]["ci_high"]
    assert table["icg"]["lift_vs_reference"] == pytest.approx(0.5, abs=0.08) and table["icg"]["p_vs_reference"] < 1e-6
    assert table["reference"]["lift_vs_reference"] == 0.0


def test_ndcg_at_10_by_hand():
    groups = np.array(["a"] * 3 + ["b"] * 2 + ["c"] * 2)
    labels = np.array([0, 1, 0, 1, 0, 0, 0])  # c has no click: skipped
    scores = np.array([0.9, 0.5, 0.1, 0.2, 0.8, 0.3, 0.4])
    # a: the click ranks 2nd -> 1/log2(3); b: the click ranks 2nd -> 1/log2(3)
    assert ndcg_at_k(scores, labels, groups) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(-scores, labels, groups) == pytest.approx(np.mean([1 / math.log2(3), 1.0]))


def test_oracle_ctr_of_hand_made_images(micro_world):
    """A flat grey cover has φ = (grey, 0, 0, 0, 0): P(click) follows from the click model by hand; a stored
    variant image gives the stored variant's probability."""
    from icg_rl.io import read_image
    from icg_rl.world.oracle import Oracle

    cfg, _ = micro_world
    oracle = Oracle(cfg.world.dir)
    user, item = oracle._ideal.index[0], oracle._items.index[0]
    grey = np.full((1, 32, 32, 3), 128, dtype=np.uint8)
    affinity, ideal, bias = oracle._lookup([user], [item])
    m = oracle.click_model
    phi = np.array([[128 / 255, 0.0, 0.0, 0.0, 0.0]])
    look = ((m.feature_scale * (phi - ideal)) ** 2).mean(-1)
    logit = m.genre_weight * affinity - m.look_weight * look + bias + m.offset
    assert oracle.click_prob([user], [item], grey) == pytest.approx(1 / (1 + np.exp(-logit)), rel=1e-5)
    stored = read_image(f"{cfg.world.dir}/images/{item}/v1.png")[None]
    assert oracle.click_prob([user], [item], stored) == pytest.approx(
        oracle.variant_click_prob([user], [item], ["v1"]), rel=1e-6)


def test_sample_grid_columns_are_resized_to_the_generated_side():
    """Reference covers come at data.reference_size, generated ones at the model's size (the real layouts: 224 vs
    512): the grid's columns are brought to one side instead of failing to stack."""
    from icg_rl.io import image_grid, resize_images

    reference = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    reference[:, :, 4:] = 255
    resized = resize_images(reference, 16)
    assert resized.shape == (2, 16, 16, 3) and resized.dtype == np.uint8
    assert resized[:, :, :6].max() == 0 and resized[:, :, 10:].min() == 255  # the left/right halves stay put
    generated = np.full((2, 16, 16, 3), 7, dtype=np.uint8)
    assert resize_images(generated, 16) is generated
    grid = image_grid(np.stack([resized, generated], axis=1).reshape(-1, 16, 16, 3), columns=2)
    assert grid.shape == (32, 32, 3)
