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


def test_the_policys_user_id_table_is_capped_to_the_most_active_training_users(micro_world):
    from icg_rl.data import load_from_config
    from icg_rl.data.columnar import split_codes
    from icg_rl.data.schema import codes
    from icg_rl.models.item_features import policy_context

    cfg, _ = micro_world
    data = load_from_config(cfg)
    everyone, _ = policy_context(cfg, data)
    capped, _ = policy_context(cfg.model_copy(update={"model": cfg.model.model_copy(update={"max_user_ids": 5})}),
                               data)
    log = data.interactions
    train = split_codes(log) == 0
    clicks = np.bincount(codes(log["user_id"])[train], minlength=len(data.users))
    rows = {u: i for i, u in enumerate(data.users["user_id"].astype(str))}
    assert len(capped) == 5 and capped == sorted(capped) and set(capped) <= set(everyone)
    fewest_kept = min(clicks[rows[u]] for u in capped)
    assert all(clicks[rows[u]] <= fewest_kept for u in set(everyone) - set(capped))  # the most active kept
    assert len(everyone) == int((clicks > 0).sum())  # under the cap: every training user
