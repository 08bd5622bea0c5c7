"""The averaged policy (rl/averaging.py): the uniform mean of the weights after each of a run's last updates, the
live weights before its window opens, and a state that restores the same mean."""

import numpy as np
import pytest
import torch
from torch import nn

from icg_rl.rl.averaging import TailAverage, averaging_start


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(3))
        self.b = nn.Parameter(torch.zeros(2, 2))


def train(module: Two, average: TailAverage, iterations: int, first: int = 0) -> list[dict[str, np.ndarray]]:
    """Fake updates: after update i the weights are i + 1 (a) and -(i + 1)² (b); returns every update's weights."""
    seen = []
    for i in range(first, iterations):
        with torch.no_grad():
            module.a.fill_(i + 1.0)
            module.b.fill_(-(i + 1.0) ** 2)
        average.after_update(i)
        seen.append({n: p.detach().numpy().copy() for n, p in module.named_parameters()})
    return seen


@pytest.mark.parametrize(("iterations", "fraction", "start"), [(1000, 0.5, 500), (10, 0.3, 7), (10, 0.01, 9),
                                                               (10, 1.0, 0), (10, 0.0, 10)])
def test_the_window_is_the_last_fraction_of_updates(iterations, fraction, start):
    assert averaging_start(iterations, fraction) == start


def test_the_mean_of_the_last_updates_and_the_live_weights_before_them():
    module = Two()
    average = TailAverage(module, iterations=10, fraction=0.3)
    seen = train(module, average, 7)
    assert average.count == 0
    np.testing.assert_array_equal(average.arrays()["a"], seen[-1]["a"])  # window not open: the live policy
    seen += train(module, average, 10, first=7)
    assert average.count == 3
    for name in ("a", "b"):
        expected = np.mean([w[name] for w in seen[7:]], axis=0)
        np.testing.assert_allclose(average.arrays()[name], expected, rtol=1e-6)
        assert not np.allclose(average.arrays()[name], seen[-1][name])  # not the last iterate


def test_a_restored_state_continues_the_same_mean():
    straight_module, resumed_module = Two(), Two()
    straight = TailAverage(straight_module, iterations=10, fraction=0.5)
    train(straight_module, straight, 10)
    first_half = Two()
    interrupted = TailAverage(first_half, iterations=10, fraction=0.5)
    train(first_half, interrupted, 7)
    resumed = TailAverage(resumed_module, iterations=10, fraction=0.5)
    resumed.load_state_bytes(interrupted.state_bytes())
    assert resumed.count == 2
    train(resumed_module, resumed, 10, first=7)
    for name, value in straight.arrays().items():
        np.testing.assert_array_equal(resumed.arrays()[name], value)
