"""The (user, item) pair stream: Ray Data reads the pairs, loads reference covers, and hands out groups.

Batch contract (what rollout actors consume), a dict of numpy arrays with B = P·K rows, K consecutive rows per
group (one (user, item) pair repeated K times — one advantage group):

    user_id        str  (B,)
    item_id        str  (B,)
    group_key      str  (B,)        "user_id|item_id"
    title          str  (B,)
    reference_image uint8 (B, S, S, 3)  zeros when the item has none
    has_reference  bool (B,)
    history        str  (B, H)      the user's latest clicked cover keys before this pair (data/history.py),
                                    oldest first, "" padded
    history_len    int64 (B,)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from PIL import Image

from icg_rl.data.history import histories_before
from icg_rl.data.schema import RecDataset, optional_str


def build_pairs(data: RecDataset, split: str | None, history_len: int) -> pd.DataFrame:
    """Distinct (user, item) pairs of a split (all splits when None), each with the user's click history up to
    the pair's first impression — no look-ahead — plus the item's title and reference image path."""
    frame = data.interactions
    if split is not None:
        if "split" not in frame.columns:
            raise ValueError(f"split={split!r}: this {data.kind} dataset has no 'split' column; use split=None")
        frame = frame[frame["split"] == split]
    pairs = (frame.sort_values("timestamp", kind="stable")
             .drop_duplicates(["user_id", "item_id"])[["user_id", "item_id", "timestamp"]])
    clicks = data.interactions[data.interactions["clicked"]]
    pairs = pairs.assign(history=histories_before(pairs, clicks, history_len))
    items = data.items[["item_id", "title", "image_path"]]
    pairs = pairs.merge(items, on="item_id", how="left").reset_index(drop=True)
    pairs["image_path"] = pairs["image_path"].map(lambda p: None if optional_str(p) is None else str(data.root / p))
    return pairs


class LoadReferences:
    """Ray Data batch function: reference covers as uint8 (S, S, 3), fixed histories as (H,) arrays."""

    def __init__(self, size: int, history_len: int):
        self.size, self.history_len = size, history_len

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        images, has = [], []
        for path in batch["image_path"]:
            if optional_str(path) is None:  # None, NaN, pd.NA or "": a text-only item
                images.append(np.zeros((self.size, self.size, 3), np.uint8))
                has.append(False)
                continue
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (self.size, self.size):
                    img = img.resize((self.size, self.size), Image.BICUBIC)
                images.append(np.asarray(img))
            has.append(True)
        histories = [list(h) + [""] * (self.history_len - len(h)) for h in batch["history"]]
        return pd.DataFrame({
            "user_id": batch["user_id"].astype(str), "item_id": batch["item_id"].astype(str),
            "title": batch["title"].astype(str),
            "reference_image": images, "has_reference": has,
            "history": [np.asarray(h, dtype=object) for h in histories],
            "history_len": [len(h) for h in batch["history"]],
        })


def epoch_order(num_pairs: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded shuffle of an epoch: the in-process trainer and the Ray stream visit pairs in this order."""
    return np.random.default_rng([seed, epoch]).permutation(num_pairs)


def frame_to_batch(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A `LoadReferences` frame as the numpy batch dict (images and histories stacked into 2-D+ arrays)."""
    return {c: np.stack(list(frame[c])) if c in ("reference_image", "history") else frame[c].to_numpy()
            for c in frame.columns}


def expand_groups(batch: dict[str, np.ndarray], samples_per_pair: int) -> dict[str, np.ndarray]:
    """Repeat each of the P pairs K times (consecutive rows) and add `group_key`."""
    out = {k: np.repeat(np.stack(list(v)) if v.dtype == object and k in ("history", "reference_image")
                        else v, samples_per_pair, axis=0) for k, v in batch.items()}
    out["group_key"] = np.char.add(np.char.add(out["user_id"].astype(str), "|"), out["item_id"].astype(str))
    return out


class PairStream:
    """Streams groups of a split through Ray Data; each epoch is a seeded shuffle of the pairs."""

    def __init__(self, data: RecDataset, split: str | None, pairs_per_batch: int, samples_per_pair: int,
                 history_len: int, reference_size: int, seed: int = 0, shuffle: bool = True):
        import ray.data

        self.pairs = build_pairs(data, split, history_len)
        if len(self.pairs) < pairs_per_batch:
            raise ValueError(f"data.pairs_per_batch: got {pairs_per_batch}, but split {split!r} has only "
                             f"{len(self.pairs)} (user, item) pairs")
        self.P, self.K, self.seed, self.shuffle = pairs_per_batch, samples_per_pair, seed, shuffle
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # same seed, same order: runs are reproducible
        context.enable_progress_bars = False  # one small dataset per epoch: the trainer's own bar says enough
        self.load = LoadReferences(reference_size, history_len)

    def __len__(self) -> int:
        """Full batches per epoch."""
        return len(self.pairs) // self.P

    def iter_groups(self, epoch: int = 0, start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches of an epoch in `epoch_order` (or file order without shuffle), from batch `start_batch` on."""
        import ray.data

        order = epoch_order(len(self.pairs), self.seed, epoch) if self.shuffle else np.arange(len(self.pairs))
        order = order[start_batch * self.P: len(self) * self.P]  # full batches only
        dataset = ray.data.from_pandas(self.pairs.iloc[order].reset_index(drop=True)).map_batches(
            self.load, batch_format="pandas")
        for batch in dataset.iter_batches(batch_size=self.P, batch_format="numpy", drop_last=True):
            yield expand_groups(batch, self.K)


def stream_from_config(cfg, data: RecDataset, split: str | None = "train", seed: int | None = None) -> PairStream:
    d = cfg.data
    return PairStream(data, split, d.pairs_per_batch, d.samples_per_pair, d.history_len, d.reference_size,
                      seed=cfg.train.seed if seed is None else seed)
