"""DiffusionNFT's math (rl/nft.py): the ε-form against the v-form on a flow base, the first-step gradient, the
optimality map, the draws, the targets of each scheduler family."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from icg_rl.rl.nft import (
    awm_loss,
    draw_noising,
    flow_sigmas,
    nft_loss,
    noised_and_target,
    optimality,
)

SHAPE = (6, 4, 8, 8)


def test_the_eps_form_of_the_flow_loss_is_the_v_form_times_one_minus_sigma_squared():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    timesteps = scheduler.timesteps[torch.tensor([0, 2, 4, 6, 8, 9])]
    x_t, v_target = noised_and_target(scheduler, x0, noise, timesteps)
    sigma = flow_sigmas(scheduler, timesteps).view(-1, 1, 1, 1)
    assert torch.allclose(x_t, (1 - sigma) * x0 + sigma * noise) and torch.equal(v_target, noise - x0)
    v_new, v_old = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    r = torch.rand(SHAPE[0], generator=gen)

    def as_eps(v):  # ε = x_t + (1 − σ) v for a flow base
        return x_t + (1 - sigma) * v

    assert torch.allclose(as_eps(v_target), noise, atol=1e-5)  # the identity itself
    for beta in (0.1, 1.0):
        v_form = nft_loss(v_new, v_old, v_target, r, beta)
        eps_form = nft_loss(as_eps(v_new), as_eps(v_old), noise, r, beta)
        assert torch.allclose(eps_form, (1 - sigma.flatten()) ** 2 * v_form, rtol=1e-4, atol=1e-6)
    # and the sigmas are the scheduler's own, in its timestep order
    assert torch.allclose(flow_sigmas(scheduler, scheduler.timesteps), scheduler.sigmas[:-1])


def test_at_the_sampling_policy_the_nft_gradient_is_the_advantage_weighted_denoising_gradient():
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(SHAPE, generator=gen)
    output = torch.randn(SHAPE, generator=gen, requires_grad=True)
    r = torch.tensor([0.0, 0.2, 0.5, 0.7, 1.0, 0.9])
    for beta in (0.5, 1.0, 2.0):
        (nft_grad,) = torch.autograd.grad(nft_loss(output, output.detach(), target, r, beta).sum(), output)
        (awm_grad,) = torch.autograd.grad(awm_loss(output, target, r).sum(), output)
        assert torch.allclose(nft_grad, beta * awm_grad, atol=1e-6)
    # r = ½ carries no signal; r = 1 pulls toward the target, r = 0 pushes away
    (grad,) = torch.autograd.grad(nft_loss(output, output.detach(), target, r, 1.0).sum(), output)
    assert torch.all(grad[2] == 0)
    step = -grad  # gradient descent's direction
    assert torch.sum(step[4] * (target[4] - output[4])) > 0 and torch.sum(step[0] * (target[0] - output[0])) < 0


def test_away_from_the_sampling_policy_the_negative_mixture_bounds_the_push():
    """r = 0 pushes f_θ from y only until the negative mixture f₋ = (1+β) f_old − β f_θ reaches y: the loss has a
    minimum there (AWM's push is unbounded)."""
    target, old = torch.zeros(1, 3), torch.ones(1, 3)
    r, beta = torch.zeros(1), 1.0
    f = torch.linspace(-1, 4, 501)[:, None].expand(-1, 3)
    losses = torch.stack([nft_loss(row[None], old, target, r, beta) for row in f]).flatten()
    best = f[losses.argmin(), 0]
    assert best == pytest.approx((1 + beta) / beta * 1.0, abs=0.02)  # f₋ = 0 ⇔ f_θ = (1+β)/β · f_old
    awm = torch.stack([awm_loss(row[None], target, r) for row in f]).flatten()
    assert awm.argmin() == len(f) - 1  # AWM keeps pushing


def test_optimality_maps_clipped_advantages_to_probabilities():
    r = optimality(np.array([-5.0, -1.0, -0.5, 0.0, 0.5, 2.0]), clip=1.0)
    assert r.dtype == np.float32 and r.tolist() == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0]
    assert optimality(np.array([1.0]), clip=2.0).tolist() == [0.75]
    with pytest.raises(ValueError, match="algo.nft_clip=0"):
        optimality(np.array([1.0]), clip=0.0)


def test_draws_come_from_the_sampling_schedule_are_shared_within_a_group_and_ignore_the_split():
    scheduler = DDIMScheduler()
    x0 = torch.zeros(SHAPE)
    keys = np.array(["u1|a", "u1|a", "u1|a", "u2|b", "u2|b", "u2|b"])

    def draw(rows=slice(None), shared=True, draws=3, iteration=0):
        first = rows.start or 0
        return draw_noising(scheduler, 5, x0[rows], keys[rows], first, draws, shared, seed=0, iteration=iteration)

    draws = draw()
    schedule = set(scheduler.timesteps.tolist())
    assert len(draws) == 3 and all(set(t.tolist()) <= schedule for t, _ in draws)
    for t, noise in draws:
        assert torch.equal(noise[0], noise[2]) and torch.equal(noise[3], noise[5]) and t[0] == t[1] == t[2]
        assert not torch.equal(noise[0], noise[3])
    own = draw(shared=False, draws=1)
    assert not torch.equal(own[0][1][0], own[0][1][1])
    assert not torch.equal(draw(iteration=1)[0][1], draws[0][1])  # a new iteration, new draws
    for shared in (True, False):  # two learner ranks draw for their rows what one rank draws for them
        whole = draw(shared=shared)
        halves = [draw(slice(0, 2), shared), draw(slice(2, 6), shared)]
        for d in range(3):
            assert torch.equal(torch.cat([h[d][1] for h in halves]), whole[d][1])
            assert torch.equal(torch.cat([h[d][0] for h in halves]), whole[d][0])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_targets_are_the_schedulers_own(prediction_type):
    scheduler = DDIMScheduler(prediction_type=prediction_type)
    gen = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    t = torch.tensor([1, 101, 301, 501, 701, 901])
    x_t, target = noised_and_target(scheduler, x0, noise, t)
    assert torch.equal(x_t, scheduler.add_noise(x0, noise, t))
    expected = noise if prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
    assert torch.equal(target, expected)
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        noised_and_target(DDIMScheduler(prediction_type="sample"), x0, noise, t)


def test_rollout_chunks_never_split_a_group():
    from icg_rl.distributed.rollout import group_bounds

    keys = np.repeat(np.arange(8), 4).astype(str)  # 8 groups of 4
    for parts in (1, 2, 3, 5, 8, 16):
        bounds = group_bounds(keys, parts)
        assert bounds[0] == 0 and bounds[-1] == 32 and np.all(bounds % 4 == 0)
        assert len(bounds) - 1 == min(parts, 8)
    assert group_bounds(keys, 3).tolist() == [0, 12, 20, 32]  # as even as whole groups allow


# ------------------------------------------------------------------------------------ a reward with no gradient
def test_genre_hit_scores_the_worlds_own_covers_and_backprop_refuses_it(micro_world):
    from icg_rl.config import ConfigError
    from icg_rl.data import load_from_config
    from icg_rl.io import read_image
    from icg_rl.models.images import to_float_images
    from icg_rl.rewards.registry import build_reward, refuse_for_backprop

    cfg, _ = micro_world
    reward = build_reward("genre_hit", cfg.reward, cfg.world.dir)
    assert reward.differentiable is False
    items = load_from_config(cfg).items.iloc[:64]
    covers = torch.cat([to_float_images(read_image(cfg.world.dir + "/" + p)[None], p) for p in items["image_path"]])
    hits = reward.score(covers, {"item_id": items["item_id"].to_numpy()})
    assert set(hits.unique().tolist()) <= {0.0, 1.0}
    assert hits.mean() > 0.5  # the judge reads most real covers as their genre
    noise = reward.score(torch.rand(covers.shape, generator=torch.Generator().manual_seed(0)),
                         {"item_id": items["item_id"].to_numpy()})
    assert noise.mean() < hits.mean()
    with pytest.raises(KeyError, match="not in the world's items.parquet"):
        reward.score(covers[:1], {"item_id": np.array(["nope"])})
    with pytest.raises(ConfigError, match=r"\['genre_hit'\] is not differentiable.*algo.name=nft"):
        refuse_for_backprop({"clip_t": 1.0, "genre_hit": 0.5})
    refuse_for_backprop({"clip_t": 1.0, "genre_hit": 0.0})  # weight 0: not trained on, fine
