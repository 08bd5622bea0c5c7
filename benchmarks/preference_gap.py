"""Where the preference model's AUC goes against the oracle's: a decomposition on CoverWorld variants.

Each row trains the shipped `PreferenceModel` (two towers, same loss and optimiser as `icg_rl.preference`) with a
plain torch loop on one world and one choice of inputs, and reports its test AUC beside the oracle's AUC on the same
impressions. Rows change one thing at a time:

- the world: the v2 default (users around a few shared taste personas, ~300 impressions each) or the sparse v1 world
  (`configs/worlds/sparse.yaml`: independent users, 60 impressions each);
- the user tower: the latest `data.history_len` clicked covers (128) + item bias, user ids hidden (shipped:
  amortised inference, which pools evidence across users and is what held-out users get), or ids trained beside
  the history (half the rows hide them), or the true persona (an upper bound on what any user tower can know from
  a persona);
- the image tower's input: the world CLIP's pooled embedding (shipped), or the **true** pixel features φ (+ φ² and the
  genre one-hot) that the click model uses — the upper bound of a perfect image encoder;
- a correctly specified logistic model with known personas: the statistical ceiling of the click log itself.

The true features and personas come from the world's hidden truth: this is evaluation tooling, never a model input
in the product. No Ray here (the fit is the same math; Ray Train's overhead is measured by `icg_rl.preference`).

    python benchmarks/preference_gap.py            # ~7 minutes on 2 cores (after `python -m icg_rl.world build`)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from icg_rl.config import PreferenceConfig, load_config
from icg_rl.data.history import cover_key, histories_before
from icg_rl.metrics import roc_auc
from icg_rl.models.clip_embedder import CLIPEmbedder
from icg_rl.preference.model import PreferenceModel
from icg_rl.world.features import FEATURE_NAMES
from icg_rl.world.generate import generate_world

SPARSE_WORLD = "configs/worlds/sparse.yaml"
ROWS = [  # (label, config file (None = the v2 default), user tower, image input)
    ("sparse v1 world, shipped model", SPARSE_WORLD, "shipped", "clip"),
    ("sparse v1 world, true φ image input", SPARSE_WORLD, "shipped", "phi"),
    ("v2 world, shipped model (CLIP + genre tags, standardised)", None, "shipped", "clip"),
    ("v2 world, CLIP without genre tags", None, "shipped", "clip-notags"),
    ("v2 world, raw CLIP (no tags, not standardised)", None, "shipped", "clip-raw"),
    ("v2 world, user ids beside the history", None, "ids", "clip"),
    ("v2 world, true φ image input", None, "shipped", "phi"),
    ("v2 world, true persona as user, true φ", None, "persona", "phi"),
    ("v2 world, logistic on true φ with known personas", None, "logistic", "phi"),
]


class WorldRows:
    """One generated world as training arrays: covers, impressions per split with histories, true click prob."""

    def __init__(self, overrides: list[str], clip_dir: str, history_len: int, config: str | None = None):
        cfg = load_config(config, overrides)
        world = generate_world(cfg.world, progress=False)
        self.world, self.history_len = world, history_len
        log = world.interactions.copy()
        truth = world.truth_users.set_index("user_id")
        items = world.truth_items.set_index("item_id")
        phi = world.variants.set_index(["item_id", "variant_id"]).filter(like="phi_")
        shown = phi.loc[list(zip(log["item_id"], log["variant_id"]))].to_numpy()
        genre = items.loc[log["item_id"], "genre_index"].to_numpy()
        affinity = truth.filter(like="affinity_").loc[log["user_id"]].to_numpy()[np.arange(len(log)), genre]
        ideal = truth.filter(like="ideal_").loc[log["user_id"]].to_numpy()
        log["prob"] = world.click_model.prob(affinity, shown, ideal, items.loc[log["item_id"], "bias"].to_numpy())
        log["history"] = histories_before(log, log[log["clicked"]], history_len)
        self.keys = [cover_key(i, v) for i, v in zip(world.variants["item_id"], world.variants["variant_id"])]
        self.item_ids = list(world.items["item_id"])
        is_ref = (world.variants["variant_id"] == "ref").to_numpy()
        reference = dict(zip(world.variants["item_id"].to_numpy()[is_ref], np.flatnonzero(is_ref)))
        self.item_rows = [reference[i] for i in self.item_ids]  # an item's features: its reference cover's
        self.tags = dict(zip(world.items["item_id"], (list(g) for g in world.items["genres"])))
        self.segment = truth["segment"].to_dict() if "segment" in truth else None
        self.log = log
        self.cover_genre = items.loc[world.variants["item_id"], "genre_index"].to_numpy()
        self._clip_dir = clip_dir

    def image_inputs(self, kind: str) -> torch.Tensor:
        """Cover inputs [covers, D] in `keys` order: true φ (+ φ², genre one-hot) or the CLIP embedding."""
        if kind == "phi":
            phi = self.world.variants[[f"phi_{n}" for n in FEATURE_NAMES]].to_numpy()
            phi = (phi - phi.mean(0)) / phi.std(0)
            onehot = np.eye(self.cover_genre.max() + 1)[self.cover_genre]
            return torch.tensor(np.c_[phi, phi**2, onehot], dtype=torch.float32)
        embedder = CLIPEmbedder.from_pretrained(self._clip_dir)
        pixels = np.stack([self.world.images[p] for p in self.world.variants["image_path"]])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            embeds = torch.cat([embedder.image_embeds(x[i:i + 512]) for i in range(0, len(x), 512)])
        return F.normalize(embeds, dim=-1)

    def split(self, name: str) -> pd.DataFrame:
        return self.log[self.log["split"] == name]


def fit_two_tower(rows: WorldRows, user_tower: str, image_kind: str, images: torch.Tensor, epochs: int,
                  seed: int) -> float:
    """Test AUC at the best-validation epoch of the shipped model, trained like `icg_rl.preference` (its default
    batch, peak learning rate, weight decay, cosine schedule and user-id dropout)."""
    torch.manual_seed(seed)
    shipped = PreferenceConfig()
    users = sorted(set(rows.split("train")["user_id"]))
    tags = sorted({t for g in rows.tags.values() for t in g}) if image_kind == "clip" else []  # φ rows: one-hot
    model = PreferenceModel(users, rows.item_ids + rows.keys, images.shape[1], images.shape[1], item_bias=True,
                            tag_vocab=tags, standardize=image_kind != "clip-raw")
    model.set_item_features(torch.cat([images[rows.item_rows], images]), rows.tags)
    cover_index = {k: j for j, k in enumerate(rows.keys)}
    if user_tower == "history":  # ids never seen: the user is their clicks (shared, amortised inference)
        model.user_encoder.id_embedding.weight.requires_grad_(False)
    if user_tower == "persona":
        personas = nn.Embedding(max(rows.segment.values()) + 1, model.config["user_dim"])
        model.add_module("personas", personas)
        of_index = torch.tensor([0] + [rows.segment[u] for u in users])
        model.user_vector = lambda user_index, history: personas(of_index[user_index])

    def arrays(frame):
        return (model.user_encoder.indices(list(frame["user_id"])),
                model.history_indices(list(frame["history"]), rows.history_len),
                torch.tensor([cover_index[cover_key(i, v)] for i, v in zip(frame["item_id"], frame["variant_id"])]),
                model.item_indices(list(frame["item_id"])), torch.tensor(frame["clicked"].to_numpy(np.float32)))

    data = {s: arrays(rows.split(s)) for s in ("train", "valid", "test")}

    def logits(user, history, cover, item):  # the model's forward, minus its L2 normalisation (φ rows are not unit)
        user_vec = model.user_vector(user, history)
        image = model.image_tower(model.item_side(images[cover], item))
        return ((model.user_head(user_vec) * image).sum(-1) + model.image_bias(image).squeeze(-1)
                + model.user_bias(user_vec).squeeze(-1) + model.item_bias(item).squeeze(-1))

    def auc(split):
        user, history, cover, item, label = data[split]
        with torch.no_grad():
            return roc_auc(logits(user, history, cover, item).numpy(), label.numpy() > 0.5)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=shipped.lr,
                                  weight_decay=shipped.weight_decay)
    dropout = {"shipped": shipped.user_id_dropout, "history": 1.0, "ids": 0.5, "persona": 0.0}[user_tower]
    user, history, cover, item, label = data["train"]
    batches = -(-len(label) // shipped.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * batches)
    best = (-1.0, 0.0)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(label)).split(shipped.batch_size):
            hidden = torch.rand(len(batch)) < dropout
            loss = F.binary_cross_entropy_with_logits(
                logits(user[batch].masked_fill(hidden, 0), history[batch], cover[batch], item[batch]), label[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        valid = auc("valid")
        if valid > best[0]:
            best = (valid, auc("test"))
    return best[1]


def fit_persona_logistic(rows: WorldRows, images: torch.Tensor) -> float:
    """logit = w_s·genre + a_s·φ + b_s·φ² + item bias, per persona s: the click model's own form, fit by L-BFGS."""
    phi, genre = images[:, :5], torch.tensor(rows.cover_genre)
    item_ids = sorted(set(rows.log["item_id"]))
    item_pos = {i: k for k, i in enumerate(item_ids)}
    cover_index = {k: j for j, k in enumerate(rows.keys)}
    count = max(rows.segment.values()) + 1
    w_genre, w_lin, w_sq = (nn.Parameter(torch.zeros(count, n)) for n in (int(genre.max()) + 1, 5, 5))
    bias = nn.Parameter(torch.zeros(len(item_ids)))

    def arrays(frame):
        covers = [cover_index[cover_key(i, v)] for i, v in zip(frame["item_id"], frame["variant_id"])]
        return (torch.tensor(frame["user_id"].map(rows.segment).to_numpy()), torch.tensor(covers),
                torch.tensor(frame["item_id"].map(item_pos).to_numpy()),
                torch.tensor(frame["clicked"].to_numpy(np.float32)))

    def logits(s, c, i):
        return w_genre[s, genre[c]] + (w_lin[s] * phi[c]).sum(-1) + (w_sq[s] * phi[c] ** 2).sum(-1) + bias[i]

    s, c, i, y = arrays(rows.split("train"))
    optimizer = torch.optim.LBFGS([w_genre, w_lin, w_sq, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(logits(s, c, i), y) + 1e-4 * (bias**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    s, c, i, y = arrays(rows.split("test"))
    with torch.no_grad():
        return roc_auc(logits(s, c, i).numpy(), y.numpy() > 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="artifacts/coverworld/models/clip", help="the world's CLIP folder")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("override", nargs="*", help="config overrides for every world, e.g. world.seed=1")
    args = parser.parse_args()
    torch.set_num_threads(2)
    worlds: dict[str | None, WorldRows] = {}
    print("| world and model | test AUC | oracle AUC | gap | fit s |")
    print("|---|---|---|---|---|")
    for label, config, user_tower, image_kind in ROWS:
        if config not in worlds:
            cfg = load_config(config, args.override)
            worlds[config] = WorldRows(args.override, args.clip, cfg.data.history_len, config=config)
        rows = worlds[config]
        images = rows.image_inputs("clip" if image_kind.startswith("clip") else image_kind)
        start = time.perf_counter()
        if user_tower == "logistic":
            auc = fit_persona_logistic(rows, images)
        else:
            auc = fit_two_tower(rows, user_tower, image_kind, images, args.epochs, args.seed)
        test = rows.split("test")
        oracle = roc_auc(test["prob"].to_numpy(), test["clicked"].to_numpy())
        print(f"| {label} | {auc:.3f} | {oracle:.3f} | {oracle - auc:.3f} | {time.perf_counter() - start:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
