"""PPO-clip, KL and group advantages on hand-computed values."""

import json
import math

import numpy as np
import pytest
import torch

from icg_rl.rl.advantages import PerKeyStatTracker, group_advantages
from icg_rl.rl.ddpo import gaussian_kl, ppo_clip_loss


def test_ppo_clip_loss_by_hand():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.0, 1.5, 0.5, 1.05]))  # ratios 1, 1.5, 0.5, 1.05
    adv = torch.tensor([1.0, 2.0, -1.0, 10.0])  # the last is clipped to 5
    loss, stats = ppo_clip_loss(new, old, adv, clip_range=0.2, adv_clip=5.0)
    # per sample: max(-A r, -A clip(r)): 1 -> -1; 1.5 -> max(-3, -2.4) = -2.4; 0.5 -> max(0.5, 0.8) = 0.8;
    # 1.05 (A=5) -> max(-5.25, -5.25) = -5.25
    assert loss.item() == pytest.approx((-1 - 2.4 + 0.8 - 5.25) / 4)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    assert stats["approx_kl"].item() == pytest.approx(0.5 * np.mean(np.log([1, 1.5, 0.5, 1.05]) ** 2))


def test_ratio_one_gives_minus_mean_advantage():
    lp = torch.tensor([-1.0, -2.0])
    loss, stats = ppo_clip_loss(lp, lp.clone(), torch.tensor([0.5, -1.5]), 1e-4, 5.0)
    assert loss.item() == pytest.approx(0.5) and stats["clip_fraction"].item() == 0.0


def test_gaussian_kl_by_hand():
    mean = torch.zeros(1, 1, 2, 2)
    ref = torch.full((1, 1, 2, 2), 2.0)
    # (0 - 2)^2 / (2 * 0.5^2) = 8 per element; mean over elements = 8
    assert gaussian_kl(mean, ref, torch.tensor(0.5)).item() == pytest.approx(8.0)
    assert gaussian_kl(mean, mean, torch.tensor(0.5)).item() == 0.0


def test_group_advantages_by_hand():
    rewards = np.array([1.0, 3.0, 2.0, 2.0, 5.0])
    keys = np.array(["a", "a", "b", "b", "c"])
    adv, stats = group_advantages(rewards, keys, min_group=2)
    assert adv[:2] == pytest.approx([-1.0, 1.0], abs=1e-5)  # mean 2, std 1
    assert adv[2:4].tolist() == [0.0, 0.0]  # zero variance: no signal
    batch_mean, batch_std = rewards.mean(), rewards.std()
    assert adv[4] == pytest.approx((5.0 - batch_mean) / batch_std, abs=1e-5)  # small group: batch fallback
    assert stats["zero_variance_fraction"] == pytest.approx(1 / 3)
    assert stats["fallback_fraction"] == pytest.approx(1 / 3)


def test_tracker_fallback_uses_the_keys_history():
    tracker = PerKeyStatTracker(buffer_size=4, min_count=2)
    tracker.update(np.array(["k", "k"]), np.array([0.0, 2.0]))  # mean 1, std 1
    adv, _ = group_advantages(np.array([3.0, 100.0, 100.0]), np.array(["k", "z", "z"]), tracker, min_group=2)
    assert adv[0] == pytest.approx(2.0, abs=1e-5)
    state = tracker.state_dict()
    again = PerKeyStatTracker()
    again.load_state_dict(state)
    assert again.stats("k") == tracker.stats("k")
    assert math.isclose(tracker.stats("k")[0], np.mean([0.0, 2.0, 3.0]))


def test_tracker_keeps_the_most_recently_updated_keys_up_to_its_cap():
    tracker = PerKeyStatTracker(buffer_size=4, min_count=1, max_keys=8)
    for step in range(100):  # 500 distinct keys, 5 per update
        tracker.update(np.array([f"k{5 * step + i}" for i in range(5)]), np.full(5, float(step)))
        assert len(tracker.buffers) <= 8
    assert list(tracker.buffers) == [f"k{i}" for i in range(492, 500)]
    tracker.update(np.array(["k492", "new"]), np.array([1.0, 2.0]))  # k492 updated again: now the most recent
    assert list(tracker.buffers) == [f"k{i}" for i in range(494, 500)] + ["k492", "new"]
    assert tracker.stats("k493") is None and tracker.stats("k492") == (49.5, 48.5)  # step 98, then 1
    tracker.stats("k494")  # reading is no update: k494 stays the least recent and goes next
    tracker.update(np.array(["newer"]), np.array([0.0]))
    assert "k494" not in tracker.buffers and len(tracker.buffers) == 8


def test_tracker_state_round_trips_and_an_unbounded_old_state_loads_trimmed():
    tracker = PerKeyStatTracker(buffer_size=3, min_count=1, max_keys=4)
    tracker.update(np.array(["a", "b", "c", "a", "d", "e"]), np.arange(6.0))  # b evicted; order c a d e
    state = json.loads(json.dumps(tracker.state_dict()))  # as a checkpoint's trainer_state.json holds it
    again = PerKeyStatTracker(max_keys=4)
    again.load_state_dict(state)
    assert list(again.buffers) == ["c", "a", "d", "e"] and again.buffers["a"].maxlen == 3
    assert {k: list(v) for k, v in again.buffers.items()} == {"c": [2.0], "a": [0.0, 3.0], "d": [4.0], "e": [5.0]}
    again.update(np.array(["f"]), np.array([6.0]))
    assert list(again.buffers) == ["a", "d", "e", "f"]  # the order survived: c was the least recent
    # a run saved before the cap: every key ever seen, in first-seen order, with more than buffer_size values
    old = {"buffer_size": 3, "min_count": 1, "buffers": {f"k{i}": [float(i)] * 5 for i in range(1000)}}
    trimmed = PerKeyStatTracker(max_keys=10)
    trimmed.load_state_dict(old)
    assert list(trimmed.buffers) == [f"k{i}" for i in range(990, 1000)]
    assert list(trimmed.buffers["k999"]) == [999.0] * 3 and trimmed.stats("k999") == (999.0, 0.0)
    with pytest.raises(ValueError, match="max_keys=0; it must be > 0"):
        PerKeyStatTracker(max_keys=0)
