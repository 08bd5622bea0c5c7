"""Relevance rewards: CLIP-T (image vs the item's title), CLIP-I (image vs the item's reference image), and a
PickScore-style score (logit scale × cosine, on a PickScore CLIPModel + processor folder).

CLIP-I on an item without a reference image falls back to CLIP-T for that row, so a text-only item still gets a
comparable relevance score instead of a hole in the batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icg_rl.models.clip_embedder import CLIPEmbedder
from icg_rl.models.images import to_float_images
from icg_rl.paths import clip_folder
from icg_rl.rewards.base import RewardModel


def batch_titles(batch: dict, size: int) -> list[str]:
    titles = batch.get("title")
    if titles is None or len(titles) != size:
        raise KeyError(f"relevance rewards need batch['title'] with one title per image ({size}); got "
                       f"{None if titles is None else len(titles)}")
    return [str(t) for t in titles]


class ClipTextReward(RewardModel):
    name = "clip_t"
    differentiable = True

    def __init__(self, embedder: CLIPEmbedder, scale_by_logit: bool = False):
        super().__init__()
        self.embedder, self.scale_by_logit = embedder, scale_by_logit

    def _score(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        text = self.embedder.text_embeds(batch_titles(batch, len(images)))
        cosine = F.cosine_similarity(self.embedder.image_embeds(images), text, dim=-1)
        return cosine * self.embedder.logit_scale if self.scale_by_logit else cosine


class ClipImageReward(RewardModel):
    name = "clip_i"
    differentiable = True

    def __init__(self, embedder: CLIPEmbedder):
        super().__init__()
        self.embedder = embedder

    def _score(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        generated = self.embedder.image_embeds(images)
        has = torch.as_tensor(np.asarray(batch.get("has_reference", np.zeros(len(images), bool)), dtype=bool))
        scores = F.cosine_similarity(generated, self.embedder.text_embeds(batch_titles(batch, len(images))), dim=-1)
        if has.any():
            with torch.no_grad():
                references = np.asarray(batch["reference_image"])[has.numpy()]
                refs = to_float_images(references, "clip_i reference images").to(images.device)
                ref_embeds = self.embedder.image_embeds(refs)
            by_image = F.cosine_similarity(generated[has], ref_embeds, dim=-1)
            scores = scores.masked_scatter(has.to(scores.device), by_image)
        return scores


def build_clip_t(reward_cfg, world_dir) -> ClipTextReward:
    return ClipTextReward(CLIPEmbedder.from_pretrained(clip_folder(reward_cfg, world_dir)))


def build_clip_i(reward_cfg, world_dir) -> ClipImageReward:
    return ClipImageReward(CLIPEmbedder.from_pretrained(clip_folder(reward_cfg, world_dir)))


def build_pickscore(reward_cfg, world_dir) -> ClipTextReward:
    if not reward_cfg.pickscore:
        raise ValueError("reward.pickscore: no folder configured; set reward.pickscore=/path/to/PickScore "
                         "(a CLIPModel + processor folder) to use the 'pickscore' reward")
    reward = ClipTextReward(CLIPEmbedder.from_pretrained(Path(reward_cfg.pickscore)), scale_by_logit=True)
    reward.name = "pickscore"
    return reward
