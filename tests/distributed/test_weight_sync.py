"""Weight sync on the device (distributed/weight_sync.py): a gloo broadcast group beside the learners' DeepSpeed
world delivers learner rank 0's weights bit for bit, survives a rollout actor's restart, and refuses members whose
weights are laid out differently; the threads each role gets are fitted to the machine (distributed/placement.py).
`cuda_ipc` needs actors sharing a GPU: tests/test_gpu.py."""

import numpy as np
import pytest
import ray
import torch

from icg_rl.config import ConfigError
from icg_rl.distributed.weight_sync import FlatWeights, form_weight_group, push_weights
from tests.distributed.test_training import micro


def test_flat_weights_pack_and_unpack_every_parameter():
    params = {"a": torch.nn.Parameter(torch.randn(3, 4)), "b": torch.nn.Parameter(torch.randn(5))}
    flat = FlatWeights(params, torch.device("cpu"))
    assert flat.nbytes == 17 * 4
    torch.testing.assert_close(flat.pack(), torch.cat([params["a"].reshape(-1), params["b"]]), rtol=0, atol=0)
    flat.buffer.copy_(torch.arange(17.0))
    flat.unpack()
    assert params["a"].flatten().tolist() == list(range(12)) and params["b"].tolist() == list(range(12, 17))
    with pytest.raises(ValueError, match="one dtype"):
        FlatWeights({"a": params["a"], "h": torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))}, "cpu")


def test_collective_sync_is_bitwise_and_survives_a_rollout_restart(micro_world, ray_cluster):
    from icg_rl.commands.train import RayTrainer

    trainer = RayTrainer(micro(micro_world, "ray.weight_sync=collective", "ray.rollout_workers=2"))
    try:
        initial, _ = ray.get(trainer.learner.source.weights.remote())
        first = trainer.step()
        held = ray.get([actor.held_weights.remote() for actor in trainer.rollout.actors])
        source, _ = ray.get(trainer.learner.source.weights.remote())
        assert first["sync/version"] == 1 and first["sync/bytes"] == sum(a.nbytes for a in source.values())
        for version, arrays in held:
            assert version == 1 and all(np.array_equal(arrays[k], source[k]) for k in source)
        assert any(not np.array_equal(source[k], v) for k, v in initial.items())  # the update moved them
        ray_cluster.kill(trainer.rollout.actors[1], no_restart=False)  # leaves the group; restarts at version 0
        after = trainer.step()
        held = ray.get([actor.held_weights.remote() for actor in trainer.rollout.actors])
        source, _ = ray.get(trainer.learner.source.weights.remote())
    finally:
        trainer.shutdown()
    assert after["iteration"] == 2 and after["sync/version"] == 2 and np.isfinite(after["reward/aesthetic"])
    for version, arrays in held:
        assert version == 2 and all(np.array_equal(arrays[k], source[k]) for k in source)


@ray.remote(num_cpus=0)
class Member:
    """A weight-group member over a plain module (the group code needs only `pipe.trainable_named_parameters()`,
    `pipe.device` and `weights`); rollout and learner actors mix in the same class."""

    def __init__(self, sizes: list[int], seed: int):
        from icg_rl.distributed.weight_sync import WeightGroupMember
        from icg_rl.distributed.weights import VersionedWeights

        torch.manual_seed(seed)
        params = {f"p{i}": torch.nn.Parameter(torch.randn(n)) for i, n in enumerate(sizes)}

        class Holder:
            device = torch.device("cpu")

            def trainable_named_parameters(self):
                return params

        self.member, self.params = WeightGroupMember(), params
        self.member.pipe, self.member.weights = Holder(), VersionedWeights()

    def node_address(self):
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def join_weight_group(self, *args):
        return self.member.join_weight_group(*args)

    def send_weights(self):
        return self.member.send_weights()

    def receive_weights(self, version):
        return self.member.receive_weights(version)

    def values(self):
        return {k: p.detach().numpy().copy() for k, p in self.params.items()}


def test_group_refuses_another_layout_and_never_moves_back(ray_cluster):
    source, same, other = Member.remote([4, 6], 0), Member.remote([4, 6], 1), Member.remote([6, 4], 2)
    with pytest.raises(ValueError, match=r"rollout actor\(s\) \[2\] lay out the trainable weights differently"):
        form_weight_group("collective", source, [same, other])
    source, receiver = Member.remote([4, 6], 0), Member.remote([4, 6], 1)
    form_weight_group("collective", source, [receiver])
    assert push_weights("collective", source, [receiver], 3) == 40
    got, want = ray.get([receiver.values.remote(), source.values.remote()])
    assert all(np.array_equal(got[k], want[k]) for k in want)
    with pytest.raises(ray.exceptions.RayTaskError, match="older than the held version 3"):
        push_weights("collective", source, [receiver], 2)


def test_group_sync_needs_a_fixed_pool_and_threads_fit_the_machine(micro_world):
    from icg_rl.distributed.placement import role_threads

    with pytest.raises(ConfigError, match="weight_sync='collective' needs a fixed ray.rollout_workers"):
        micro(micro_world, "ray.weight_sync=collective", "ray.rollout_workers=auto")
    sync, async_ = micro(micro_world), micro(micro_world, "rollout.async=true")
    # CPU-only: sync phases alternate (all cores each), async overlaps them (half each); rewards 1; a GPU actor
    # its CPU request; configured numbers win, per role over per worker
    assert [role_threads(sync, r, 1, node_cpus=8) for r in ("rollout", "learner", "reward")] == [8, 8, 1]
    assert role_threads(sync, "rollout", 2, node_cpus=8) == 4 and role_threads(async_, "learner", 1, 8) == 4
    assert role_threads(async_, "rollout", 1, node_cpus=1) == 1
    gpu = micro(micro_world, "ray.rollout_gpus=0.5", "ray.rollout_cpus=2")
    assert role_threads(gpu, "rollout", 1, node_cpus=16) == 2
    fixed = micro(micro_world, "ray.threads_per_worker=3", "ray.learner_threads=5")
    assert [role_threads(fixed, r, 1, node_cpus=8) for r in ("rollout", "learner", "reward")] == [3, 5, 3]
