"""DRaFT-K split in two (rl/backprop.py): the first T − K steps where the rollouts run, the last K where the learner
runs, joined by x_{T−K}, the condition and each row's noise-generator state. Joined, they are the one-process
chain; split over actors, the rows are the same."""

import numpy as np
import torch

from tests.rl.test_local_trainer import trainer_for


def backprop_trainer(micro_world, *overrides):
    trainer = trainer_for(micro_world, "algo.name=backprop", "algo.backprop_steps=2", *overrides)
    with torch.no_grad():
        trainer.pipe.icg.adapter.projection.gate.fill_(0.5)  # the ICG path is live: gradients reach every part
    return trainer


def loss_and_grads(trainer, batch, prefix=None, noise=None):
    from icg_rl.rl.backprop import backprop_loss
    from icg_rl.rl.seeding import row_generators, update_generator

    noise = noise if noise is not None else row_generators(0, 0, range(len(batch["group_key"])))
    loss, metrics, images = backprop_loss(trainer.pipe, batch, trainer.rewards, trainer.mixer, trainer.cfg.algo,
                                          update_generator(0, 0), noise, prefix=prefix)
    params = trainer.pipe.trainable_parameters()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), images, [g for g in grads if g is not None]


def test_prefix_shipped_and_continued_is_the_one_process_chain(micro_world):
    from icg_rl.rl.backprop import denoise_prefix, prefix_from_wire, prefix_to_wire
    from icg_rl.rl.seeding import row_generators

    trainer = backprop_trainer(micro_world)
    batch = next(trainer._batches)
    rows = len(batch["group_key"])
    whole_loss, whole_images, whole_grads = loss_and_grads(trainer, batch)
    trainer.mixer.stats = {n: type(s)() for n, s in trainer.mixer.stats.items()}  # the same running statistics

    noise = row_generators(0, 0, range(rows))
    wire = prefix_to_wire(denoise_prefix(trainer.pipe, batch, trainer.cfg.algo, noise, k=2), noise)
    assert wire["latents"].shape[0] == rows and wire["noise_states"].shape[0] == rows
    prefix, continued = prefix_from_wire(wire)  # as a learner receives it: fresh generators set to the states
    split_loss, split_images, split_grads = loss_and_grads(trainer, batch, prefix, continued)
    assert torch.equal(split_loss, whole_loss)
    assert torch.equal(split_images, whole_images)
    assert len(split_grads) == len(whole_grads) > 0
    assert all(torch.equal(a, b) for a, b in zip(split_grads, whole_grads))


def test_prefix_chunks_join_into_the_batch_prefix_and_slice_back(micro_world):
    from icg_rl.distributed.reward import slice_batch
    from icg_rl.rl.backprop import concat_prefix_wires, denoise_prefix, prefix_to_wire, slice_prefix_wire
    from icg_rl.rl.seeding import row_generators

    trainer = backprop_trainer(micro_world)
    batch = next(trainer._batches)
    rows = len(batch["group_key"])

    def prefix_of(lo, hi):  # a rollout actor's chunk: its rows' own generators
        noise = row_generators(0, 0, range(lo, hi))
        return prefix_to_wire(denoise_prefix(trainer.pipe, slice_batch(batch, lo, hi, rows), trainer.cfg.algo,
                                             noise, k=2), noise)

    whole, half = prefix_of(0, rows), rows // 2
    joined = concat_prefix_wires([prefix_of(0, half), prefix_of(half, rows)])
    # another batch size is another summation order in the convolutions: equal to float rounding, not bit-exact
    np.testing.assert_allclose(joined["latents"], whole["latents"], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(joined["noise_states"], whole["noise_states"])
    # chunks pad their prompts to their own longest (concat pads the shorter): the same condition once encoded
    with torch.no_grad():
        encoded = [trainer.pipe.encode_condition_inputs({k: torch.from_numpy(v) for k, v in wire["condition"].items()})
                   for wire in (joined, whole)]
    torch.testing.assert_close(*encoded, rtol=1e-4, atol=1e-5)
    back = slice_prefix_wire(joined, slice(half, rows))
    np.testing.assert_array_equal(back["latents"], joined["latents"][half:])
    np.testing.assert_array_equal(back["noise_states"], whole["noise_states"][half:])
    assert back["k"] == 2


def test_the_suffix_without_recomputation_has_the_same_gradients(micro_world):
    """`algo.gradient_checkpointing` only trades memory for time (CoverWorld's configs turn it off): the last K steps
    give the same loss, covers and gradients with each UNet call's activations kept or recomputed in backward."""
    kept = backprop_trainer(micro_world, "algo.gradient_checkpointing=false")
    batch = next(kept._batches)
    loss, images, grads = loss_and_grads(kept, batch)
    recomputing = backprop_trainer(micro_world, "algo.gradient_checkpointing=true")
    again_loss, again_images, again_grads = loss_and_grads(recomputing, batch)
    assert torch.equal(loss, again_loss) and torch.equal(images, again_images)
    assert len(grads) == len(again_grads) > 0
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads, again_grads))
