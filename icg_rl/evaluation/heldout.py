"""Held-out evaluation during and after training: fresh covers for test-split (user, item) pairs, scored by every
reward pool, and on CoverWorld by the oracle (true CTR) — beside the items' reference covers, the best existing
variant per user (a perfect artwork selector) and the same policy with the user embedding zeroed.

Samples use the evaluation noise stream (`rl/seeding.py`), the same every time: numbers are comparable over a run.
"""

from __future__ import annotations

import numpy as np

from icg_rl.data.stream import LoadReferences, build_pairs, epoch_order, expand_groups, frame_to_batch
from icg_rl.rl.sampling import REWARD_INPUTS
from icg_rl.rl.seeding import EVALUATION


def pairs_to_batch(cfg, frame) -> dict[str, np.ndarray]:
    """Pairs (user_id, item_id, history, title, image_path) -> a stream batch with reference images, one row each."""
    loaded = LoadReferences(cfg.data.reference_size, cfg.data.history_len)(frame.reset_index(drop=True))
    return expand_groups(frame_to_batch(loaded), 1)


def heldout_batch(cfg, data, split: str = "test", count: int | None = None, pairs=None) -> dict[str, np.ndarray]:
    """`count` (default `train.eval_pairs`) pairs of a split — a seeded choice, the same for every evaluation.
    `pairs`: the split's `build_pairs` when the caller already has them (they are not built twice)."""
    pairs = build_pairs(data, split, cfg.data.history_len) if pairs is None else pairs
    if not len(pairs):
        raise ValueError(f"evaluation: split {split!r} has no (user, item) pairs")
    chosen = epoch_order(len(pairs), cfg.train.seed, 2**31 - 1)[: count or cfg.train.eval_pairs]  # never trained
    return pairs_to_batch(cfg, pairs.frame(np.sort(chosen)))


def sample_images(rollout, batch: dict, zero_user: bool = False, weights_ref=None) -> np.ndarray:
    """uint8 [N, H, W, 3] covers from the rollout pool with its current weights (or `weights_ref`'s)."""
    import ray

    chunks = rollout.sample(batch, iteration=0, stream=EVALUATION, zero_user=zero_user, weights_ref=weights_ref)
    return np.concatenate(ray.get([images for _, images, _ in chunks]))


def score_images(pools: dict, images: np.ndarray, batch: dict) -> dict[str, float]:
    """Raw mean score of every reward pool on the images."""
    inputs = {k: batch[k] for k in REWARD_INPUTS if k in batch}
    refs = {name: pool.score_async(images, inputs) for name, pool in pools.items()}
    return {name: float(pool.gather(refs[name]).mean()) for name, pool in pools.items()}


def evaluate_heldout(cfg, rollout, pools: dict, batch: dict, with_oracle: bool,
                     weights_ref=None) -> tuple[dict, dict]:
    """-> (metrics {"eval/...", "oracle/..."}, images {"reference", "icg", "user_zeroed"} uint8 arrays) of the
    rollout pool's policy, or of `weights_ref` (the learner's averaged policy) when given."""
    images = {"reference": np.asarray(batch["reference_image"]), "icg": sample_images(rollout, batch, False,
                                                                                      weights_ref),
              "user_zeroed": sample_images(rollout, batch, True, weights_ref)}
    metrics = {f"eval/{name}": v for name, v in score_images(pools, images["icg"], batch).items()}
    if "clip_t" in pools:
        metrics["eval/clip_t_reference"] = score_images({"clip_t": pools["clip_t"]}, images["reference"],
                                                        batch)["clip_t"]
    if with_oracle:  # CoverWorld: the world's truth, as a reference only (never a training signal)
        from icg_rl.evaluation.world_reference import ab_test_vs_reference, oracle_ctr, taste_correlation

        users, items = batch["user_id"], batch["item_id"]
        icg = oracle_ctr(cfg.world.dir, users, items, images["icg"])
        zeroed = oracle_ctr(cfg.world.dir, users, items, images["user_zeroed"])
        metrics |= {"oracle/ctr_icg": icg["oracle/ctr_generated"], "oracle/ctr_reference": icg["oracle/ctr_reference"],
                    "oracle/ctr_best_variant": icg["oracle/ctr_best_variant"],
                    "oracle/ctr_user_zeroed": zeroed["oracle/ctr_generated"],
                    "oracle/aesthetic_icg": icg["oracle/aesthetic_generated"]}
        metrics |= taste_correlation(cfg.world.dir, users, images["icg"])
        metrics |= ab_test_vs_reference(cfg.world.dir, users, items, images["icg"],
                                        cfg.evaluation.ab_impressions_per_pair, cfg.train.seed)
    return metrics, images
