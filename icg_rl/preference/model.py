"""PreferenceModel: P(click | user, cover image) as a two-tower model.

- item side: the cover's L2-normalised CLIP image embedding, beside the item's tags (genres: catalogue metadata, a
  multi-hot) when the source has them, each dimension standardised with the catalogue's own mean and spread;
- user tower: the ICG `UserEncoder` itself (user id and/or attention-pooled history of the clicked covers' item
  side; population embedding for cold-start users) — one definition of what a user is, shared with the generator;
- image tower: an MLP on the item side of the cover;
- logit = ⟨user_head(u), image(v)⟩ + image_bias(v) + user_bias(u) + item_bias(i).

The dot product carries the personal part (taste × look), the image bias what everybody likes (a quadratic look
penalty has a per-image part), the user bias how clicky a user is, the item bias how popular the item is whatever
its cover (a recommender's usual item bias: without it the towers must explain popularity through the image).
Why tags and standardisation (benchmarks/preference_gap.py, RESULTS): a genre that the MLP must dig out of a CLIP
embedding, whose look directions vary by ~0.1 around a large shared mean, costs ~0.01 AUC each against the oracle.
The item bias and the tags are constant per (user, item), so as a reward they shift every cover of an item alike.
Differentiable in the image embedding, so it is a reward for reward backprop too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from icg_rl.data.history import lookup_key
from icg_rl.io import atomic_write_json
from icg_rl.models.item_features import save_item_features
from icg_rl.models.user import UserEncoder
from icg_rl.paths import preference_model_folder


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class PreferenceModel(nn.Module):
    def __init__(self, user_ids: list[str], item_ids: list[str], item_dim: int, image_dim: int, user_dim: int = 64,
                 hidden_dim: int = 64, item_bias: bool = False, tag_vocab: list[str] | None = None,
                 standardize: bool = False):
        super().__init__()
        self.tag_vocab = list(tag_vocab or [])
        self.config = dict(user_ids=list(user_ids), item_ids=list(item_ids), item_dim=item_dim, image_dim=image_dim,
                           user_dim=user_dim, hidden_dim=hidden_dim, item_bias=item_bias, tag_vocab=self.tag_vocab,
                           standardize=standardize)
        self.item_index = {item: i + 1 for i, item in enumerate(item_ids)}  # 0 = padding
        rows, tags = len(item_ids) + 1, len(self.tag_vocab)
        self.register_buffer("item_features", torch.zeros(rows, item_dim))  # row 0 stays zero
        self.register_buffer("item_tags", torch.zeros(rows, tags), persistent=tags > 0)  # multi-hot per key
        self.standardize = standardize
        if standardize:  # of [features, tags]; set by `set_item_features`, saved with the weights
            self.register_buffer("side_mean", torch.zeros(item_dim + tags))
            self.register_buffer("side_std", torch.ones(item_dim + tags))
        self.user_encoder = UserEncoder(user_ids, item_dim + tags, user_dim)
        nn.init.zeros_(self.user_encoder.id_embedding.weight)  # a known user starts as their history; the id
        # learns the deviation (a random id vector would first have to be unlearned, and overfits ~150 impressions)
        self.user_head = mlp([user_dim, hidden_dim, hidden_dim])
        self.user_bias = nn.Linear(user_dim, 1)
        self.image_tower = mlp([image_dim + tags, 2 * hidden_dim, hidden_dim])
        self.image_bias = nn.Linear(hidden_dim, 1)
        if item_bias:  # one row per key of the item table (0 = unknown item: no bias)
            self.item_bias = nn.Embedding(len(item_ids) + 1, 1)
            nn.init.zeros_(self.item_bias.weight)

    @torch.no_grad()
    def set_item_features(self, features: torch.Tensor, tags: dict[str, list[str]] | None = None) -> None:
        """features [N, item_dim] (one per item key, in `item_ids` order); tags: item id -> its tags (a cover key
        takes its item's). Sets the buffers and, when standardising, the catalogue statistics of the item side."""
        self.item_features[1:] = features
        position = {tag: j for j, tag in enumerate(self.tag_vocab)}
        for key, row in self.item_index.items():
            for tag in (tags or {}).get(key.split("|", 1)[0], []):
                if tag in position:
                    self.item_tags[row, position[tag]] = 1.0
        if self.standardize:
            side = torch.cat([self.item_features[1:], self.item_tags[1:]], dim=-1)
            self.side_mean.copy_(side.mean(0))
            self.side_std.copy_(side.std(0).clamp_min(1e-3))  # a constant column (a tag nobody has) stays put

    def item_side(self, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """features [..., item_dim], index [...] rows of the item table (0: unknown, no tags) -> [..., item_dim+T]."""
        if self.tag_vocab:
            features = torch.cat([features, self.item_tags[index]], dim=-1)
        if self.standardize:
            features = (features - self.side_mean) / self.side_std
        return features

    def user_vector(self, user_index: torch.Tensor, history_index: torch.Tensor,
                    history_of_row: torch.Tensor | None = None) -> torch.Tensor:
        """user_index [B] (0 unknown), history_index [B, H] (0 padding) -> [B, user_dim]. With `history_of_row` [B],
        history_index holds each distinct history once ([U, H]) and row b uses history_of_row[b]."""
        # project the whole item table once, then pool rows of it: the same numbers as projecting each history row
        table = self.item_side(self.item_features, torch.arange(len(self.item_features), device=history_index.device))
        return self.user_encoder.pool_table(user_index, self.user_encoder.history_proj(table), history_index,
                                            history_of_row)

    def forward(self, user_index: torch.Tensor, history_index: torch.Tensor, image_embeds: torch.Tensor,
                item_index: torch.Tensor | None = None, history_of_row: torch.Tensor | None = None):
        """-> click logit [B]. image_embeds [B, image_dim] (any norm: normalised here); item_index [B] from
        `item_indices` (0 or None: no item bias); history_of_row: see `user_vector`."""
        user, image = self.towers(user_index, history_index, image_embeds, item_index, history_of_row)
        personal = (self.user_head(user) * image).sum(-1)  # sum over hidden: (B,)
        logit = personal + self.image_bias(image).squeeze(-1) + self.user_bias(user).squeeze(-1)
        if item_index is not None and hasattr(self, "item_bias"):
            logit = logit + self.item_bias(item_index).squeeze(-1)
        return logit

    def towers(self, user_index: torch.Tensor, history_index: torch.Tensor, image_embeds: torch.Tensor,
               item_index: torch.Tensor | None = None,
               history_of_row: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (user vector [B, user_dim], image tower output [B, hidden]): the two sides of the personal term."""
        user = self.user_vector(user_index, history_index, history_of_row)  # (B, user_dim)
        index = item_index if item_index is not None else torch.zeros(len(image_embeds), dtype=torch.long,
                                                                       device=image_embeds.device)
        return user, self.image_tower(self.item_side(F.normalize(image_embeds, dim=-1), index))  # (B, hidden)

    def item_indices(self, item_ids: list[str | None]) -> torch.Tensor:
        """Item ids (or cover keys: their item is used) -> [B] rows of the item bias, 0 for unknown or None."""
        return torch.tensor([self.item_index.get(str(i).split("|", 1)[0], 0) if i is not None else 0
                             for i in item_ids], dtype=torch.long)

    def history_indices(self, histories: list[list[str]], length: int) -> torch.Tensor:
        """Cover keys per row (data/history.py) -> [B, length] indices of the latest known ones, 0-padded."""
        out = torch.zeros(len(histories), length, dtype=torch.long)
        for row, items in enumerate(histories):
            found = [lookup_key(i, self.item_index) for i in items]
            known = [i for i in found if i is not None][-length:] if length else []
            out[row, : len(known)] = torch.tensor(known, dtype=torch.long)
        return out


# ------------------------------------------------------------------------------------------------- save / load
MODEL_FILE, CONFIG_FILE = "preference.safetensors", "config.json"
NOT_MODEL_ARGS = ("clip", "history_len", "world_config_hash")  # config.json keys that describe, not build


def save_preference_model(model: PreferenceModel, folder: Path, clip: str, history_len: int,
                          world_config_hash: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = folder / f".{MODEL_FILE}.tmp"
    save_file(state, str(tmp))
    tmp.replace(folder / MODEL_FILE)
    save_item_features(folder, model.config["item_ids"], model.item_features[1:])
    extra = {"clip": clip, "history_len": history_len, "world_config_hash": world_config_hash}
    atomic_write_json(folder / CONFIG_FILE, model.config | extra)


def load_preference_model(folder: str | Path) -> tuple[PreferenceModel, dict]:
    """A saved model and its config.json, from its folder or from the `--out` folder of `python -m
    icg_rl.preference` (holding model/); the error says what the folder holds and what to pass."""
    folder = preference_model_folder(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    # a model saved before the item bias existed has no such weights (and no key): it loads without one
    model = PreferenceModel(**{k: v for k, v in config.items() if k not in NOT_MODEL_ARGS})
    model.load_state_dict(load_file(str(folder / MODEL_FILE)))
    return model.eval(), config
