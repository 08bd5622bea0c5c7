"""Flow-GRPO's SDE step (rl/flow_logprob.py) against an independent derivation: the drift written from the score
form dx = [v − σ²/2 ∇log p] dt with ∇log p = −(x + (1 − t) v)/t and torch.distributions' Gaussian density; the
empirical mean and variance of many draws; the scheduler's own Euler step as the noise level goes to zero."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from icg_rl.rl.flow_logprob import sde_step_with_logprob


def scheduler(steps: int = 6) -> FlowMatchEulerDiscreteScheduler:
    s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    s.set_timesteps(steps)
    return s


def by_hand(x, v, t, t_next, eta, t_in_denominator):
    """The step from the score form, written out separately from the module's algebra."""
    score = -(x + (1 - t) * v) / t
    sigma = eta * (t / (1 - t_in_denominator)) ** 0.5
    dt = t_next - t
    mean = x + (v - sigma ** 2 / 2 * score) * dt
    return torch.distributions.Normal(mean, sigma * (-dt) ** 0.5)


@pytest.mark.parametrize("index", [0, 1, 3, 5])  # 0: t = 1, whose noise scale uses the next grid point
def test_mean_and_log_density_match_the_derivation_by_hand(index):
    s = scheduler()
    g = torch.Generator().manual_seed(index)
    x, v = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    prev, log_prob, mean, std = sde_step_with_logprob(s, v, s.timesteps[index], x, noise_level=0.7,
                                                      generator=torch.Generator().manual_seed(9))
    t, t_next = float(s.sigmas[index]), float(s.sigmas[index + 1])
    normal = by_hand(x.double(), v.double(), t, t_next, 0.7, float(s.sigmas[1]) if t >= 1 else t)
    torch.testing.assert_close(mean.double(), normal.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std.double(), normal.stddev.reshape(-1, 100)[:, 0].expand(3), rtol=1e-5, atol=1e-6)
    expected = normal.log_prob(prev.double()).mean(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(log_prob).all() and (std > 0).all()


def test_draws_have_the_steps_mean_and_variance():
    s = scheduler()
    x, v = torch.randn(1, 2, 4, 4).expand(20_000, -1, -1, -1), torch.randn(1, 2, 4, 4).expand(20_000, -1, -1, -1)
    prev, _, mean, std = sde_step_with_logprob(s, v, s.timesteps[2], x, generator=torch.Generator().manual_seed(0))
    # 20,000 draws: the standard error of the mean is std / 141, of the variance ~ 1 % of it
    assert (prev.mean(0) - mean[0]).abs().max() < 5 * float(std[0]) / 141
    assert torch.allclose(prev.var(0), torch.full_like(prev[0], float(std[0]) ** 2), rtol=0.05)


def test_recomputing_a_drawn_sample_gives_its_log_prob_and_rows_take_their_own_timesteps():
    s = scheduler()
    x, v = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    steps = s.timesteps[[0, 1, 2, 4]]
    prev, log_prob, _, _ = sde_step_with_logprob(s, v, steps, x, generator=torch.Generator().manual_seed(1))
    again = sde_step_with_logprob(s, v, steps, x, prev_sample=prev)[1]
    torch.testing.assert_close(again, log_prob)
    for row in range(4):  # one row at a time, with its own scalar timestep: the same numbers
        alone = sde_step_with_logprob(s, v[row:row + 1], steps[row], x[row:row + 1], prev_sample=prev[row:row + 1])
        torch.testing.assert_close(alone[1], log_prob[row:row + 1])
    moved = sde_step_with_logprob(s, v + 20, steps, x, prev_sample=prev)[1]
    assert (moved < log_prob).all()  # a mean moved by many step stds makes the drawn sample far less likely


def test_the_step_tends_to_the_schedulers_euler_step_as_the_noise_level_goes_to_zero():
    s = scheduler()
    x, v = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    for index in (0, 2, 5):
        s._step_index = None  # diffusers' step keeps a cursor; start it at this timestep
        euler = s.step(v, s.timesteps[index], x).prev_sample
        steps = [sde_step_with_logprob(s, v, s.timesteps[index], x, noise_level=eta,
                                       generator=torch.Generator().manual_seed(0)) for eta in (0.5, 0.05, 5e-4)]
        gaps = [float((prev - euler).abs().max()) for prev, *_ in steps]  # the noise term: linear in the level
        assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 5e-3, gaps
        drift = [float((mean - euler).abs().max()) for _, _, mean, _ in steps]  # the drift's correction: quadratic
        assert drift[2] < 1e-5 and drift[1] < drift[0] / 50, drift


def test_bad_arguments_are_named():
    s = scheduler()
    x = torch.randn(2, 1, 2, 2)
    with pytest.raises(ValueError, match="noise_level: must be > 0"):
        sde_step_with_logprob(s, x, s.timesteps[0], x, noise_level=0.0)
    with pytest.raises(ValueError, match="timestep: expected a scalar or 2 values"):
        sde_step_with_logprob(s, x, s.timesteps[:3], x)
