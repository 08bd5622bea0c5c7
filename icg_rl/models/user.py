"""Who the user is: a user embedding from their id and/or recent history, and the refinement of meta features.

User inputs (the one definition the preference model shares, docs/architecture.md §6):
- `user_index`: position in the known-user vocabulary, 0 for unknown users;
- `history`: features of the user's latest clicked items [B, H, f] with a mask [B, H] (items without features, or
  padding, are masked out).

`UserEncoder` sums an id embedding (known users) and an attention-pooled summary of the history; a user with
neither — cold start — gets the learned population embedding instead, so every request has a user.

`FiLMRefiner` refines the meta features with the user: meta' = meta · (1 + γ(u)) + β(u). We chose FiLM over
cross-attention to user tokens because the user is one vector here (the history is already pooled into it), FiLM
costs two linear layers instead of an attention block, keeps the K meta tokens' structure (each token is modulated,
none is mixed in from elsewhere), and is easy to keep stable under RL (γ and β start small).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from icg_rl.data.history import lookup_key


@dataclass
class ICGUser:
    """A user as a request names them: a known id, a history of item ids, both, or neither (cold start)."""

    user_id: str | None = None
    history: list[str] = field(default_factory=list)


class UserEncoder(nn.Module):
    def __init__(self, user_ids: list[str], item_feature_dim: int, user_dim: int, id_init_std: float = 1.0):
        super().__init__()
        self.user_ids = list(user_ids)
        self.index = {u: i + 1 for i, u in enumerate(self.user_ids)}  # 0 = unknown
        self.id_embedding = nn.Embedding(len(self.user_ids) + 1, user_dim)
        nn.init.normal_(self.id_embedding.weight, std=id_init_std)  # 0: a known user starts as their history
        with torch.no_grad():
            self.id_embedding.weight[0].zero_()  # unknown ids contribute nothing
        self.history_proj = nn.Linear(item_feature_dim, user_dim)
        self.history_score = nn.Linear(user_dim, 1)  # attention pooling over history items
        self.population = nn.Parameter(torch.randn(user_dim) * 0.1)
        self.item_feature_dim, self.user_dim = item_feature_dim, user_dim

    def indices(self, user_ids: list[str | None]) -> torch.Tensor:
        """Vocabulary positions [B] (0 for None or unknown ids)."""
        return torch.tensor([self.index.get(u, 0) if u is not None else 0 for u in user_ids], dtype=torch.long)

    def forward(self, user_index: torch.Tensor, history: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
        """user_index [B], history [B, H, f], history_mask [B, H] bool -> user embedding [B, user_dim]."""
        return self.pool(user_index, self.history_proj(history), history_mask)

    def pool(self, user_index: torch.Tensor, items: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
        """`forward` after the history projection: items [B, H, user_dim] = `history_proj(history)`."""
        if items.shape[1] == 0:
            return self._with_id(user_index, None, torch.zeros_like(history_mask[:, :1]))
        scores = self.history_score(torch.tanh(items)).squeeze(-1)  # (B, H)
        weights, has_history = self._attention(scores, history_mask)
        pooled = (weights.unsqueeze(-1) * items).sum(dim=1)  # sum over H: (B, D)
        return self._with_id(user_index, pooled, has_history)

    def pool_table(self, user_index: torch.Tensor, table: torch.Tensor, history_index: torch.Tensor,
                   history_of_row: torch.Tensor | None = None) -> torch.Tensor:
        """`pool` for histories that are rows of one item table: table [N, user_dim] = `history_proj(item table)`,
        history_index [B, H] rows of it (0: padding). The same numbers as `pool(user_index, table[history_index],
        history_index > 0)`, as one weighted `embedding_bag`: gathering B × H × D rows and summing them back in the
        backward pass cost ~2/3 of a preference-model step (30 -> 8.6 ms at B=512, H=64, ~2,900 covers).
        With `history_of_row` [B], history_index [U, H] holds each distinct history once and row b pools
        history_of_row[b]: rows that share a history (a click and its sampled negatives) pool it once."""
        history_mask = history_index > 0
        if history_index.shape[1] == 0:
            rows = len(user_index)
            return self._with_id(user_index, None, torch.zeros(rows, 1, dtype=torch.bool, device=user_index.device))
        table_scores = self.history_score(torch.tanh(table)).squeeze(-1)  # (N,): one score per table row
        weights, has_history = self._attention(table_scores[history_index], history_mask)  # (U, H)
        pooled = F.embedding_bag(history_index, table, per_sample_weights=weights, mode="sum")  # (U, D)
        if history_of_row is not None:
            pooled, has_history = pooled[history_of_row], has_history[history_of_row]
        return self._with_id(user_index, pooled, has_history)

    @staticmethod
    def _attention(scores: torch.Tensor, history_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """scores [B, H] -> softmax weights over each row's real history items (0 on padding; all 0 for a row with
        no history) and has_history [B, 1]."""
        has_history = history_mask.any(dim=1, keepdim=True)  # (B, 1)
        scores = scores.masked_fill(~history_mask, float("-inf")).masked_fill(~has_history, 0.0)  # all-masked safe
        return torch.softmax(scores, dim=1) * history_mask, has_history

    def _with_id(self, user_index: torch.Tensor, pooled: torch.Tensor | None, has_history: torch.Tensor):
        """id embedding + pooled history; the population embedding for users with neither (cold start)."""
        embedding = self.id_embedding(user_index)  # (B, D); row 0 is zero
        if pooled is not None:
            embedding = embedding + pooled
        cold = ~((user_index > 0).unsqueeze(-1) | has_history)  # (B, 1): neither an id nor a history
        return torch.where(cold, self.population.expand_as(embedding), embedding)


class FiLMRefiner(nn.Module):
    def __init__(self, user_dim: int, feature_dim: int, init_scale: float = 0.1):
        super().__init__()
        self.to_gamma = nn.Linear(user_dim, feature_dim)
        self.to_beta = nn.Linear(user_dim, feature_dim)
        with torch.no_grad():
            for layer in (self.to_gamma, self.to_beta):
                layer.weight.mul_(init_scale)
                layer.bias.zero_()

    def forward(self, meta: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        """meta [B, K, d], user [B, user_dim] -> refined meta [B, K, d]."""
        gamma = self.to_gamma(user).unsqueeze(1)  # (B, 1, d)
        beta = self.to_beta(user).unsqueeze(1)  # (B, 1, d)
        return meta * (1 + gamma) + beta


def history_tensors(users: list[ICGUser], item_features: dict[str, torch.Tensor], history_len: int,
                    feature_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latest `history_len` known cover keys (or item ids) of each user -> features [B, H, f] and mask [B, H];
    unknown keys are skipped."""
    feats = torch.zeros(len(users), history_len, feature_dim)
    mask = torch.zeros(len(users), history_len, dtype=torch.bool)
    for row, user in enumerate(users):
        found = [lookup_key(key, item_features) for key in user.history]
        known = [f for f in found if f is not None][-history_len:] if history_len else []
        for col, vector in enumerate(known):
            feats[row, col] = vector
            mask[row, col] = True
    return feats, mask
