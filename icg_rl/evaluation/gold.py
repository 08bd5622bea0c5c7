"""The gold reward: CoverWorld's true P(click | user, cover), as a reward. BENCHMARK ONLY.

The reward-overoptimization setting (Gao et al., 2023) asks of every recipe: trained on the learned preference
reward (the proxy), how much of the true objective does it gain, and how much would it gain with the true objective
itself as the reward (gold)? When gold-trained policies personalize and proxy-trained ones do not, the reward model
is the limit; when neither does, the policy or the recipe is. `benchmarks/personalization_gap.py` runs both.

It lives with the evaluation code because it reads the world's hidden truth: training code never imports it
(tests/test_oracle_isolation.py), and no config can name it; a benchmark puts it in place of the preference reward.
Differentiable in the pixels (the world's features have a torch twin), so reward backprop can use it.
"""

from __future__ import annotations

import numpy as np
import torch

from icg_rl.rewards.base import RewardModel
from icg_rl.world.features import image_features_torch
from icg_rl.world.oracle import Oracle


class GoldReward(RewardModel):
    name = "gold"
    differentiable = True

    def __init__(self, world_dir):
        super().__init__()
        self.oracle = Oracle(world_dir)
        model = self.oracle.click_model
        self.register_buffer("feature_scale", torch.as_tensor(np.asarray(model.feature_scale), dtype=torch.float32))
        self.genre_weight, self.look_weight, self.offset = model.genre_weight, model.look_weight, model.offset

    def _score(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        users, items = batch.get("user_id"), batch.get("item_id")
        if users is None or items is None or len(users) != len(images) or len(items) != len(images):
            raise KeyError(f"gold reward: batch['user_id'] and batch['item_id'] need one row per image "
                           f"({len(images)})")
        affinity, ideal, bias = (torch.as_tensor(np.asarray(a), dtype=torch.float32, device=images.device)
                                 for a in self.oracle._lookup(list(users), list(items)))
        features = image_features_torch(images.float())  # (B, 5)
        distance = ((self.feature_scale * (features - ideal)) ** 2).mean(dim=-1)  # mean over the 5 looks: (B,)
        return torch.sigmoid(self.genre_weight * affinity - self.look_weight * distance + bias + self.offset)


class GoldLiftReward(GoldReward):
    """The truth's counterpart of `preference_lift`: how much closer the cover is to its user's ideal look than to
    the batch's other users' (the personal term of the true click logit, centred on the audience; genre affinity
    and item bias are constant in the cover and drop out). BENCHMARK ONLY, like `GoldReward`."""

    name = "gold_lift"

    def _score(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        users = [str(u) for u in batch.get("user_id", [])]
        if len(users) != len(images):
            raise KeyError(f"gold lift: batch['user_id'] needs one row per image ({len(images)})")
        audience = sorted(set(users))
        ideals = torch.as_tensor(self.oracle.ideal_points(audience), dtype=torch.float32, device=images.device)
        features = image_features_torch(images.float())  # (B, 5)
        # distance of every cover to every audience member's ideal look: (B, U)
        distance = ((self.feature_scale * (features[:, None] - ideals[None])) ** 2).mean(dim=-1)
        own = distance[torch.arange(len(users)), torch.as_tensor([audience.index(u) for u in users])]
        centred = own - distance.mean(dim=1) if len(audience) > 1 else own
        return -self.look_weight * centred
