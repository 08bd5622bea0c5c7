"""A frozen CLIP for rewards: differentiable image preprocessing + image/text embeddings from any CLIPModel folder.

CLIP's processor works on PIL images; rewards need gradients to reach the pixels, so we reproduce its resize and
normalisation in torch (square inputs: resize to the crop size, then normalise with the processor's mean/std).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPProcessor


class CLIPEmbedder(nn.Module):
    def __init__(self, clip: CLIPModel, processor: CLIPProcessor):
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.tokenizer = processor.tokenizer
        ip = processor.image_processor
        crop = getattr(ip, "crop_size", None) or {}
        self.image_size = int(crop.get("height") or ip.size.get("shortest_edge"))
        self.register_buffer("mean", torch.tensor(ip.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(ip.image_std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> CLIPEmbedder:
        return cls(CLIPModel.from_pretrained(str(path)), CLIPProcessor.from_pretrained(str(path)))

    def train(self, mode: bool = True) -> CLIPEmbedder:
        super().train(mode)
        self.clip.eval()  # frozen: never dropout
        return self

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> CLIP pixel values [B, 3, S, S] (differentiable)."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            shrinking = images.shape[-1] > self.image_size
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bicubic",
                                   align_corners=False, antialias=shrinking)
        return (images - self.mean) / self.std

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> projected image embeddings [B, D] (not normalised)."""
        out = self.clip.get_image_features(pixel_values=self.pixels(images))
        return getattr(out, "pooler_output", out)

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        out = self.clip.get_text_features(**{k: v.to(self.mean.device) for k, v in tokens.items()})
        return getattr(out, "pooler_output", out)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()
