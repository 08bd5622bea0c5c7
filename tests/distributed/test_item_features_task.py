"""The catalogue's item features computed as a Ray task (what the trainer does on a GPU cluster, where the driver
may have no GPU): the same features as on the driver. Here the task gets the CPU; the device choice inside it is
the only part a GPU would change."""

import numpy as np


def test_item_features_on_the_cluster_equal_the_drivers(micro_world, ray_cluster):
    from icg_rl.data import load_from_config
    from icg_rl.models.item_features import policy_context, policy_context_on_cluster

    cfg, _ = micro_world
    data = load_from_config(cfg)
    users, features = policy_context(cfg, data)
    remote_users, remote_features = policy_context_on_cluster(cfg, data, cpus=1, gpus=0)
    assert remote_users == users and len(users) > 0
    assert list(remote_features) == list(features)
    for key, vector in features.items():
        np.testing.assert_allclose(remote_features[key], vector, atol=1e-5)
