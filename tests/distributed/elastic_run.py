"""Run by test_elastic.py in its own process (a `ray.cluster_utils.Cluster` needs a fresh Ray session): an 'auto'
rollout pool on a 2-CPU head, a 2-CPU node joining mid-run, then leaving. Prints one JSON line of pool sizes."""

import json
import logging
import os
import sys
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main(world_dir: str, out: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from icg_rl.commands.train import RayTrainer
    from icg_rl.config import load_config
    from tests.conftest import MICRO_CONFIG

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False)
    cfg = load_config(MICRO_CONFIG, [
        f"world.dir={world_dir}", "algo.num_inference_steps=2", "data.pairs_per_batch=2", "data.samples_per_pair=4",
        "model.meta_tokens=2", "reward.weights={aesthetic: 1.0, clip_t: 0.5}", "train.tracker=none",
        "ray.rollout_workers=auto", "ray.max_rollout_workers=4", "ray.threads_per_worker=1"])
    trainer = RayTrainer(cfg)
    sizes = {"start": len(trainer.rollout.actors)}
    trainer.step()
    node = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    deadline = time.monotonic() + 180
    while len(trainer.rollout.actors) < 4 and time.monotonic() < deadline:
        trainer.step()
    sizes["grown"] = len(trainer.rollout.actors)
    cluster.remove_node(node)
    steps_after = [trainer.step()["iteration"] for _ in range(3)]
    sizes["after_removal"] = len(trainer.rollout.actors)
    trainer.shutdown()
    ray.shutdown()
    cluster.shutdown()
    print(json.dumps({"sizes": sizes, "iterations_after_removal": steps_after}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
