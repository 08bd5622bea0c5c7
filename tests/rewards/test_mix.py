"""The reward mix: running statistics, normalisation and weights, errors, and exact resume. Pure, no Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from icg_rl.rewards.mix import RewardMixer, RunningStats


def test_running_stats_match_numpy_over_concatenation():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n) for n in (1, 7, 32, 5, 100)]
    stats = RunningStats()
    for b in batches:
        stats.update(torch.tensor(b, dtype=torch.float64))
    everything = np.concatenate(batches)
    assert stats.count == everything.size
    assert stats.mean == pytest.approx(everything.mean(), rel=1e-12, abs=1e-12)
    assert stats.std == pytest.approx(everything.std(), rel=1e-12)


def test_running_stats_ignore_empty_batch_and_reject_2d():
    stats = RunningStats()
    stats.update(torch.zeros(0))
    assert stats.count == 0 and stats.std == 0.0
    with pytest.raises(ValueError, match="1-D"):
        stats.update(torch.zeros(2, 3))


def test_first_batch_normalised_by_its_own_stats_and_weighted():
    mixer = RewardMixer({"a": 2.0, "b": -1.0}, normalize=True, eps=1e-6)
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])  # mean 2.5, population std sqrt(1.25)
    b = torch.tensor([10.0, 10.0, 30.0, 30.0])  # mean 20, std 10
    total, metrics = mixer({"a": a, "b": b})
    a_norm = (a.double() - 2.5) / (np.sqrt(1.25) + 1e-6)
    b_norm = (b.double() - 20.0) / (10.0 + 1e-6)
    expected = 2.0 * a_norm - 1.0 * b_norm
    torch.testing.assert_close(total.double(), expected, rtol=1e-6, atol=1e-6)
    assert metrics["reward/a"] == pytest.approx(2.5)
    assert metrics["reward/a_std"] == pytest.approx(np.sqrt(1.25))
    assert metrics["reward/b"] == pytest.approx(20.0)
    assert metrics["reward/b_std"] == pytest.approx(10.0)
    assert metrics["reward/a_norm"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["reward/total"] == pytest.approx(float(expected.mean()), abs=1e-6)


def test_second_batch_uses_running_stats():
    mixer = RewardMixer({"a": 1.0}, eps=1e-6)
    mixer({"a": torch.tensor([0.0, 2.0])})  # running: mean 1, std 1
    total, _ = mixer({"a": torch.tensor([4.0, 6.0])})  # running over [0, 2, 4, 6]: mean 3, std sqrt(5)
    expected = (torch.tensor([4.0, 6.0], dtype=torch.float64) - 3.0) / (np.sqrt(5.0) + 1e-6)
    torch.testing.assert_close(total.double(), expected, rtol=1e-6, atol=1e-6)


def test_without_normalisation_total_is_weighted_sum():
    mixer = RewardMixer({"a": 0.5, "b": 3.0}, normalize=False)
    total, metrics = mixer({"a": torch.tensor([2.0, 4.0]), "b": torch.tensor([1.0, -1.0])})
    assert total.tolist() == [4.0, -1.0]
    assert metrics["reward/total"] == 1.5


def test_zero_weight_and_unweighted_rewards_are_logged_not_mixed():
    mixer = RewardMixer({"a": 1.0, "z": 0.0}, normalize=False)
    total, metrics = mixer({"a": torch.tensor([1.0, 3.0]), "z": torch.tensor([100.0, 100.0]),
                            "extra": torch.tensor([5.0, 7.0])})
    assert total.tolist() == [1.0, 3.0]
    assert metrics["reward/z"] == 100.0 and metrics["reward/extra"] == 6.0
    assert "reward/z_norm" not in metrics and "reward/extra_norm" not in metrics
    assert set(mixer.state_dict()["stats"]) == {"a"}
    # a zero-weight reward may be absent, and is not checked for finiteness
    mixer({"a": torch.tensor([1.0, 3.0])})
    mixer({"a": torch.tensor([1.0, 3.0]), "z": torch.tensor([float("nan"), 0.0])})


def test_missing_reward_raises_key_error_naming_it():
    mixer = RewardMixer({"aesthetic": 1.0, "clip_t": 0.5})
    with pytest.raises(KeyError, match="clip_t") as err:
        mixer({"aesthetic": torch.ones(3)})
    assert "aesthetic" in str(err.value)  # the ones given are listed


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_raise_naming_the_reward(bad):
    mixer = RewardMixer({"aesthetic": 1.0, "preference": 1.0})
    with pytest.raises(FloatingPointError, match="preference"):
        mixer({"aesthetic": torch.ones(3), "preference": torch.tensor([0.1, bad, 0.3])})
    assert mixer.stats["aesthetic"].count == 0  # checks happen before any statistics change


def test_bad_weights_and_batch_sizes_raise():
    with pytest.raises(ValueError, match="empty"):
        RewardMixer({})
    with pytest.raises(ValueError, match="zero"):
        RewardMixer({"a": 0.0})
    with pytest.raises(ValueError, match="reward.weights.a"):
        RewardMixer({"a": float("nan")})
    mixer = RewardMixer({"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="batch sizes"):
        mixer({"a": torch.ones(3), "b": torch.ones(4)})


def test_update_false_leaves_stats_and_needs_stats():
    mixer = RewardMixer({"a": 1.0})
    with pytest.raises(RuntimeError, match="update=False"):
        mixer({"a": torch.ones(2)}, update=False)
    mixer({"a": torch.tensor([0.0, 2.0])})
    before = mixer.state_dict()
    mixer({"a": torch.tensor([5.0, 9.0])}, update=False)
    assert mixer.state_dict() == before


def test_gradients_flow_through_the_mix():
    mixer = RewardMixer({"a": 2.0})
    s = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    total, _ = mixer({"a": s})
    total.sum().backward()
    expected = 2.0 / (mixer.stats["a"].std + 1e-6)
    torch.testing.assert_close(s.grad, torch.full((3,), expected))


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    batches = [{"a": torch.tensor(rng.normal(size=8), dtype=torch.float32),
                "b": torch.tensor(rng.uniform(size=8), dtype=torch.float32)} for _ in range(6)]
    weights = {"a": 1.0, "b": -0.5}
    original = RewardMixer(weights)
    for b in batches[:3]:
        original(b)
    state = json.loads(json.dumps(original.state_dict()))  # survives a JSON trainer-state file
    resumed = RewardMixer(weights)
    resumed.load_state_dict(state)
    for b in batches[3:]:
        t1, m1 = original(b)
        t2, m2 = resumed(b)
        assert torch.equal(t1, t2) and m1 == m2
    assert resumed.state_dict() == original.state_dict()


def test_load_state_dict_rejects_other_rewards():
    mixer = RewardMixer({"a": 1.0})
    with pytest.raises(ValueError, match="must match"):
        mixer.load_state_dict(RewardMixer({"b": 1.0}).state_dict())


def test_a_floored_reward_costs_only_below_its_floor():
    """clip_t as a floor at 0.9 × the reference cover's score: rows above it add nothing (and get no gradient),
    a row below it costs weight × shortfall / std, an item without a reference has no floor."""
    mixer = RewardMixer({"preference": 1.0, "clip_t": 2.0}, floors={"clip_t": 0.9})
    clip_t = torch.tensor([0.50, 0.80, 0.30, 0.10], requires_grad=True)
    reference = torch.tensor([0.50, 0.50, 0.50, float("nan")])  # floor 0.45 on rows 0-2; row 3 has no reference
    preference = torch.tensor([0.2, 0.4, 0.6, 0.8])
    total, metrics = mixer({"preference": preference, "clip_t": clip_t}, reference_scores={"clip_t": reference})
    std = mixer.stats["clip_t"].std
    pref_norm = (preference - preference.mean()) / (preference.std(unbiased=False) + 1e-6)
    expected = pref_norm - 2.0 * torch.tensor([0.0, 0.0, 0.15, 0.0]) / (std + 1e-6)
    torch.testing.assert_close(total.detach(), expected, atol=1e-5, rtol=0)
    assert metrics["reward/clip_t_below_floor"] == 0.25 and "reward/clip_t_norm" not in metrics
    (grad,) = torch.autograd.grad(total.sum(), clip_t)
    assert grad[0] == 0 and grad[1] == 0 and grad[3] == 0 and grad[2] > 0  # only the row below climbs


def test_a_floor_price_rises_below_the_floor_and_falls_above_it():
    """floor_rate > 0: dual ascent on the floor's multiplier — batches whose mean sits below f × the reference
    mean raise the price (and the term), batches above lower it, within [0.1, 100]; a checkpoint keeps it."""
    mixer = RewardMixer({"preference": 1.0, "clip_t": 1.0}, floors={"clip_t": 0.9}, floor_rate=0.5)
    reference = {"clip_t": torch.tensor([0.5, 0.5, 0.5, float("nan")])}
    preference = torch.tensor([0.2, 0.4, 0.6, 0.8])
    low = {"preference": preference, "clip_t": torch.tensor([0.30, 0.40, 0.35, 0.90])}  # mean 0.35 < 0.45
    prices = []
    for _ in range(3):
        _, metrics = mixer(low, reference_scores=reference)
        prices.append(metrics["reward/clip_t_multiplier"])
    assert 1.0 < prices[0] < prices[1] < prices[2]  # the row without a reference (0.90) is not counted
    state = mixer.state_dict()
    high = {"preference": preference, "clip_t": torch.tensor([0.60, 0.70, 0.65, 0.0])}
    _, metrics = mixer(high, reference_scores=reference)
    assert metrics["reward/clip_t_multiplier"] < prices[2]
    for _ in range(200):
        mixer(high, reference_scores=reference)
    assert mixer.multipliers["clip_t"] == 0.1  # the floor
    restored = RewardMixer({"preference": 1.0, "clip_t": 1.0}, floors={"clip_t": 0.9}, floor_rate=0.5)
    restored.load_state_dict(state)
    assert restored.multipliers["clip_t"] == prices[2]
    # the price scales the term: the same batch costs more at a higher price, rows above the floor nothing
    priced, _ = restored(low, update=False, reference_scores=reference)
    restored.multipliers["clip_t"] = 1.0
    unit, _ = restored(low, update=False, reference_scores=reference)
    assert (priced[:3] < unit[:3]).all() and priced[3] == unit[3]
    assert RewardMixer({"preference": 1.0, "clip_t": 1.0}, floors={"clip_t": 0.9})(
        low, reference_scores=reference)[1]["reward/clip_t_multiplier"] == 1.0  # floor_rate 0: a fixed price
    with pytest.raises(KeyError, match="floor_rate > 0 needs its reference scores"):
        restored.update(low)


def test_floors_are_checked():
    with pytest.raises(ValueError, match=r"reward.floors: \['clip_i'\] have no non-zero weight"):
        RewardMixer({"preference": 1.0, "clip_i": 0.0}, floors={"clip_i": 0.9})
    mixer = RewardMixer({"preference": 1.0, "clip_t": 1.0}, floors={"clip_t": 0.9})
    scores = {"preference": torch.rand(3), "clip_t": torch.rand(3)}
    with pytest.raises(KeyError, match="'clip_t' has a floor"):
        mixer(scores)  # no reference scores
    with pytest.raises(KeyError, match="'clip_t' has a floor"):
        mixer(scores, reference_scores={"clip_t": torch.rand(2)})  # wrong rows


def test_reference_scores_score_the_reference_covers_and_skip_items_without_one():
    from icg_rl.rewards.base import RewardModel
    from icg_rl.rl.backprop import reference_scores

    class Brightness(RewardModel):
        name = "clip_t"

        def _score(self, images, batch):
            return images.mean(dim=(1, 2, 3))

    covers = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (0, 255, 51)])  # uint8 [3, H, W, 3]
    batch = {"reference_image": covers, "has_reference": np.array([True, True, False])}
    scores = reference_scores({"clip_t": Brightness()}, {"clip_t": 0.9}, batch)["clip_t"]
    assert scores[:2].tolist() == [0.0, 1.0] and torch.isnan(scores[2])
    assert reference_scores({"clip_t": Brightness()}, {}, batch) == {}  # no floors: nothing scored
