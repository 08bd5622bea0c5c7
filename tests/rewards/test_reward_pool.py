"""Reward pools on the shared Ray cluster: pooled scores equal in-process scores, in row order; oversize fails fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icg_rl.config import RewardConfig
from icg_rl.distributed.reward import RewardPool, RewardWorker, check_fits
from icg_rl.rewards.base import RewardModel
from icg_rl.rewards.registry import REWARDS, register_reward

TEST_REWARD = "test_brightness_plus_offset"


class BrightnessReward(RewardModel):
    """Mean brightness per image plus the batch's per-row `offset`: a wrong row pairing changes the score."""

    name = TEST_REWARD
    differentiable = True

    def _score(self, images, batch):
        offset = torch.as_tensor(np.asarray(batch["offset"]), dtype=images.dtype)
        return images.mean(dim=(1, 2, 3)) * batch["scale"] + offset  # (B,)


def brightness_factory(reward_cfg, world_dir) -> RewardModel:
    """Picklable factory: Ray workers do not see rewards registered only in this process."""
    return BrightnessReward()


if TEST_REWARD not in REWARDS:
    register_reward(TEST_REWARD, brightness_factory)


def _batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    batch = {"offset": rng.normal(size=n).astype(np.float32), "title": [f"t{i}" for i in range(n)], "scale": 2.0}
    return images, batch


def test_worker_accepts_uint8_arrays_and_float_tensors():
    worker = RewardWorker(TEST_REWARD, RewardConfig(), "unused", threads=None, factory=brightness_factory)
    images, batch = _batch(5)
    from_uint8 = worker.score(images, batch)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    assert from_uint8.dtype == np.float32 and from_uint8.shape == (5,)
    np.testing.assert_array_equal(from_uint8, worker.score(as_float, batch))
    with pytest.raises(TypeError, match="uint8"):
        worker.score(images.astype(np.float32), batch)


def test_pool_matches_in_process_scores_in_row_order(ray_cluster):
    images, batch = _batch(11)
    expected = RewardWorker(TEST_REWARD, RewardConfig(), "unused", threads=None,
                            factory=brightness_factory).score(images, batch)
    pool = RewardPool(TEST_REWARD, RewardConfig(), "unused", num_workers=2, num_cpus=0.5, factory=brightness_factory)
    try:
        assert [r["differentiable"] for r in pool.ready(timeout_s=120)] == [True, True]
        got = pool.score(images, batch, chunk_size=3)  # 4 chunks over 2 actors
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == np.float32
        refs = pool.score_async(images, batch, chunk_size=4)
        assert len(refs) == 3
        np.testing.assert_array_equal(pool.gather(refs), expected)
        np.testing.assert_array_equal(pool.score(images, batch), expected)  # default: one chunk per actor
        with pytest.raises(ValueError, match="offset"):
            pool.score(images, {**batch, "offset": batch["offset"][:4]})
    finally:
        pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.score(images, batch)


def test_pool_larger_than_cluster_fails_immediately(ray_cluster):
    with pytest.raises(RuntimeError, match=r"exceed the cluster.*128 CPU.*has 2 CPU"):
        RewardPool(TEST_REWARD, RewardConfig(), "unused", num_workers=2, num_cpus=64, factory=brightness_factory)
    with pytest.raises(RuntimeError, match=r"pool_b.*1 GPU"):
        check_fits({"pool_a": (2, 0.5, 0.0), "pool_b": (1, 0.5, 1.0)})
    check_fits({"pool_a": (2, 0.5, 0.0), "pool_b": (2, 0.5, 0.0)})  # exactly the cluster's 2 CPUs


def test_pool_survives_an_actor_crash(ray_cluster):
    images, batch = _batch(6, seed=1)
    expected = RewardWorker(TEST_REWARD, RewardConfig(), "unused", threads=None,
                            factory=brightness_factory).score(images, batch)
    pool = RewardPool(TEST_REWARD, RewardConfig(), "unused", num_workers=2, num_cpus=0.5, factory=brightness_factory)
    try:
        pool.ready(timeout_s=120)
        refs = pool.score_async(images, batch, chunk_size=2)
        ray_cluster.kill(pool.actors[0], no_restart=False)  # crash: Ray restarts it and retries its chunks
        np.testing.assert_array_equal(pool.gather(refs), expected)
    finally:
        pool.shutdown()


@pytest.mark.float_sensitive
def test_aesthetic_pool_matches_in_process_on_micro_world(micro_world, ray_cluster):
    cfg, _ = micro_world
    images = np.random.default_rng(2).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    threads = torch.get_num_threads()
    try:  # the actors run one thread each; score in-process the same way so the float sums match bit for bit
        worker = RewardWorker("aesthetic", cfg.reward, cfg.world.dir, threads=1)
        whole = worker.score(images, {})
        per_chunk = np.concatenate([worker.score(images[lo:lo + 4], {}) for lo in (0, 4)])
    finally:
        torch.set_num_threads(threads)
    pool = RewardPool("aesthetic", cfg.reward, cfg.world.dir, num_workers=2, num_cpus=0.5)
    try:
        got = pool.score(images, {}, chunk_size=4)
    finally:
        pool.shutdown()
    np.testing.assert_array_equal(got, per_chunk)
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6)  # CLIP on another batch size rounds differently
