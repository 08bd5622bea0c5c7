"""`python -m icg_rl.preference`: train the personalized preference model on the configured click log.

On CoverWorld it first builds the world and its base models when they are missing (as `icg_rl.train` does). Reports
in OUT/summary.json: test AUC (`auc`), AUC on held-out users known only by their history (`auc_heldout_users`), the
expected calibration error (`ece`), a popularity baseline, and on CoverWorld the oracle's AUC on the same
impressions (`oracle_auc`, `oracle_auc_heldout_users`) — the ceiling, since clicks are noisy.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from icg_rl.cli import base_parser, parse_config, report, run_main
from icg_rl.config import section_hash
from icg_rl.metrics import expected_calibration_error, roc_auc

log = logging.getLogger("icg_rl.preference")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("python -m icg_rl.preference", __doc__)
    args = parser.parse_intermixed_args(argv if argv is not None else sys.argv[1:])

    def body() -> int:
        cfg = parse_config(args)
        out = Path(args.out or Path(cfg.world.dir) / "models" / "preference")
        if cfg.data.kind == "coverworld":
            from icg_rl.world.cli import build

            log.info("CoverWorld at %s (built once per config, then reused)", cfg.world.dir)
            build(cfg, Path(cfg.world.dir), progress=True)
        report(train_and_evaluate(cfg, out), out, f"preference model at {out}")
        return 0

    return run_main(body)


def popularity_scores(train_rows, rows) -> np.ndarray:
    """Baseline: each item's click rate in the training log (global rate for unseen items)."""
    rate = train_rows.groupby("item_id")["label"].mean()
    return rows["item_id"].map(rate).fillna(float(train_rows["label"].mean())).to_numpy()


def train_and_evaluate(cfg, out: Path) -> dict:

    from icg_rl.data import load_from_config
    from icg_rl.distributed.placement import connect
    from icg_rl.models.item_features import compute_item_features
    from icg_rl.preference.data import impression_rows
    from icg_rl.preference.model import PreferenceModel
    from icg_rl.preference.train import embed_covers, fit, numeric_rows, predict, save_preference_model
    from icg_rl.rewards.aesthetic import resolve_clip
    from icg_rl.rewards.clip_embedder import CLIPEmbedder

    start = time.perf_counter()
    p, data = cfg.preference, load_from_config(cfg)
    clip_dir = resolve_clip(cfg.reward, cfg.world.dir)
    embedder = CLIPEmbedder.from_pretrained(clip_dir)
    item_ids, item_features = compute_item_features(embedder, data)
    splits = {s: impression_rows(data, s, cfg.data.history_len, p.negatives_per_positive, p.seed)
              for s in ("train", "valid", "test", "heldout")}
    covers = embed_covers(embedder, data.root, list(splits.values()))
    item_embeds = dict(zip(item_ids, item_features.numpy()))
    train_users = sorted(set(splits["train"]["user_id"]))
    model_args = dict(user_ids=train_users, item_ids=item_ids, item_dim=item_features.shape[1],
                      image_dim=item_features.shape[1], user_dim=p.user_dim, hidden_dim=p.hidden_dim,
                      item_bias=p.item_bias, standardize=p.standardize,
                      tag_vocab=sorted({t for tags in data.items["genres"] for t in tags}) if p.item_tags else [])
    item_tags = dict(zip(data.items["item_id"], (list(t) for t in data.items["genres"])))
    index = PreferenceModel(**model_args)  # only for id → index lookups while building rows
    arrays = {s: numeric_rows(rows, index, covers, item_embeds, cfg.data.history_len) for s, rows in splits.items()
              if len(rows)}
    log.info("impressions: %s", {s: len(r) for s, r in splits.items()})
    log.info("Ray: %s", connect(cfg.ray.address, cfg.ray.num_cpus))
    fit_start = time.perf_counter()
    model, history = fit(model_args, item_features, item_tags, arrays["train"], arrays["valid"], p, out / "ray_train",
                         threads=cfg.ray.threads_per_worker)
    train_seconds = time.perf_counter() - fit_start
    clip_ref = os.path.relpath(clip_dir.resolve(), (out / "model").resolve())  # the folder moves with its world
    # which click log it learned (the world's content, wherever its folder is)
    world_hash = section_hash(cfg.world.content()) if cfg.data.kind == "coverworld" else None
    save_preference_model(model, out / "model", clip_ref, cfg.data.history_len, world_hash)
    test_logits = predict(model, arrays["test"])
    summary = {"auc": roc_auc(test_logits, arrays["test"]["label"] > 0.5),
               "ece": expected_calibration_error(1.0 / (1.0 + np.exp(-test_logits)), arrays["test"]["label"]),
               "popularity_auc": roc_auc(popularity_scores(splits["train"], splits["test"]),
                                         splits["test"]["label"] > 0.5),
               "valid_auc_best": max(h["valid_auc"] for h in history), "best_epoch": int(history[0]["epoch"]),
               "epochs": p.epochs,
               "train_seconds": round(train_seconds, 1), "seconds": round(time.perf_counter() - start, 1),
               "impressions": {s: len(r) for s, r in splits.items()}}
    if "heldout" in arrays:
        summary["auc_heldout_users"] = roc_auc(predict(model, arrays["heldout"]), arrays["heldout"]["label"] > 0.5)
    if cfg.data.kind == "coverworld":  # after training: the world's truth as the reference, never as a signal
        from icg_rl.evaluation.world_reference import true_click_auc

        summary["oracle_auc"] = true_click_auc(data.root, splits["test"])
        if len(splits["heldout"]):
            summary["oracle_auc_heldout_users"] = true_click_auc(data.root, splits["heldout"])
    return summary
