"""φ(x): the fixed, documented pixel features that CoverWorld users have a taste over.

For an RGB image x in [0, 1] with luminance L = 0.299 R + 0.587 G + 0.114 B:

| k | name        | definition                                                        | typical range |
|---|-------------|-------------------------------------------------------------------|---------------|
| 0 | brightness  | mean(L)                                                           | 0 .. 1        |
| 1 | warmth      | mean(R − B)                                                       | −1 .. 1       |
| 2 | saturation  | mean(max(R,G,B) − min(R,G,B))                                     | 0 .. 1        |
| 3 | contrast    | std(L)                                                            | 0 .. 0.5      |
| 4 | composition | horizontal centroid of saliency ‖x − median colour(x)‖, image units | −1 .. 1       |

Composition measures where the motif sits: saliency is each pixel's colour distance to the image's per-channel
median colour, which is the background's as long as the background covers most of the cover (it does in
CoverWorld). v1 used |L − mean(L)|, whose centroid shrinks towards 0 and flips sign once the motif covers more than
half the luminance mass, so 'left' in a caption did not mean a motif on the left (world v2 changed it).

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
    flat = x.reshape(n, -1, 3)
    median = np.partition(flat, (flat.shape[1] - 1) // 2, axis=1)[:, (flat.shape[1] - 1) // 2]  # (N, 3): lower
    # median per channel (as torch.median takes it), the background colour
    saliency = np.linalg.norm(x - median[:, None, None, :], axis=-1) + 1e-6  # (N, H, W)
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
    median = images.flatten(2).median(dim=2).values  # (B, 3): the background colour
    saliency = (images - median[:, :, None, None]).pow(2).sum(dim=1).add(1e-12).sqrt() + 1e-6  # (B, H, W)
    w = images.shape[-1]
    column = (torch.arange(w, dtype=images.dtype, device=images.device) + 0.5) / w * 2.0 - 1.0
    composition = (saliency * column).sum(dim=(1, 2)) / saliency.sum(dim=(1, 2))
    return torch.stack([brightness, warmth, saturation, contrast, composition], dim=1)


LOOK_WORDS = (  # one hyphenated word per decile, so word k of a look string always names feature k
    ("pitch-dark", "very-dark", "dark", "dim", "mid-dark", "mid-bright", "light", "bright", "very-bright", "glaring"),
    ("frozen", "icy", "cold", "cool", "cool-neutral", "warm-neutral", "mild", "warm", "hot", "fiery"),
    ("grey", "greyish", "washed", "muted", "soft", "tinted", "rich", "vivid", "intense", "neon"),
    ("flat", "very-soft", "soft-contrast", "gentle", "even", "balanced", "firm", "crisp", "punchy", "harsh"),
    ("far-left", "left", "left-ish", "off-left", "centre-left", "centre-right", "off-right", "right-ish", "right",
     "far-right"),
)


def describe_looks(features: np.ndarray, clipping: np.ndarray) -> list[str]:
    """Alt-text style words for each image (what a real CLIP learns colour and layout from): each feature's decile
    over the given images names it, plus 'blown-out' when over a third of the pixels clip. Deciles, not quintiles or
    terciles: a CLIP trained on the words cannot place an image finer than its word, and quintiles capped the
    held-out linear probe near 0.96 (brightness sat at that bound); with deciles every φ dimension probes 0.02-0.07
    higher and the preference model comes 0.003 closer to the oracle (benchmarks/RESULTS.md).
    features (N, 5), clipping (N,) -> N strings like 'dark warm vivid punchy far-left'."""
    levels = len(LOOK_WORDS[0])
    edges = np.quantile(features, np.arange(1, levels) / levels, axis=0)  # (levels - 1, 5)
    bins = (features[:, None, :] > edges[None]).sum(axis=1)  # (N, 5) in {0, .., levels - 1}
    words = [" ".join(LOOK_WORDS[k][b] for k, b in enumerate(row)) for row in bins]
    return [w + (" blown-out" if c > 1 / 3 else "") for w, c in zip(words, clipping)]
