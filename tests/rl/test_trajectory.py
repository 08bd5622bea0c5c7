"""Trajectory slicing, concatenation and the wire form keep rows (and each row's MLLM image) together."""

import numpy as np
import pytest
import torch

from icg_rl.rl.trajectory import Trajectory


def make(batch: int, steps: int = 3, with_images=(True, False, True, True), offset: float = 0.0) -> Trajectory:
    has = torch.tensor(list(with_images)[:batch])
    n_images = int(has.sum())
    condition = {
        "mllm.input_ids": torch.arange(batch * 5).view(batch, 5),
        "mllm.attention_mask": torch.ones(batch, 5, dtype=torch.long),
        "mllm.meta_positions": torch.full((batch, 2), 3),
        "mllm.has_image": has,
        "mllm.pixel_values": torch.arange(n_images, dtype=torch.float32).view(n_images, 1, 1, 1).expand(-1, 3, 2, 2)
        + offset,
        "user_index": torch.arange(batch),
        "history": torch.zeros(batch, 2, 4),
        "history_mask": torch.zeros(batch, 2, dtype=torch.bool),
    }
    return Trajectory(
        latents=torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1, 1).expand(batch, steps + 1, 4, 2, 2)
        + offset, log_probs=torch.zeros(batch, steps), timesteps=torch.tensor([900, 500, 100]),
        condition=condition, prompt_embeds=torch.zeros(batch, 7, 8), images=np.zeros((batch, 4, 4, 3), np.uint8),
        group_key=np.array([f"u{i}|i" for i in range(batch)]), policy_version=3, extra={"title": np.arange(batch)})


def test_rows_keep_each_row_with_its_image():
    traj = make(4)  # rows 0, 2, 3 have images 0, 1, 2
    sub = traj.rows(np.array([3, 1, 0]))
    assert sub.group_key.tolist() == ["u3|i", "u1|i", "u0|i"]
    assert sub.latents[:, 0, 0, 0, 0].tolist() == [3.0, 1.0, 0.0]
    assert sub.condition["mllm.has_image"].tolist() == [True, False, True]
    assert sub.condition["mllm.pixel_values"][:, 0, 0, 0].tolist() == [2.0, 0.0]  # images of rows 3 and 0
    assert sub.extra["title"].tolist() == [3, 1, 0]


def test_concat_and_wire_round_trip():
    both = Trajectory.concat([make(2), make(2, with_images=(False, True), offset=10.0)])
    assert len(both) == 4 and both.condition["mllm.pixel_values"].shape[0] == 2
    back = Trajectory.from_wire(both.to_wire())
    assert torch.equal(back.latents, both.latents) and back.policy_version == 3
    assert all(torch.equal(back.condition[k], both.condition[k]) for k in both.condition)


def test_contract_violations_are_named():
    traj = make(2)
    with pytest.raises(ValueError, match="must be \\[B, T\\+1"):
        Trajectory(latents=traj.latents[:, :2], log_probs=traj.log_probs, timesteps=traj.timesteps,
                   condition=traj.condition, prompt_embeds=traj.prompt_embeds, images=traj.images,
                   group_key=traj.group_key)
