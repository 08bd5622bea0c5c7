"""The Serve app serves a flow-matching (SD3-layout) policy the same way: a checkpoint on the micro world's tiny
`models/sd3`, deployed beside the UNet app on the same Serve instance, answered over real HTTP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from icg_rl.config import ZooConfig
from tests.fresh_policy import save_fresh_policy
from tests.models.test_flow_base import TINY
from tests.serve.conftest import IMAGE_SIZE, settings, wait_healthy
from tests.serve.test_endpoint import decode, post


@pytest.fixture(scope="module")
def flow_checkpoint(micro_world, tmp_path_factory) -> tuple[Path, list[str]]:
    from icg_rl.models.flow_base import build_flow_base

    cfg, _ = micro_world
    build_flow_base(cfg.world.dir, cfg.world, ZooConfig.model_validate(cfg.zoo.model_dump() | TINY), progress=False)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"base": "coverworld_flow"})})
    folder, users, _ = save_fresh_policy(cfg, Path(tmp_path_factory.mktemp("flow_checkpoint")) / "checkpoint", seed=0)
    return folder, users


def test_a_flow_checkpoint_is_served_over_http(served, flow_checkpoint):
    from ray import serve

    from icg_rl.serve.app import application

    checkpoint, users = flow_checkpoint
    options = {"CoverAPI": {"ray_actor_options": {"num_cpus": 0.1}},
               "CoverGenerator": {"ray_actor_options": {"num_cpus": 0.1}}}
    serve.run(application(settings(checkpoint), options), name="icg_flow", route_prefix="/flow")
    url = f"{served['url']}/flow"
    try:
        wait_healthy(url)
        body = {"title": "Midnight at the Harbour", "num_images": 2, "seed": 3, "num_inference_steps": 4}
        answer = post(url, body | {"user_id": users[0]})
        assert answer.status_code == 200, answer.text
        images = [decode(b) for b in answer.json()["images"]]
        assert len(images) == 2 and all(i.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) for i in images)
        assert not np.array_equal(images[0], images[1])
        other = post(url, body | {"user_id": users[1]}).json()["images"]
        assert other != answer.json()["images"], "two users got the same covers from the flow policy"
        assert post(url, body | {"user_id": users[0]}).json()["images"] == answer.json()["images"]  # seeded
    finally:
        serve.delete("icg_flow")
