"""What `python -m icg_rl.world build` reports of a built world: its size and the oracle's view of its test
impressions (AUC of the true click probabilities, CTR of the reference covers and of the best existing variant)."""

from __future__ import annotations

from pathlib import Path

from icg_rl.data.coverworld import load_coverworld
from icg_rl.metrics import roc_auc
from icg_rl.world.oracle import Oracle


def world_stats(out: Path) -> dict:
    """Counts and the oracle's view of the test impressions (the world's own summary: the oracle is allowed here)."""
    data = load_coverworld(out)
    oracle = Oracle(out)
    test = data.interactions[data.interactions["split"] == "test"]
    prob = oracle.variant_click_prob(test["user_id"], test["item_id"], test["variant_id"])
    reference = oracle.variant_click_prob(test["user_id"], test["item_id"], ["ref"] * len(test))
    return {
        "items": len(data.items), "users": len(data.users), "covers": len(data.variants),
        "oracle_test_auc": roc_auc(prob, test["clicked"].to_numpy()),
        "oracle_test_ctr_reference_cover": float(reference.mean()),
        "oracle_test_ctr_best_variant": float(oracle.best_variant_ctr(test["user_id"], test["item_id"]).mean()),
    }
