"""The CoverWorld truth as a reference for evaluation: the oracle's AUC on logged impressions and the true CTR of
generated covers. Evaluation only — callers use it after training, to report against the ceiling."""

from __future__ import annotations

import numpy as np
import pandas as pd

from icg_rl.metrics import roc_auc
from icg_rl.world.features import FEATURE_NAMES, image_features
from icg_rl.world.oracle import Oracle


def true_click_auc(world_dir, rows: pd.DataFrame) -> float:
    """AUC of the true click probability on impressions (user_id, item_id, variant_id, label): the ceiling any
    click model can reach on these labels."""
    oracle = Oracle(world_dir)
    prob = oracle.variant_click_prob(rows["user_id"], rows["item_id"], rows["variant_id"])
    return roc_auc(prob, np.asarray(rows["label"]) > 0.5)


def oracle_ctr(world_dir, user_ids, item_ids, images: np.ndarray) -> dict[str, float]:
    """True CTR of generated covers (uint8 [N, H, W, 3]) for (user, item) pairs, beside the item's reference cover
    and the best existing variant (a perfect artwork selector) for the same pairs."""
    oracle = Oracle(world_dir)
    return {
        "oracle/ctr_generated": float(oracle.click_prob(user_ids, item_ids, images).mean()),
        "oracle/ctr_reference": float(oracle.variant_click_prob(user_ids, item_ids, ["ref"] * len(user_ids)).mean()),
        "oracle/ctr_best_variant": float(oracle.best_variant_ctr(user_ids, item_ids).mean()),
        "oracle/aesthetic_generated": float(oracle.aesthetic(images).mean()),
    }


def taste_correlation(world_dir, user_ids, images: np.ndarray) -> dict[str, float]:
    """Does the cover follow the user's taste? Per look dimension k, the Pearson correlation over (user, item) pairs
    between φ_k of the generated cover and the user's true ideal φ*_k. A policy that ignores the user scores ~0
    (its covers vary with the item only); 1 means the cover's look tracks the user exactly. NaN when either side
    is constant (e.g. a single user)."""
    generated = image_features(images)  # (N, 5)
    ideal = Oracle(world_dir).ideal_points(user_ids)  # (N, 5)
    out = {}
    for k, name in enumerate(FEATURE_NAMES):
        a, b = generated[:, k] - generated[:, k].mean(), ideal[:, k] - ideal[:, k].mean()
        denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
        out[f"oracle/taste_corr_{name}"] = float((a * b).sum() / denominator) if denominator > 1e-12 else float("nan")
    return out


def ab_test_vs_reference(world_dir, user_ids, item_ids, images: np.ndarray, impressions_per_pair: int,
                         seed: int) -> dict[str, float]:
    """A simulated A/B test of the generated covers against the items' reference covers on the same pairs: clicks
    drawn from the true P(click), `impressions_per_pair` each (evaluation/scores.py) -> lift and two-sided p-value."""
    from icg_rl.evaluation.scores import simulated_ab_test

    oracle = Oracle(world_dir)
    probs = {"reference": oracle.variant_click_prob(user_ids, item_ids, ["ref"] * len(user_ids)),
             "icg": oracle.click_prob(user_ids, item_ids, images)}
    row = simulated_ab_test(probs, impressions_per_pair, seed, control="reference")["icg"]
    return {"oracle/ab_lift": float(row["lift_vs_reference"]), "oracle/ab_p_value": float(row["p_vs_reference"])}
