"""The LAION aesthetic predictor's head: an MLP on L2-normalised CLIP image embeddings.

The layer layout matches the public weight file (`sac+logos+ava1-l14-linearMSE.pth`, a plain state dict with keys
`layers.{0,2,4,6,7}.{weight,bias}`): Linear(d→1024) Dropout(0.2) Linear(1024→128) Dropout(0.2) Linear(128→64)
Dropout(0.1) Linear(64→16) Linear(16→1), no activations. d = 768 for CLIP ViT-L/14; CoverWorld's head uses its tiny
CLIP's projection width and is trained on the world's public ratings.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class AestheticHead(nn.Module):
    def __init__(self, in_dim: int = 768):
        super().__init__()
        self.in_dim = in_dim
        self.layers = nn.Sequential(
            nn.Linear(in_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """image_embeds [B, d] (any norm; L2-normalised here, as LAION trained it) -> score [B]."""
        normed = image_embeds / image_embeds.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        return self.layers(normed).squeeze(-1)  # (B,)

    @classmethod
    def load(cls, path: str | Path) -> AestheticHead:
        """Load a plain state dict (LAION's file layout) safely: `weights_only=True`, shapes checked."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        expected = {f"layers.{i}.{k}" for i in (0, 2, 4, 6, 7) for k in ("weight", "bias")}
        if not isinstance(state, dict) or set(state) != expected:
            keys = set(state) if isinstance(state, dict) else set()
            raise ValueError(f"{path}: not a LAION aesthetic-head state dict: missing keys {sorted(expected - keys)}, "
                             f"unexpected keys {sorted(keys - expected)[:8]}")
        head = cls(in_dim=state["layers.0.weight"].shape[1])
        head.load_state_dict(state)
        return head.eval()

    def save(self, path: str | Path) -> None:
        import io

        from icg_rl.io import atomic_write_bytes

        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        atomic_write_bytes(path, buffer.getvalue())
