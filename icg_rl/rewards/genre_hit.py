"""Genre hit: 1 when CoverWorld's genre judge reads a cover as one of its item's genres, else 0.

A reward of the kind a platform often has — a rule or a classifier's decision behind a service — with no useful
gradient: the score is an argmax, so it declares `differentiable = False`. Reward backprop refuses it (naming it);
the rollout-based algorithms (ddpo, grpo, nft) train on it from the reward pools' scores alone.

The judge is the world's own instrument (`models/judge/`: a small CNN trained on the world's real covers, its genre
names in `config.json`); the item's genres come from the world's public item table (`items.parquet`), never from the
oracle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from icg_rl.paths import world_models
from icg_rl.rewards.base import RewardModel
from icg_rl.world.judge import GenreJudge


class GenreHitReward(RewardModel):
    name = "genre_hit"
    differentiable = False

    def __init__(self, judge: GenreJudge, genre_names: list[str], item_genres: dict[str, list[str]]):
        super().__init__()
        self.judge = judge.eval().requires_grad_(False)
        index = {name: i for i, name in enumerate(genre_names)}
        # (items, G) 0/1: which genres each item has; unknown genres (not in the judge's list) never hit
        self.item_row = {item: row for row, item in enumerate(item_genres)}
        hits = np.zeros((len(item_genres), len(genre_names)), dtype=np.float32)
        for row, genres in enumerate(item_genres.values()):
            hits[row, [index[g] for g in genres if g in index]] = 1.0
        self.register_buffer("item_hits", torch.from_numpy(hits), persistent=False)

    def _score(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        items = [str(i) for i in batch.get("item_id", [])]
        if len(items) != len(images):
            raise KeyError(f"reward 'genre_hit': batch['item_id'] needs one row per image ({len(images)}), got "
                           f"{len(items)}")
        unknown = sorted({i for i in items if i not in self.item_row})
        if unknown:
            raise KeyError(f"reward 'genre_hit': item_id {unknown[:5]} not in the world's items.parquet")
        rows = torch.as_tensor([self.item_row[i] for i in items], device=images.device)
        judged = self.judge(images).argmax(-1)  # (B,)
        return self.item_hits.to(images.device)[rows, judged]  # (B,) 0/1


def build_genre_hit(reward_cfg, world_dir) -> GenreHitReward:
    folder, items_file = world_models(world_dir) / "judge", Path(world_dir) / "items.parquet"
    for path in (folder / "judge.safetensors", folder / "config.json", items_file):
        if not path.is_file():
            raise FileNotFoundError(f"reward 'genre_hit' reads CoverWorld's genre judge and item table; {path} does "
                                    f"not exist (world.dir={world_dir}: build the world with `python -m icg_rl.world "
                                    f"build`)")
    genre_names = json.loads((folder / "config.json").read_text())["genres"]
    judge = GenreJudge(len(genre_names))
    judge.load_state_dict(load_file(str(folder / "judge.safetensors")))
    items = pd.read_parquet(items_file, columns=["item_id", "genres"])
    return GenreHitReward(judge, genre_names, {str(i): [str(g) for g in genres]
                                               for i, genres in zip(items["item_id"], items["genres"])})
