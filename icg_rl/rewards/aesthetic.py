"""Aesthetic reward: the LAION aesthetic head on L2-normalised CLIP image embeddings.

Real runs: `reward.clip` = a CLIP ViT-L/14 folder, `reward.aesthetic_head` = the public
`sac+logos+ava1-l14-linearMSE.pth` (loaded with `weights_only=True`). CoverWorld ('coverworld'): the same head class
trained on the world's public ratings, on the world's tiny CLIP (`models/aesthetic/`, `models/clip/`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from icg_rl.rewards.aesthetic_head import AestheticHead
from icg_rl.rewards.base import RewardModel, register_reward
from icg_rl.rewards.clip_embedder import CLIPEmbedder


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


def resolve_clip(reward_cfg, world_dir) -> Path:
    return Path(world_dir) / "models" / "clip" if reward_cfg.clip == "coverworld" else Path(reward_cfg.clip)


@register_reward("aesthetic")
def build_aesthetic(reward_cfg, world_dir) -> AestheticReward:
    if reward_cfg.aesthetic_head == "coverworld":
        folder = Path(world_dir) / "models" / "aesthetic"
        head_file = folder / "head.pth"
        clip_dir = (folder / json.loads((folder / "config.json").read_text())["clip"]).resolve()
    else:
        head_file, clip_dir = Path(reward_cfg.aesthetic_head), resolve_clip(reward_cfg, world_dir)
    if not head_file.is_file():
        raise FileNotFoundError(f"reward.aesthetic_head: {head_file} does not exist")
    return AestheticReward(CLIPEmbedder.from_pretrained(clip_dir), AestheticHead.load(head_file))
