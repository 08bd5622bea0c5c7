"""The CoverWorld oracle: the truth about every user, for EVALUATION ONLY.

It reads the hidden truth a world build keeps under `oracle/` and answers:
- `click_prob(user_ids, item_ids, images)`: P(click | user, item, any image) under the world's click model;
- `aesthetic(images)`: the aesthetic truth (1..10) of any image;
- `best_variant_ctr(user_ids, item_ids)`: the CTR of the best existing cover per (user, item) — the ceiling of a
  perfect artwork selector, which personalized generation should beat.

Training, rewards and models must never import this module (tests/test_oracle_isolation.py enforces it): they
learn from logged clicks and public ratings, like a real system.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from icg_rl.world.appeal import ClickModel, aesthetic_truth
from icg_rl.world.features import exposure_clipping, image_features


class Oracle:
    def __init__(self, world_dir: str | Path):
        root = Path(world_dir) / "oracle"
        if not (root / "click_model.json").is_file():
            raise FileNotFoundError(f"{root}: no oracle files (click_model.json); is {world_dir} a CoverWorld build?")
        meta = json.loads((root / "click_model.json").read_text())
        self.click_model = ClickModel(meta["genre_weight"], meta["look_weight"], meta["offset"],
                                      np.asarray(meta["feature_scale"]))
        users = pd.read_parquet(root / "users.parquet").set_index("user_id")
        items = pd.read_parquet(root / "items.parquet").set_index("item_id")
        self._affinity = users.filter(like="affinity_")
        self._ideal = users.filter(like="ideal_")
        self._items = items
        variants = pd.read_parquet(Path(world_dir) / "variants.parquet")
        self._variant_features = variants.set_index(["item_id", "variant_id"]).filter(like="phi_")

    def _lookup(self, user_ids, item_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        user_ids, item_ids = list(map(str, user_ids)), list(map(str, item_ids))
        unknown = (sorted(set(user_ids) - set(self._ideal.index))[:3]
                   or sorted(set(item_ids) - set(self._items.index))[:3])
        if unknown:
            raise KeyError(f"oracle: unknown user or item id(s) {unknown}")
        genre = self._items.loc[item_ids, "genre_index"].to_numpy()
        affinity = self._affinity.loc[user_ids].to_numpy()[np.arange(len(user_ids)), genre]
        return affinity, self._ideal.loc[user_ids].to_numpy(), self._items.loc[item_ids, "bias"].to_numpy()

    def ideal_points(self, user_ids) -> np.ndarray:
        """The users' hidden ideal looks φ*: (N, 5), in features.FEATURE_NAMES order."""
        user_ids = list(map(str, user_ids))
        unknown = sorted(set(user_ids) - set(self._ideal.index))[:3]
        if unknown:
            raise KeyError(f"oracle: unknown user id(s) {unknown}")
        return self._ideal.loc[user_ids].to_numpy()

    def click_prob_from_features(self, user_ids, item_ids, features: np.ndarray) -> np.ndarray:
        affinity, ideal, bias = self._lookup(user_ids, item_ids)
        return self.click_model.prob(affinity, np.asarray(features), ideal, bias)

    def click_prob(self, user_ids, item_ids, images: np.ndarray) -> np.ndarray:
        """images: uint8 or float (N, H, W, 3) -> P(click) (N,)."""
        return self.click_prob_from_features(user_ids, item_ids, image_features(images))

    def variant_click_prob(self, user_ids, item_ids, variant_ids) -> np.ndarray:
        keys = list(zip(map(str, item_ids), map(str, variant_ids)))
        return self.click_prob_from_features(user_ids, item_ids, self._variant_features.loc[keys].to_numpy())

    def aesthetic(self, images: np.ndarray) -> np.ndarray:
        return aesthetic_truth(image_features(images), exposure_clipping(images))

    def best_variant_ctr(self, user_ids, item_ids) -> np.ndarray:
        """max over the item's existing covers (reference + variants) of P(click): (N,)."""
        user_ids, item_ids = list(map(str, user_ids)), list(map(str, item_ids))
        best = np.full(len(user_ids), -np.inf)
        for variant_id in self._variant_features.index.get_level_values(1).unique():
            best = np.maximum(best, self.variant_click_prob(user_ids, item_ids, [variant_id] * len(item_ids)))
        return best
