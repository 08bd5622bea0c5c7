"""Personalized preference reward: the trained two-tower model's P(click | user, generated cover).

The user comes from the rollout batch (`user_id`, `history` item ids, "" padded) exactly as the ICG user encoder
sees it; the image goes through the same frozen CLIP the model was trained on. Differentiable in the pixels.
"""

from __future__ import annotations

from pathlib import Path

import torch

from icg_rl.models.clip_embedder import CLIPEmbedder
from icg_rl.paths import preference_folder, preference_model_folder
from icg_rl.preference.model import PreferenceModel, load_preference_model
from icg_rl.rewards.base import RewardModel


class PreferenceReward(RewardModel):
    name = "preference"
    differentiable = True

    def __init__(self, model: PreferenceModel, embedder: CLIPEmbedder, history_len: int):
        super().__init__()
        self.model, self.embedder, self.history_len = model.eval().requires_grad_(False), embedder, history_len

    def _score(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        return torch.sigmoid(self.model(*self._inputs(images, batch)))

    def _inputs(self, images: torch.Tensor, batch: dict) -> tuple[torch.Tensor, ...]:
        """(user_index, history_index, image_embeds, item_index) of a scored batch, as the model takes them."""
        size = len(images)
        users = [None if u is None or u == "" else str(u) for u in batch.get("user_id", [None] * size)]
        histories = [[str(i) for i in row if i] for row in batch.get("history", [[]] * size)]
        if len(users) != size or len(histories) != size:
            raise KeyError(f"preference reward: batch['user_id'] and batch['history'] need one row per image ({size})")
        user_index = self.model.user_encoder.indices(users).to(images.device)
        history_index = self.model.history_indices(histories, self.history_len).to(images.device)
        item_index = self.model.item_indices(list(batch.get("item_id", [None] * size))).to(images.device)
        return user_index, history_index, self.embedder.image_embeds(images), item_index


class PreferenceLiftReward(PreferenceReward):
    """How much more *this* user would click the cover than the batch's other users would: the personal term of
    the click logit, centred on the audience,

        lift(u, x) = ⟨h(u) − mean_{u' in batch} h(u'), g(x)⟩        (h = user head, g = image tower)

    Everything that any user likes about a cover (image bias, the audience's mean taste) and every constant of
    the row (user and item bias) cancels, so this reward moves a cover only toward what sets its user apart.
    P(click) alone also pays for what everybody likes, which the policy learns with or without the user — the
    user-zeroed policy gets it too — so personalization (ICG over user-zeroed) grows slowly. The audience is the
    distinct users of the scored batch (a sample of the population: 16 pairs carry ~16 users); a batch of one
    user is scored on the raw personal term ⟨h(u), g(x)⟩."""

    name = "preference_lift"

    def _score(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        user_index, history_index, image_embeds, item_index = self._inputs(images, batch)
        user, image = self.model.towers(user_index, history_index, image_embeds, item_index)
        head = self.model.user_head(user)  # (B, hidden)
        # a user is their (id, history) row: rows of the same user count once in the audience
        _, user_of_row = torch.unique(torch.cat([user_index[:, None], history_index], dim=1), dim=0,
                                      return_inverse=True)
        users = int(user_of_row.max()) + 1
        per_user = head.new_zeros(users, head.shape[1]).index_add_(0, user_of_row, head)  # (U, hidden) sums
        per_user = per_user / torch.bincount(user_of_row, minlength=users)[:, None]  # (U, hidden) means
        audience = per_user.mean(0) if users > 1 else torch.zeros_like(head[0])
        return ((head - audience) * image).sum(-1)  # sum over hidden: (B,)


def build_preference(reward_cfg, world_dir, kind: type[PreferenceReward] = PreferenceReward) -> PreferenceReward:
    folder = preference_model_folder(preference_folder(reward_cfg, world_dir))  # a --out folder: its model/
    model, config = load_preference_model(folder)
    clip = (folder / config["clip"]).resolve() if not Path(config["clip"]).is_absolute() else Path(config["clip"])
    return kind(model, CLIPEmbedder.from_pretrained(clip), int(config["history_len"]))


def build_preference_lift(reward_cfg, world_dir) -> PreferenceLiftReward:
    return build_preference(reward_cfg, world_dir, PreferenceLiftReward)
