"""φ(x): the fixed, documented pixel features that CoverWorld users have a taste over.

For an RGB image x in [0, 1] with luminance L = 0.299 R + 0.587 G + 0.114 B:

| k | name        | definition                                                        | typical range |
|---|-------------|-------------------------------------------------------------------|---------------|
| 0 | brightness  | mean(L)                                                           | 0 .. 1        |
| 1 | warmth      | mean(R − B)                                                       | −1 .. 1       |
| 2 | saturation  | mean(max(R,G,B) − min(R,G,B))                                     | 0 .. 1        |
| 3 | contrast    | std(L)                                                            | 0 .. 0.5      |
| 4 | composition | horizontal centroid of saliency |L − mean(L)|, in image units     | −1 .. 1       |

`exposure_clipping` (share of pixels with a channel at 0 or 255) is not a taste feature; the world's aesthetic
truth penalises it, so "push everything to the limit" shows up as a loss.

Works on numpy (batch or single image, uint8 or float) and on torch tensors [B, 3, H, W] (differentiable).
"""

from __future__ import annotations

import numpy as np
import torch

FEATURE_NAMES = ("brightness", "warmth", "saturation", "contrast", "composition")
NUM_FEATURES = len(FEATURE_NAMES)


def as_float_nhwc(images: np.ndarray) -> np.ndarray:
    """uint8 or float images, (H, W, 3) or (N, H, W, 3) -> float32 (N, H, W, 3) in [0, 1]."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: got shape {images.shape}; expected (N, H, W, 3) or (H, W, 3)")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def image_features(images: np.ndarray) -> np.ndarray:
    """φ for a batch of images: (N, H, W, 3) -> (N, 5) float64."""
    x = as_float_nhwc(images)
    n, _, w, _ = x.shape
    lum = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (N, H, W)
    brightness = lum.mean(axis=(1, 2))  # mean over pixels
    warmth = (x[..., 0] - x[..., 2]).mean(axis=(1, 2))
    saturation = (x.max(axis=-1) - x.min(axis=-1)).mean(axis=(1, 2))
    contrast = lum.std(axis=(1, 2))
    saliency = np.abs(lum - brightness[:, None, None]) + 1e-6  # (N, H, W)
    column = (np.arange(w, dtype=np.float32) + 0.5) / w * 2.0 - 1.0  # (W,) in [-1, 1]
    composition = (saliency * column).sum(axis=(1, 2)) / saliency.sum(axis=(1, 2))  # centroid over pixels
    return np.stack([brightness, warmth, saturation, contrast, composition], axis=1).astype(np.float64)


def exposure_clipping(images: np.ndarray) -> np.ndarray:
    """Share of pixels with any channel at the limits (≤ 1/255 or ≥ 254/255): (N, H, W, 3) -> (N,)."""
    x = as_float_nhwc(images)
    clipped = ((x <= 1.0 / 255.0) | (x >= 254.0 / 255.0)).any(axis=-1)  # (N, H, W)
    return clipped.mean(axis=(1, 2)).astype(np.float64)


def image_features_torch(images: torch.Tensor) -> torch.Tensor:
    """φ for float tensors [B, 3, H, W] in [0, 1] -> [B, 5]; the same definitions, differentiable."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: got shape {tuple(images.shape)}; expected [B, 3, H, W]")
    r, g, b = images[:, 0], images[:, 1], images[:, 2]  # (B, H, W) each
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    brightness = lum.mean(dim=(1, 2))
    warmth = (r - b).mean(dim=(1, 2))
    saturation = (images.amax(dim=1) - images.amin(dim=1)).mean(dim=(1, 2))
    contrast = lum.flatten(1).std(dim=1, unbiased=False)
    saliency = (lum - brightness[:, None, None]).abs() + 1e-6
    w = images.shape[-1]
    column = (torch.arange(w, dtype=images.dtype, device=images.device) + 0.5) / w * 2.0 - 1.0
    composition = (saliency * column).sum(dim=(1, 2)) / saliency.sum(dim=(1, 2))
    return torch.stack([brightness, warmth, saturation, contrast, composition], dim=1)


LOOK_WORDS = (
    ("dark", "dim", "bright"),
    ("cool", "neutral", "warm"),
    ("muted", "soft", "vivid"),
    ("flat", "balanced", "punchy"),
    ("left", "centred", "right"),
)


def describe_looks(features: np.ndarray, clipping: np.ndarray) -> list[str]:
    """Alt-text style words for each image (what a real CLIP learns colour and layout from): each feature's tercile
    over the given images names it, plus 'blown-out' when over a third of the pixels clip.
    features (N, 5), clipping (N,) -> N strings like 'dark warm vivid punchy left'."""
    edges = np.quantile(features, [1 / 3, 2 / 3], axis=0)  # (2, 5)
    bins = (features[:, None, :] > edges[None]).sum(axis=1)  # (N, 5) in {0, 1, 2}
    words = [" ".join(LOOK_WORDS[k][b] for k, b in enumerate(row)) for row in bins]
    return [w + (" blown-out" if c > 1 / 3 else "") for w, c in zip(words, clipping)]
