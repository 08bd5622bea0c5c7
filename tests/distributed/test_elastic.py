"""`ray.rollout_workers: auto` on a `ray.cluster_utils.Cluster`: the rollout pool grows when a node joins mid-run
(what an autoscaler does) and the run goes on when the node leaves."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_rollout_pool_grows_with_the_cluster_and_survives_a_node_leaving(micro_world, tmp_path):
    cfg, _ = micro_world
    proc = subprocess.run([sys.executable, "-m", "tests.distributed.elastic_run", cfg.world.dir, str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    sizes = result["sizes"]
    assert sizes["start"] == 2  # head: 2 CPU − learner 0.25 − 2 reward pools × 0.125 − Ray Data 1 = 0.5 → 2 × 0.25
    assert sizes["grown"] == 4, sizes  # capped by ray.max_rollout_workers
    assert sizes["after_removal"] == 2, sizes
    assert "rollout pool grew: 2 → " in proc.stderr and "rollout pool shrank" in proc.stderr
    steps = result["iterations_after_removal"]
    assert steps == list(range(steps[0], steps[0] + 3))  # every iteration completed
