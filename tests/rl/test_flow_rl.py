"""RL on a flow-matching base (the micro world's tiny SD3-layout `models/sd3`): the same trainers, sampler and
losses as on the UNet base, stepping with Flow-GRPO's SDE (`rl/steps.py` → `rl/flow_logprob.py`)."""

import pytest
import torch

from icg_rl.config import ZooConfig
from icg_rl.models.flow_base import build_flow_base
from icg_rl.models.pipeline_sd3 import ICGSD3Pipeline
from icg_rl.rl.sampling import predict_noise, sample_trajectory
from icg_rl.rl.steps import step_with_logprob
from tests.models.test_flow_base import TINY
from tests.rl.test_local_trainer import trainer_for

FLOW = ["model.base=coverworld_flow", "algo.eta=0.7"]


@pytest.fixture(scope="module")
def flow_world(micro_world):
    cfg, _ = micro_world
    build_flow_base(cfg.world.dir, cfg.world, ZooConfig.model_validate(cfg.zoo.model_dump() | TINY), progress=False)
    return micro_world


def test_flow_rollouts_record_sde_steps_whose_recomputed_ratio_is_exactly_one(flow_world):
    trainer = trainer_for(flow_world, *FLOW, "algo.name=grpo", "algo.sde_window=[1, 3]")
    pipe = trainer.pipe
    assert isinstance(pipe, ICGSD3Pipeline) and pipe.is_flow_matching
    with torch.no_grad():
        pipe.icg.adapter.projection.gate.fill_(0.5)  # the ICG path is live
    batch = next(trainer._batches)
    traj, images = sample_trajectory(pipe, batch, 4, 0.7, 1.0, torch.Generator().manual_seed(0), sde_window=(1, 3))
    assert traj.pooled_embeds is not None and len(traj.pooled_embeds) == len(traj)
    assert images.shape[-1] == flow_world[0].world.image_size
    assert torch.all(traj.log_probs[:, [0, 3]] == 0) and torch.all(traj.log_probs[:, [1, 2]] != 0)
    with torch.no_grad():
        features = pipe.encode_condition_inputs(traj.condition)
        for j in (1, 2):
            t = traj.timesteps[j]
            velocity = predict_noise(pipe, traj.latents[:, j], t, traj.text, features, 1.0)
            _, log_prob = step_with_logprob(pipe.scheduler, velocity, t, traj.latents[:, j], 0.7,
                                            prev_sample=traj.latents[:, j + 1])
            assert torch.equal(torch.exp(log_prob - traj.log_probs[:, j]), torch.ones(len(traj)))
    # the wire form (rollout actor -> learner) keeps the pooled embeddings
    again = type(traj).from_wire(traj.to_wire())
    assert torch.equal(again.pooled_embeds, traj.pooled_embeds)
    assert torch.equal(traj.rows([1, 2]).pooled_embeds, traj.pooled_embeds[[1, 2]])


@pytest.mark.parametrize("algo", ["grpo", "backprop"])
def test_grpo_and_reward_backprop_update_a_flow_policy(flow_world, algo):
    extra = ["algo.clip_range=0.2", "algo.sde_window=[0, 2]"] if algo == "grpo" else ["algo.backprop_steps=2"]
    trainer = trainer_for(flow_world, *FLOW, f"algo.name={algo}", *extra)
    with torch.no_grad():
        trainer.pipe.icg.adapter.projection.gate.fill_(0.5 if algo == "grpo" else 0.0)
    before = {k: v.clone() for k, v in trainer.pipe.trainable_state_dict().items()}
    metrics = [trainer.step() for _ in range(2)]
    after = trainer.pipe.trainable_state_dict()
    assert all(torch.isfinite(torch.tensor(m["stats/grad_norm"])) and m["stats/grad_norm"] > 0 for m in metrics)
    assert not torch.equal(before["icg.adapter.projection.gate"], after["icg.adapter.projection.gate"])
    assert not any(p.requires_grad for p in trainer.pipe.transformer.pos_embed.parameters())  # base frozen
