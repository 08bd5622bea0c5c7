"""PPO-clip, KL and group advantages on hand-computed values."""

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
