"""The reward interface (docs/architecture.md §6); the registry of built-in rewards is `rewards/registry.py`.

    reward.score(images, batch) -> Tensor[B]

`images` are float [B, 3, H, W] in [0, 1] (what the VAE decodes to); `batch` is the rollout batch dict (the stream's
contract: `title`, `reference_image`, `has_reference`, `user_id`, `history`, ...). A reward declares
`differentiable`: True when d(score)/d(images) is meaningful, so reward backprop may use it inside the learner.
Wrong shape, dtype or range fails with a clear error; a NaN/inf score fails with the reward's name.
"""

from __future__ import annotations

import torch
from torch import nn

RANGE_TOLERANCE = 1e-3  # decoders overshoot [0, 1] by float noise; more than this is a caller's bug


class RewardModel(nn.Module):
    name: str = "reward"
    differentiable: bool = False

    def score(self, images: torch.Tensor, batch: dict | None = None) -> torch.Tensor:
        """Checked entry point: validates the images, computes, and checks the scores are finite."""
        check_images(images, self.name)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.differentiable):
            scores = self._score(images.clamp(0.0, 1.0), batch or {})
        if scores.shape != (images.shape[0],):
            raise RuntimeError(f"reward {self.name!r} returned shape {tuple(scores.shape)}; expected "
                               f"({images.shape[0]},)")
        check_finite(scores, self.name)
        return scores

    def _score(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        raise NotImplementedError


def check_images(images, name: str) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"reward {name!r}: images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"reward {name!r}: images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"reward {name!r}: images must be float in [0, 1], got dtype {images.dtype} "
                        f"(convert uint8 with images.float() / 255)")
    lo, hi = float(images.detach().min()), float(images.detach().max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(f"reward {name!r}: images must be in [0, 1], got values in [{lo:.3f}, {hi:.3f}] "
                         f"(decode with (x / 2 + 0.5) for VAE outputs in [-1, 1])")


def check_finite(scores: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(scores.detach())
    if bad.any():
        rows = bad.nonzero().flatten().tolist()[:5]
        raise FloatingPointError(f"reward {name!r} produced {int(bad.sum())} non-finite score(s) (rows {rows}): "
                                 f"{scores.detach()[bad][:5].tolist()}")
