"""Training the preference model with Ray Train: a TorchTrainer over Ray Data shards of the training impressions.

Driver: the catalogue's features (once, cached), the impressions as columns of codes (preference/data.py), written
to Parquet and streamed back by Ray Data; each worker builds its batches' history windows and looks covers up in
the model's own item table, so a row costs ~30 bytes on the way. Keeps the checkpoint with the best validation AUC
(the validation set is a dataset too, scored once by rank 0), saved as a plain folder (`preference.safetensors` +
`config.json` + the item features) that the preference reward loads.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icg_rl.config import section_hash
from icg_rl.data.columnar import windows_from
from icg_rl.metrics import roc_auc
from icg_rl.preference.model import CONFIG_FILE, PreferenceModel

PROGRESS_EVERY_S = 30.0  # how often rank 0 prints where the epoch is


def training_rows(imps, split: str, user_row: np.ndarray, rows: slice | np.ndarray = slice(None)) -> dict:
    """Rows of a split's impressions as the model's inputs, still columnar: user_index (row of the model's user
    table, 0 for users it does not know), cover and item (rows of its item table: cover code + 1, item code + 1),
    label, and the [start, end) slice of the click history (`windows_from` builds the [B, H] window per batch).
    Built for a chunk of rows at a time, so the full table never exists at once."""
    c = imps.splits[split]
    return {"user_index": user_row[imps.users(split, rows)], "cover": c["cover"][rows] + np.int32(1),
            "item": c["item"][rows] + np.int32(1), "label": c["label"][rows].astype(np.float32),
            "start": imps.starts(split, rows).astype(c["end"].dtype), "end": c["end"][rows]}


def model_inputs(model: PreferenceModel, batch: dict, click_cover: np.ndarray, history_len: int):
    """(user_index, history_index, image_embeds, item_index, history_of_row) of a batch of `training_rows`: each
    distinct history window of the batch is built once (rows with the same [start, end) share it: a click and its
    sampled negatives, a user's impressions between two clicks), and the cover's features come from the model's
    own item table."""
    start, end = np.asarray(batch["start"], dtype=np.int64), np.asarray(batch["end"], dtype=np.int64)
    distinct, history_of_row = np.unique(start * (int(end.max(initial=0)) + 1) + end, return_inverse=True)
    first = np.zeros(len(distinct), dtype=np.int64)
    first[history_of_row[::-1]] = np.arange(len(start))[::-1]  # a row of each distinct history
    history = torch.as_tensor(windows_from(click_cover, start[first], end[first], history_len) + 1).long()
    cover = torch.as_tensor(np.asarray(batch["cover"])).long()
    return (torch.as_tensor(np.asarray(batch["user_index"])).long(), history, model.item_features[cover],
            torch.as_tensor(np.asarray(batch["item"])).long(), torch.as_tensor(history_of_row).long())


@torch.no_grad()
def predict(model: PreferenceModel, rows: dict[str, np.ndarray], click_cover: np.ndarray, history_len: int,
            batch_size: int = 8192) -> np.ndarray:
    """Click logits of a batch of `training_rows`, in batches (the history windows exist one batch at a time)."""
    model.eval()
    out = []
    for s in range(0, len(rows["label"]), batch_size):
        batch = {k: v[s:s + batch_size] for k, v in rows.items()}
        out.append(model(*model_inputs(model, batch, click_cover, history_len)))
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def predict_split(model: PreferenceModel, imps, split: str, user_row: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Click logits of every impression of a split, a chunk of rows at a time."""
    total = imps.sizes()[split]
    return np.concatenate([predict(model, training_rows(imps, split, user_row, slice(s, s + chunk)),
                                   imps.history.cover, imps.history_len)
                           for s in range(0, total, chunk)] or [np.zeros(0, np.float32)])


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: DDP over its shard, validation AUC on rank 0, a checkpoint per epoch."""
    import ray.train
    import ray.train.torch

    torch.manual_seed(config["seed"])
    torch.set_num_threads(max(1, int(config["threads"])))
    model = PreferenceModel(**config["model_args"])
    model.set_item_features(torch.as_tensor(config["item_features"]), config["item_tags"])
    inner = model
    click_cover = ray.get(config["click_cover"]) if not isinstance(config["click_cover"], np.ndarray) \
        else config["click_cover"]
    history_len = config["history_len"]
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    # cosine decay to 0 over the run, stepped per batch: the last epochs average out SGD noise (a constant lr left
    # validation AUC swinging by ~0.01 between epochs; the cosine fit is 0.004-0.009 closer to the oracle)
    total_steps = config["epochs"] * config["steps_per_epoch"]
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
                if config["lr_schedule"] == "cosine" else None)
    shard = ray.train.get_dataset_shard("train")
    generator = torch.Generator().manual_seed(config["seed"] + ray.train.get_context().get_world_rank())
    rank = ray.train.get_context().get_world_rank()
    for epoch in range(config["epochs"]):
        model.train()
        losses, began, shown = [], time.perf_counter(), time.perf_counter()
        for batch in shard.iter_batches(batch_size=config["batch_size"], batch_format="numpy"):
            user_index, history, image, item, history_of_row = model_inputs(inner, batch, click_cover, history_len)
            hidden = torch.rand(user_index.shape, generator=generator) < config["user_id_dropout"]
            user_index = user_index.masked_fill(hidden, 0)  # as if unknown: the history must carry the user
            logits = model(user_index, history, image, item, history_of_row)
            loss = F.binary_cross_entropy_with_logits(logits, torch.as_tensor(batch["label"]).float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None and schedule.last_epoch < schedule.T_max:
                schedule.step()
            losses.append(float(loss.detach()))
            if rank == 0 and time.perf_counter() - shown > PROGRESS_EVERY_S:  # a paper-size epoch takes minutes
                shown, rate = time.perf_counter(), len(losses) * config["batch_size"] / (time.perf_counter() - began)
                print(f"preference epoch {epoch + 1}/{config['epochs']}: step {len(losses)}/"
                      f"{config['steps_per_epoch']}, loss {np.mean(losses[-50:]):.4f}, {rate:,.0f} rows/s per worker",
                      flush=True)
        metrics = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                   "valid_auc": float("nan")}
        if rank == 0:  # the whole validation set (not split across workers), scored once
            scores, labels = [], []
            for batch in ray.train.get_dataset_shard("valid").iter_batches(batch_size=8192, batch_format="numpy"):
                scores.append(predict(inner, batch, click_cover, history_len))
                labels.append(batch["label"])
            if scores:
                metrics["valid_auc"] = roc_auc(np.concatenate(scores), np.concatenate(labels) > 0.5)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                torch.save(inner.state_dict(), Path(folder) / "model.pt")
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)


# Splits up to this many rows (~24 bytes each) are read from Parquet once and kept in the object store: an epoch
# of CoverWorld's ~100K rows took ~9 s streamed (Ray Data's read tasks start again every epoch) against ~5 s in memory
MATERIALIZE_ROWS = 4_000_000


def history_grouped_order(imps, split: str, seed: int) -> np.ndarray:
    """A seeded shuffle of a split's rows in which the rows that share a history (same user, same history end: a
    click and its sampled negatives, the impressions between two clicks) stay together, in log order. It is the
    only shuffle (no local buffer scatters them again), so each batch pools a shared history once (`model_inputs`):
    ~2× fewer pooled histories on ml-latest. Same seed, same order."""
    user = imps.users(split).astype(np.int64)
    _, group = np.unique(user * (len(imps.history) + 1) + imps.splits[split]["end"], return_inverse=True)
    rank = np.random.default_rng(seed).permutation(int(group.max(initial=-1)) + 1)
    return np.argsort(rank[group], kind="stable")


def write_rows(imps, split: str, user_row: np.ndarray, order: np.ndarray | None, folder: Path,
               rows_per_file: int = 2_000_000) -> Path:
    """Write a split's `training_rows` (in `order`, or as they are) as Parquet files under `folder`, a chunk at a
    time; Ray Data streams them back. Returns the folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    total = imps.sizes()[split]
    for number, start in enumerate(range(0, max(total, 1), rows_per_file)):
        rows = order[start:start + rows_per_file] if order is not None else slice(start, start + rows_per_file)
        part = pa.table(training_rows(imps, split, user_row, rows))
        pq.write_table(part, folder / f"part-{number:05d}.parquet", row_group_size=256_000)
    return folder


def fit(model_args: dict, item_features: torch.Tensor, item_tags: dict[str, list[str]], imps, user_row: np.ndarray,
        pref_cfg, storage: Path, threads: int | None = None):
    """Run the TorchTrainer on the impressions' `training_rows`; returns the model restored from the
    best-validation checkpoint and the history. Both splits go to Parquet under `storage` and are streamed back by
    Ray Data (the driver keeps no copy in the object store); the click history's cover codes go to the object store
    once, for every worker's windows. `threads`: torch threads per worker (`ray.threads_per_worker`; None = its
    CPUs)."""
    import ray
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    shutil.rmtree(storage / "preference", ignore_errors=True)  # a new fit never resumes a stale run's checkpoints
    # the log is grouped by user: shuffle it once here (by history, see `history_grouped_order`), so that batches
    # mix users rather than walking through them one block of users at a time
    size = imps.sizes()["train"]
    order = history_grouped_order(imps, "train", pref_cfg.seed)
    train_files = write_rows(imps, "train", user_row, order, storage / "rows" / "train")
    del order
    valid_files = write_rows(imps, "valid", user_row, None, storage / "rows" / "valid")
    click_cover, history_len = imps.history.cover, imps.history_len
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # file order = the shuffle above: same seed, same model
    datasets = {"train": ray.data.read_parquet(str(train_files)), "valid": ray.data.read_parquet(str(valid_files))}
    if size + imps.sizes()["valid"] <= MATERIALIZE_ROWS:  # read once into the object store, not once per epoch
        datasets = {name: dataset.materialize() for name, dataset in datasets.items()}
    steps = -(-size // (pref_cfg.num_workers * pref_cfg.batch_size))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"model_args": model_args, "item_features": item_features.numpy(), "item_tags": item_tags,
                           "click_cover": ray.put(click_cover), "history_len": history_len,
                           "epochs": pref_cfg.epochs, "batch_size": pref_cfg.batch_size, "lr": pref_cfg.lr,
                           "weight_decay": pref_cfg.weight_decay, "seed": pref_cfg.seed,
                           "lr_schedule": pref_cfg.lr_schedule, "steps_per_epoch": steps,
                           "threads": threads or pref_cfg.cpus_per_worker, "user_id_dropout": pref_cfg.user_id_dropout},
        scaling_config=ScalingConfig(num_workers=pref_cfg.num_workers, use_gpu=False,
                                     resources_per_worker={"CPU": pref_cfg.cpus_per_worker}),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),  # every worker may read all of `valid`; rank 0 does
        run_config=RunConfig(name="preference", storage_path=str(storage.resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="valid_auc",
                                                                checkpoint_score_order="max")),
    )
    result = trainer.fit()
    best = result.get_best_checkpoint(metric="valid_auc", mode="max") or result.checkpoint
    model = PreferenceModel(**model_args)
    with best.as_directory() as folder:
        model.load_state_dict(torch.load(Path(folder) / "model.pt", weights_only=True))
    kept = [metrics for _, metrics in (result.best_checkpoints or [])]  # the best-validation epoch's metrics
    return model.eval(), kept or [result.metrics]


def preference_is_current(folder: str | Path, world_cfg) -> bool:
    """FOLDER/model exists and learned this world's click log (user-side world fields change the log but not the
    base models, so the model must be retrained when they change). A model saved without the world's hash (trained
    before it was recorded, or on another source) is kept."""
    config = Path(folder) / "model" / CONFIG_FILE
    if not config.is_file():
        return False
    return json.loads(config.read_text()).get("world_config_hash") in (None, section_hash(world_cfg.content()))
