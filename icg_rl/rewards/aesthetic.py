"""Aesthetic reward: the LAION aesthetic head on L2-normalised CLIP image embeddings.

Real runs: `reward.clip` = a CLIP ViT-L/14 folder, `reward.aesthetic_head` = the public
`sac+logos+ava1-l14-linearMSE.pth` (loaded with `weights_only=True`). CoverWorld ('coverworld'): the same head class
trained on the world's public ratings, on the world's tiny CLIP (`models/aesthetic/`, `models/clip/`).
"""

from __future__ import annotations

import torch

from icg_rl.models.aesthetic_head import AestheticHead
from icg_rl.models.clip_embedder import CLIPEmbedder
from icg_rl.paths import aesthetic_files
from icg_rl.rewards.base import RewardModel


class AestheticReward(RewardModel):
    name = "aesthetic"
    differentiable = True

    def __init__(self, embedder: CLIPEmbedder, head: AestheticHead):
        super().__init__()
        if head.in_dim != embedder.clip.config.projection_dim:
            raise ValueError(f"aesthetic head expects {head.in_dim}-d CLIP embeddings, but the CLIP folder projects "
                             f"to {embedder.clip.config.projection_dim} (LAION's head needs CLIP ViT-L/14: 768)")
        self.embedder, self.head = embedder, head.eval().requires_grad_(False)

    def _score(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.head(self.embedder.image_embeds(images))


def build_aesthetic(reward_cfg, world_dir) -> AestheticReward:
    head_file, clip_dir = aesthetic_files(reward_cfg, world_dir)
    if not head_file.is_file():
        raise FileNotFoundError(f"reward.aesthetic_head: {head_file} does not exist")
    return AestheticReward(CLIPEmbedder.from_pretrained(clip_dir), AestheticHead.load(head_file))
