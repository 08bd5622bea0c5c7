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

The pairs are columns (`Pairs`: user / item codes and a slice of the click history, data/columnar.py) and sit in the
object store once; an epoch ships only its order, and each Ray Data task turns its indices into rows, decodes the
reference covers and builds the history windows.
    history_len    int64 (B,)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from icg_rl.data.columnar import ClickHistory, covers_of, split_codes
from icg_rl.data.schema import RecDataset, codes, optional_str
from icg_rl.data.splits import SPLITS

BLOCK_BATCHES = 16  # batches of pair indices per Ray Data block: small tasks, loaded ahead of the rollout actors
CHUNK_BATCHES = 64  # batches per Ray Data dataset: an epoch's order is streamed a window at a time


@dataclass
class Pairs:
    """Distinct (user, item) pairs of a split as columns (user / item codes, first impression time, the [start,
    end) slice of the click history before it), with the lookup tables a batch needs to turn rows into ids, titles,
    image paths and history keys. A pair costs ~28 bytes until a batch reads it (`frame`)."""

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    start: np.ndarray
    end: np.ndarray
    user_ids: np.ndarray  # object: the users table's ids
    item_ids: np.ndarray  # object: the items table's ids
    titles: np.ndarray  # object
    image_paths: np.ndarray  # object: absolute path or None
    cover_keys: np.ndarray  # object: the cover table's keys (history entries)
    click_cover: np.ndarray  # int32: the click history's cover codes
    history_len: int

    def __len__(self) -> int:
        return len(self.user)

    def frame(self, rows: np.ndarray | slice = slice(None)) -> pd.DataFrame:
        """Rows as the readable pairs table: user_id, item_id, timestamp, history (cover keys), title, image_path."""
        from icg_rl.data.columnar import windows_from

        user, item = self.user[rows], self.item[rows]
        window = windows_from(self.click_cover, self.start[rows], self.end[rows], self.history_len)
        return pd.DataFrame({
            "user_id": self.user_ids[user], "item_id": self.item_ids[item], "timestamp": self.timestamp[rows],
            "history": pd.Series([list(self.cover_keys[w[w >= 0]]) for w in window], dtype=object),
            "title": self.titles[item], "image_path": pd.Series(self.image_paths[item], dtype=object),
        })


def build_pairs(data: RecDataset, split: str | None, history_len: int) -> Pairs:
    """Distinct (user, item) pairs of a split (all splits when None), in order of their first impression, each with
    the user's click history up to that impression — no look-ahead — and the item's title and reference image."""
    log = data.interactions
    rows = np.arange(len(log))
    if split is not None:
        if "split" not in log.columns:
            raise ValueError(f"split={split!r}: this {data.kind} dataset has no 'split' column; use split=None")
        rows = np.flatnonzero(split_codes(log) == SPLITS.index(split))
    user, item = codes(log["user_id"])[rows], codes(log["item_id"])[rows]
    timestamp = log["timestamp"].to_numpy(np.int64)[rows]
    by_time = np.argsort(timestamp, kind="stable")
    _, first = np.unique((user.astype(np.int64) * max(len(data.items), 1) + item)[by_time], return_index=True)
    keep = by_time[np.sort(first)]  # each pair's first impression, in time order
    covers = covers_of(data)
    history = ClickHistory.of(data, covers)
    end = history.ends(user[keep], timestamp[keep])
    paths = np.array([None if (p := optional_str(v)) is None else str(data.root / p)
                      for v in data.items["image_path"]], dtype=object)
    return Pairs(user[keep], item[keep], timestamp[keep], history.starts(user[keep], end, history_len), end,
                 data.users["user_id"].to_numpy().astype(str).astype(object),
                 data.items["item_id"].to_numpy().astype(str).astype(object),
                 data.items["title"].to_numpy().astype(str).astype(object), paths, covers.keys, history.cover,
                 history_len)


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


class ReadPairs:
    """Ray Data batch function: pair indices (the epoch's order) -> `LoadReferences` rows. The pairs table lives in
    the object store once; each task reads the rows it was given."""

    def __init__(self, pairs_ref, load: LoadReferences):
        self.pairs_ref, self.load = pairs_ref, load

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        import ray

        pairs = ray.get(self.pairs_ref)
        return self.load(pairs.frame(np.asarray(batch["data"])))


class PairStream:
    """Streams groups of a split through Ray Data; each epoch is a seeded shuffle of the pairs."""

    def __init__(self, data: RecDataset, split: str | None, pairs_per_batch: int, samples_per_pair: int,
                 history_len: int, reference_size: int, seed: int = 0, shuffle: bool = True):
        import ray
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
        self.pairs_ref = ray.put(self.pairs)
        self.pairs = ray.get(self.pairs_ref)  # views of the object store's copy: the driver keeps no second one

    def __len__(self) -> int:
        """Full batches per epoch."""
        return len(self.pairs) // self.P

    def iter_groups(self, epoch: int = 0, start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches of an epoch in `epoch_order` (or file order without shuffle), from batch `start_batch` on. The
        order goes to Ray Data a window of CHUNK_BATCHES batches at a time (a few blocks each): one dataset of an
        epoch's 24M pairs in blocks of 64 would be 375K blocks before the first batch."""
        import ray.data

        order = epoch_order(len(self.pairs), self.seed, epoch) if self.shuffle else np.arange(len(self.pairs))
        order = order[start_batch * self.P: len(self) * self.P]  # full batches only
        block, window = self.P * BLOCK_BATCHES, self.P * CHUNK_BATCHES
        for begin in range(0, len(order), window):
            chunk = order[begin:begin + window]
            dataset = ray.data.from_numpy([chunk[s:s + block] for s in range(0, len(chunk), block)]).map_batches(
                ReadPairs(self.pairs_ref, self.load), batch_format="numpy", batch_size=block)
            for batch in dataset.iter_batches(batch_size=self.P, batch_format="numpy", drop_last=True):
                yield expand_groups(batch, self.K)


def join_reader_threads(timeout_s: float = 10.0) -> None:
    """Waits for Ray Data's batch-reader threads to end after a stream was closed. Closing `iter_batches` only
    signals its workers ("iter_threaded" threads, ray/data/_internal/block_batching/util.py); one can still be inside a
    `ray.get` for ~0.5 s, and if `ray.shutdown()` lands meanwhile the core worker ends the whole process with exit
    code 1 ("The core worker has already been shutdown")."""
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread.name == "iter_threaded" and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


def stream_from_config(cfg, data: RecDataset, split: str | None = "train", seed: int | None = None) -> PairStream:
    d = cfg.data
    return PairStream(data, split, d.pairs_per_batch, d.samples_per_pair, d.history_len, d.reference_size,
                      seed=cfg.train.seed if seed is None else seed)
