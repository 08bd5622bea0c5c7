"""Images between their two forms: uint8 [B, H, W, 3] (what rollouts ship, files hold and Serve returns) and float
[B, 3, H, W] in [0, 1] (what the VAE decodes to and rewards score). The one place either conversion is written."""

from __future__ import annotations

import numpy as np
import torch


def to_float_images(images, name: str = "images") -> torch.Tensor:
    """uint8 numpy/tensor [B, H, W, 3] -> float32 [B, 3, H, W] in [0, 1]; float tensors [B, 3, H, W] pass as they
    are (their shape and range are the reward's to check). `name` says whose input it was in an error."""
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        return images
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        images = images.cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise TypeError(f"{name}: numpy images must be uint8 [B, H, W, 3], got {images.dtype} {images.shape}")
        # a new float array: arrays from Ray's object store are read-only, which torch.from_numpy warns about
        return torch.from_numpy(np.divide(images, 255.0, dtype=np.float32)).permute(0, 3, 1, 2)  # (B, 3, H, W)
    got = f"{type(images).__name__} {getattr(images, 'dtype', '')}".strip()
    raise TypeError(f"{name}: images must be a uint8 array [B, H, W, 3] or a float torch tensor [B, 3, H, W] in "
                    f"[0, 1], got {got}")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images [B, 3, H, W] in [0, 1] (any dtype, any device) -> uint8 [B, H, W, 3], as rollouts record them."""
    return (images.detach().permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
