"""The critic's user term in the preference model's own shape (`algo.nft_critic_user_form: tower`).

The preference model scores a cover as ⟨h(u), g(v)⟩ + b(g(v)) + biases, g an MLP on the cover's standardised CLIP
embedding (preference/model.py). The critic's other user terms are a direction (bilinear) or a rank-16 quadratic
(ideal, ideal_offset). On world seed 0's untrained covers, fitted as a run fits them, the gradient of their CTR part
(the looks every user likes plus the user term) pointed along the exact gradient of the preference and lift
rewards at a mean cosine of 0.16 (ideal_offset) and 0.30 (bilinear); with this shape, 0.41, and the whole critic's
along the whole mix's 0.62 instead of 0.43 (benchmarks/critic_direction.py, RESULTS tenth session).

    g      = W₂ gelu(W₁ φ + c₁) + c₂                        the looks, width W
    shared = ⟨b + H ū, g⟩                                   what every user likes (ū: the replay's mean user)
    user   = ⟨H (u − ū), g⟩                                 what sets this user apart: the part γ weighs

Centring on the mean user is what `preference_lift` does with the batch's audience and `ideal_offset` with the
look every user shares: γ > 1 then weighs each user's own taste, not the looks everybody likes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TOWER_WIDTH = 64  # the preference model's image tower is 64 wide too (preference/model.py)


class LookTower(nn.Module):
    """`algo.nft_critic_user_form: tower`: the preference model's shape, g = MLP(φ) (one GELU layer, width W),
    f_user = ⟨H u, g⟩ + ⟨b, g⟩. What every user likes (⟨b, g⟩ and the replay's mean user ū's ⟨H ū, g⟩) is the
    shared part; each user's offset ⟨H (u − ū), g⟩ is the part γ weighs (as `preference_lift` centres on the batch's
    audience). Initialised from the critic's seeded generator, so every learner rank's critic starts equal."""

    def __init__(self, dim: int, width: int, generator: torch.Generator):
        super().__init__()

        def linear(fan_in: int, fan_out: int, scale: float = 1.0) -> nn.Parameter:
            return nn.Parameter(scale * torch.randn(fan_out, fan_in, generator=generator) / fan_in ** 0.5)

        self.hidden, self.hidden_bias = linear(dim, width), nn.Parameter(torch.zeros(width))
        self.out, self.out_bias = linear(width, width), nn.Parameter(torch.zeros(width))
        self.head = linear(dim, width, 0.1)  # H: a user's weights on the looks, small at the start
        self.bias = nn.Parameter(torch.zeros(width))  # b: what every user likes in them

    def looks(self, image: torch.Tensor) -> torch.Tensor:
        """φ [B, D] -> g [B, W]."""
        return F.gelu(image @ self.hidden.T + self.hidden_bias) @ self.out.T + self.out_bias

    def forward(self, image: torch.Tensor, user: torch.Tensor, user_mean: torch.Tensor,
                looks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """φ [B, D], u [B, D], ū [D] -> (shared [B], personal [B]); `looks`: g of these φ, when already known."""
        looks = self.looks(image) if looks is None else looks
        shared = looks @ (self.bias + self.head @ user_mean)
        return shared, ((user - user_mean) @ self.head.T * looks).sum(-1)
