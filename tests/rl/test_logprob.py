"""The DDIM step with log-prob against diffusers' own scheduler and torch's Normal, computed independently."""

import pytest
import torch
from diffusers import DDIMScheduler

from icg_rl.models.zoo import SD_SCHEDULE
from icg_rl.rl.logprob import ddim_step_with_logprob


def scheduler(**overrides) -> DDIMScheduler:
    s = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1, **overrides)
    s.set_timesteps(10)
    return s


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_sample_matches_the_scheduler_step_with_the_same_noise(spacing, prediction, eta):
    s = scheduler(timestep_spacing=spacing, prediction_type=prediction)
    sample, model_output = inputs()
    for t in (s.timesteps[0], s.timesteps[5], s.timesteps[-1]):
        ours, _ = ddim_step_with_logprob(s, model_output, t, sample, eta=eta,
                                         generator=torch.Generator().manual_seed(7))
        theirs = s.step(model_output, t, sample, eta=eta, generator=torch.Generator().manual_seed(7)).prev_sample
        assert torch.equal(ours, theirs), (spacing, prediction, int(t))


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_log_prob_is_the_gaussian_density_of_the_step(reduce):
    s = scheduler()
    sample, model_output = inputs(1)
    t = s.timesteps[3]
    eta = 1.0
    prev, log_prob = ddim_step_with_logprob(s, model_output, t, sample, eta=eta,
                                           generator=torch.Generator().manual_seed(3), reduce=reduce)
    # independently: the mean is the scheduler's step with zero noise, σ from its own variance formula
    mean = s.step(model_output, t, sample, eta=eta, variance_noise=torch.zeros_like(sample)).prev_sample
    prev_t = t - s.config.num_train_timesteps // s.num_inference_steps
    std = eta * s._get_variance(t, prev_t) ** 0.5
    density = torch.distributions.Normal(mean, std).log_prob(prev)
    expected = density.mean(dim=(1, 2, 3)) if reduce == "mean" else density.sum(dim=(1, 2, 3))
    assert torch.allclose(log_prob, expected, atol=1e-5, rtol=1e-5)


def test_per_sample_timesteps_equal_per_row_calls():
    s = scheduler()
    sample, model_output = inputs(2)
    steps = torch.stack([s.timesteps[0], s.timesteps[4], s.timesteps[-1]])
    nxt = torch.randn_like(sample)
    _, batched = ddim_step_with_logprob(s, model_output, steps, sample, eta=1.0, prev_sample=nxt)
    for row in range(3):
        _, single = ddim_step_with_logprob(s, model_output[row:row + 1], steps[row], sample[row:row + 1], eta=1.0,
                                           prev_sample=nxt[row:row + 1])
        assert torch.allclose(batched[row], single[0], atol=1e-6)


def test_deterministic_step_has_no_log_prob():
    s = scheduler()
    sample, model_output = inputs()
    with pytest.raises(ValueError, match="eta: got 0.0"):
        ddim_step_with_logprob(s, model_output, s.timesteps[0], sample, eta=0.0)
