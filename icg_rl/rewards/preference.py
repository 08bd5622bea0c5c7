"""Personalized preference reward: the trained two-tower model's P(click | user, generated cover).

The user comes from the rollout batch (`user_id`, `history` item ids, "" padded) exactly as the ICG user encoder
sees it; the image goes through the same frozen CLIP the model was trained on. Differentiable in the pixels.
"""

from __future__ import annotations

from pathlib import Path

import torch

from icg_rl.preference.model import PreferenceModel
from icg_rl.rewards.base import RewardModel, register_reward
from icg_rl.rewards.clip_embedder import CLIPEmbedder


class PreferenceReward(RewardModel):
    name = "preference"
    differentiable = True

    def __init__(self, model: PreferenceModel, embedder: CLIPEmbedder, history_len: int):
        super().__init__()
        self.model, self.embedder, self.history_len = model.eval().requires_grad_(False), embedder, history_len

    def _score(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        size = len(images)
        users = [None if u is None or u == "" else str(u) for u in batch.get("user_id", [None] * size)]
        histories = [[str(i) for i in row if i] for row in batch.get("history", [[]] * size)]
        if len(users) != size or len(histories) != size:
            raise KeyError(f"preference reward: batch['user_id'] and batch['history'] need one row per image ({size})")
        user_index = self.model.user_encoder.indices(users).to(images.device)
        history_index = self.model.history_indices(histories, self.history_len).to(images.device)
        item_index = self.model.item_indices(list(batch.get("item_id", [None] * size))).to(images.device)
        logits = self.model(user_index, history_index, self.embedder.image_embeds(images), item_index)
        return torch.sigmoid(logits)


@register_reward("preference")
def build_preference(reward_cfg, world_dir) -> PreferenceReward:
    from icg_rl.preference.train import load_preference_model

    default = Path(world_dir) / "models" / "preference" / "model"
    folder = default if reward_cfg.preference == "coverworld" else Path(reward_cfg.preference)
    model, config = load_preference_model(folder)
    clip = (folder / config["clip"]).resolve() if not Path(config["clip"]).is_absolute() else Path(config["clip"])
    return PreferenceReward(model, CLIPEmbedder.from_pretrained(clip), int(config["history_len"]))
