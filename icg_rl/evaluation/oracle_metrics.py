"""What the CoverWorld oracle says about logged impressions (evaluation only; never used to train)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from icg_rl.metrics import roc_auc
from icg_rl.world.oracle import Oracle


def oracle_auc(world_dir, rows: pd.DataFrame) -> float:
    """AUC of the true click probability on impressions (user_id, item_id, variant_id, label): the ceiling any
    click model can reach on these labels."""
    oracle = Oracle(world_dir)
    prob = oracle.variant_click_prob(rows["user_id"], rows["item_id"], rows["variant_id"])
    return roc_auc(prob, np.asarray(rows["label"]) > 0.5)
