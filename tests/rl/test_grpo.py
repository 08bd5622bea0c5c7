"""GRPO's switches (rl/sampling.py, rl/ddpo.py): an SDE window samples noise only in its steps and trains only
those; the rest of the chain is deterministic and never touched by the loss."""

import numpy as np
import torch

from icg_rl.rl.sampling import sample_trajectory
from tests.rl.test_local_trainer import trainer_for


def sample(trainer, batch, window, seed=0):
    return sample_trajectory(trainer.pipe, batch, 4, 1.0, 1.0, torch.Generator().manual_seed(seed),
                             sde_window=window)[0]


def test_window_steps_draw_noise_and_carry_log_probs_the_others_are_deterministic(micro_world):
    trainer = trainer_for(micro_world, "algo.name=grpo", "algo.sde_window=[1, 3]")
    batch = next(trainer._batches)
    windowed = sample(trainer, batch, (1, 3))
    assert torch.all(windowed.log_probs[:, [0, 3]] == 0) and torch.all(windowed.log_probs[:, [1, 2]] != 0)
    whole = sample(trainer, batch, None)
    assert torch.equal(sample(trainer, batch, (0, 4)).latents, whole.latents)  # the full window is plain DDPO
    assert not torch.allclose(windowed.latents[:, -1], whole.latents[:, -1])
    # outside the window nothing is drawn: a window of step 0 draws the initial noise and step 0's, no more
    generator = torch.Generator().manual_seed(5)
    short, _ = sample_trajectory(trainer.pipe, batch, 4, 1.0, 1.0, generator, sde_window=(0, 1))
    counted = torch.Generator().manual_seed(5)
    for _ in range(2):
        torch.randn(short.latents[:, 0].shape, generator=counted)
    assert torch.equal(generator.get_state(), counted.get_state())


def test_policy_loss_reads_only_the_window_steps(micro_world):
    from icg_rl.rl.ddpo import ddpo_gradients

    trainer = trainer_for(micro_world, "algo.name=grpo", "algo.sde_window=[1, 3]", "algo.clip_range=0.2")
    with torch.no_grad():
        trainer.pipe.icg.adapter.projection.gate.fill_(0.5)
    batch = next(trainer._batches)
    trajectory = sample(trainer, batch, (1, 3))
    advantages = torch.linspace(-1.0, 1.0, len(trajectory))
    grads, totals = ddpo_gradients(trainer.pipe, trajectory, advantages, trainer.cfg.algo, torch.Generator())
    poisoned = trajectory.rows(slice(None))
    poisoned.latents = trajectory.latents.clone()
    poisoned.log_probs = trajectory.log_probs.clone()
    poisoned.log_probs[:, [0, 3]] = float("nan")  # steps outside the window: never read
    poisoned.latents[:, 4] = float("nan")  # x_0 is the output of step 3, outside the window
    again, _ = ddpo_gradients(trainer.pipe, poisoned, advantages, trainer.cfg.algo, torch.Generator())
    used = [(a, b) for a, b in zip(grads, again) if a is not None]
    assert used and all(torch.equal(a, b) for a, b in used)
    assert np.isfinite(totals["loss/policy"]) and any(float(a.abs().sum()) > 0 for a, _ in used)


def test_shared_start_gives_a_group_one_initial_noise(micro_world):
    from icg_rl.rl.seeding import group_generators, row_generators

    trainer = trainer_for(micro_world, "algo.name=grpo", "algo.shared_start=true")
    batch = next(trainer._batches)
    keys = np.asarray(batch["group_key"])
    start = group_generators(0, 0, keys)
    trajectory, _ = sample_trajectory(trainer.pipe, batch, 4, 1.0, 1.0, row_generators(0, 0, range(len(keys))),
                                      start_generator=start)
    first = trajectory.latents[:, 0]
    for key in np.unique(keys):
        rows = np.flatnonzero(keys == key)
        assert len(rows) > 1 and all(torch.equal(first[rows[0]], first[r]) for r in rows[1:])
        assert not torch.equal(trajectory.latents[rows[0], -1], trajectory.latents[rows[1], -1])  # own steps
    assert not torch.equal(first[np.flatnonzero(keys == keys[0])[0]], first[np.flatnonzero(keys != keys[0])[0]])
    # a group's seed depends on its key, not its position in the batch; another iteration draws anew
    assert group_generators(0, 0, [keys[0]])[0].initial_seed() == start[0].initial_seed()
    assert group_generators(0, 1, [keys[0]])[0].initial_seed() != start[0].initial_seed()
