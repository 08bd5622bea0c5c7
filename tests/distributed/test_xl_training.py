"""The Ray trainer (distributed/) on an SDXL layout: one iteration of reward backprop and of NFT on the micro world's
SDXL-layout base (`model.base=coverworld_xl`, models/xl_base.py), through the same actors as on the UNet base —
rollouts on ICGXLPipeline with pooled embeddings and size/crop ids, rewards, the learner's update, the weight sync."""

import numpy as np
import pytest

from icg_rl.models.families import family_name
from icg_rl.models.xl_base import build_xl_base
from icg_rl.paths import base_folder
from tests.distributed.test_training import micro

XL_ALGOS = {"backprop": (["algo.name=backprop", "algo.backprop_steps=2"], "loss/backprop"),
            "nft": (["algo.name=nft", "algo.eta=0.0"], "loss/nft")}


@pytest.fixture(scope="module")
def xl_world(micro_world):
    cfg, _ = micro_world
    build_xl_base(cfg.world.dir, cfg.world, cfg.zoo, progress=False)  # configs/micro.yaml's xl_steps: seconds
    return micro_world


@pytest.mark.parametrize("algo", list(XL_ALGOS))
def test_one_ray_iteration_trains_a_policy_on_the_sdxl_base(xl_world, ray_cluster, algo):
    from icg_rl.commands.train import RayTrainer

    overrides, loss_key = XL_ALGOS[algo]
    cfg = micro(xl_world, "model.base=coverworld_xl", *overrides)
    assert family_name(base_folder(cfg)) == "StableDiffusionXLPipeline"
    trainer = RayTrainer(cfg)
    try:
        initial = ray_cluster.get(trainer.learner.actors[0].weights.remote())[0]
        metrics = trainer.step()
        updated = ray_cluster.get(trainer.learner.actors[0].weights.remote())[0]
    finally:
        trainer.shutdown()
    for key in (loss_key, "reward/total", "stats/grad_norm"):
        assert np.isfinite(metrics[key]), f"{key} = {metrics[key]}"
    assert metrics["stats/grad_norm"] > 0 and metrics["sync/version"] == 1
    assert set(updated) == set(initial)
    moved = [name for name in initial if not np.array_equal(updated[name], initial[name])]
    assert len(moved) > len(initial) // 2, f"only {moved} of {len(initial)} trainable tensors changed"
