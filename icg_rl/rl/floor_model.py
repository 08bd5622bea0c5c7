"""The critic's model of a floored reward (`reward.floors`, e.g. CLIP-T): r̂(φ, i), fitted on the pools' own scores.

A floor is a per-cover constraint: a cover pays only while its score is below f × its item's reference cover's
(rewards/mix.py). Reward backprop pays it exactly, cover by cover, and held relevance at 0.92–0.96 of the reference
covers' on every world (benchmarks/RESULTS.md, issue 18). The critic's one regression on the mixed advantages
cannot: it is linear in how far below the floor a cover is, so every cover gets the same push back, and the few that
a strong user term carried far from their item are not pulled harder (issue 34: one user's covers on world seed 1
share a look whatever the item; CLIP-T fell to 0.49 of the reference's on seed 2).

So each floored reward gets its own small model, fitted on its raw scores (not group-centred: the score itself is
what the floor compares), and the policy pays the floor on it, per cover, as backprop does:

    r̂(φ, i) = μ + σ · (c + ⟨a, φ⟩ + ⟨b, i⟩ + ⟨R φ, S i⟩ + ⟨m, [φ, φ] ⊙ i⟩)   μ, σ: the replay's mean, std of s
    fit     : Σ ((r̂ − s) / σ)²
    policy  : + w · mean relu(f · s_ref − r̂(φ(x̂₀), i)) / σ               (`algo.nft_critic_floor_weight` w)

The agreement terms are those of the critic's relevance part (rl/critic.py): a CLIP-T score is the agreement of the
cover's embedding with its title's, which they hold whole.
"""

from __future__ import annotations

import torch
from torch import nn


class FlooredRewardModel(nn.Module):
    def __init__(self, dim: int, rank: int, generator: torch.Generator):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.image = nn.Parameter(torch.zeros(dim))
        self.item_linear = nn.Parameter(torch.zeros(2 * dim))
        self.image_item = nn.Parameter(torch.randn(rank, dim, generator=generator) / dim ** 0.5)
        self.item = nn.Parameter(torch.randn(rank, 2 * dim, generator=generator) / (2 * dim) ** 0.5)
        self.match = nn.Parameter(torch.zeros(2 * dim))
        self.register_buffer("mean", torch.zeros(()))  # the replay's statistics of the score (saved: a resumed
        self.register_buffer("scale", torch.ones(()))  # run climbs the same model before its first fit)

    def forward(self, image: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """φ [B, D], i [B, 2D] -> the predicted score [B], in the reward's own units."""
        agreement = ((image @ self.image_item.T) * (item @ self.item.T)).sum(-1)
        agreement = agreement + (image.repeat(1, 2) * item) @ self.match
        standard = self.bias + image @ self.image + item @ self.item_linear + agreement
        return self.mean + self.scale * standard

    def fit_loss(self, image: torch.Tensor, item: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Mean squared error in units of the scores' std, over the rows that have a score (NaN: none)."""
        known = torch.isfinite(scores)
        if not bool(known.any()):
            return scores.new_zeros(())
        with torch.no_grad():
            self.mean.copy_(scores[known].mean())
            self.scale.copy_(scores[known].std().clamp_min(1e-4) if int(known.sum()) > 1 else torch.ones(()))
        return ((self(image[known], item[known]) - scores[known]) / self.scale).pow(2).mean()

    def shortfall(self, image: torch.Tensor, item: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
        """relu(floor − r̂) / σ per cover [B] (0 where the floor is NaN: an item without a reference cover)."""
        floor = torch.where(torch.isfinite(floor), floor, torch.full_like(floor, -torch.inf))
        return torch.relu(floor - self(image, item)) / self.scale
