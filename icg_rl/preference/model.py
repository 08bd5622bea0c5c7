"""PreferenceModel: P(click | user, cover image) as a two-tower model.

- user tower: the ICG `UserEncoder` itself (user id and/or attention-pooled history of item features; population
  embedding for cold-start users) — one definition of what a user is, shared with the generator;
- image tower: an MLP on the L2-normalised CLIP image embedding of the cover;
- logit = ⟨user_head(u), image(v)⟩ + image_bias(v) + user_bias(u) + item_bias(i).

The dot product carries the personal part (taste × look), the image bias what everybody likes (a quadratic look
penalty has a per-image part), the user bias how clicky a user is, the item bias how popular the item is whatever
its cover (a recommender's usual item bias: without it the towers must explain popularity through the image).
The item bias is constant per (user, item), so as a reward it shifts every cover of an item alike. Differentiable
in the image embedding, so it is a reward for reward backprop too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from icg_rl.data.history import lookup_key
from icg_rl.models.user import UserEncoder


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class PreferenceModel(nn.Module):
    def __init__(self, user_ids: list[str], item_ids: list[str], item_dim: int, image_dim: int, user_dim: int = 64,
                 hidden_dim: int = 64, item_bias: bool = False):
        super().__init__()
        self.config = dict(user_ids=list(user_ids), item_ids=list(item_ids), item_dim=item_dim, image_dim=image_dim,
                           user_dim=user_dim, hidden_dim=hidden_dim, item_bias=item_bias)
        self.item_index = {item: i + 1 for i, item in enumerate(item_ids)}  # 0 = padding
        self.register_buffer("item_features", torch.zeros(len(item_ids) + 1, item_dim))  # row 0 stays zero
        self.user_encoder = UserEncoder(user_ids, item_dim, user_dim)
        self.user_head = mlp([user_dim, hidden_dim, hidden_dim])
        self.user_bias = nn.Linear(user_dim, 1)
        self.image_tower = mlp([image_dim, 2 * hidden_dim, hidden_dim])
        self.image_bias = nn.Linear(hidden_dim, 1)
        if item_bias:  # one row per key of the item table (0 = unknown item: no bias)
            self.item_bias = nn.Embedding(len(item_ids) + 1, 1)
            nn.init.zeros_(self.item_bias.weight)

    def user_vector(self, user_index: torch.Tensor, history_index: torch.Tensor) -> torch.Tensor:
        """user_index [B] (0 unknown), history_index [B, H] (0 padding) -> [B, user_dim]."""
        history = self.item_features[history_index]  # (B, H, item_dim)
        return self.user_encoder(user_index, history, history_index > 0)

    def forward(self, user_index: torch.Tensor, history_index: torch.Tensor, image_embeds: torch.Tensor,
                item_index: torch.Tensor | None = None):
        """-> click logit [B]. image_embeds [B, image_dim] (any norm: normalised here); item_index [B] from
        `item_indices` (0 or None: no item bias)."""
        user = self.user_vector(user_index, history_index)  # (B, user_dim)
        image = self.image_tower(F.normalize(image_embeds, dim=-1))  # (B, hidden)
        personal = (self.user_head(user) * image).sum(-1)  # sum over hidden: (B,)
        logit = personal + self.image_bias(image).squeeze(-1) + self.user_bias(user).squeeze(-1)
        if item_index is not None and hasattr(self, "item_bias"):
            logit = logit + self.item_bias(item_index).squeeze(-1)
        return logit

    def item_indices(self, item_ids: list[str | None]) -> torch.Tensor:
        """Item ids (or cover keys: their item is used) -> [B] rows of the item bias, 0 for unknown or None."""
        return torch.tensor([self.item_index.get(str(i).split("|", 1)[0], 0) if i is not None else 0
                             for i in item_ids], dtype=torch.long)

    def history_indices(self, histories: list[list[str]], length: int) -> torch.Tensor:
        """Cover keys per row (data/history.py) -> [B, length] indices of the latest known ones, 0-padded."""
        out = torch.zeros(len(histories), length, dtype=torch.long)
        for row, items in enumerate(histories):
            found = [lookup_key(i, self.item_index) for i in items]
            known = [i for i in found if i is not None][-length:] if length else []
            out[row, : len(known)] = torch.tensor(known, dtype=torch.long)
        return out
