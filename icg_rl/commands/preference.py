"""`python -m icg_rl.preference`: train the personalized preference model on the configured click log.

On CoverWorld it first builds the world and its base models when they are missing (as `icg_rl.train` does). Reports
in OUT/summary.json, on the held-out time split (each user's latest interactions, data/splits.py): test AUC (`auc`)
and NDCG@10 per user (`ndcg_at_10`) beside a popularity baseline's (`popularity_auc`, `popularity_ndcg_at_10`) and
whether the model beats it on both (`beats_popularity`; a warning says what to try when it does not), AUC on
held-out users known only by their history (`auc_heldout_users`), the expected calibration error (`ece`), and on
CoverWorld the oracle's AUC on the same impressions (`oracle_auc`, `oracle_auc_heldout_users`) — the ceiling, since
clicks are noisy.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from icg_rl.commands.common import base_parser, parse_config, report, run_main
from icg_rl.config import section_hash
from icg_rl.metrics import expected_calibration_error, roc_auc, timed

log = logging.getLogger("icg_rl.preference")
NDCG_CHUNK_USERS = 256


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("python -m icg_rl.preference", __doc__)
    args = parser.parse_intermixed_args(argv if argv is not None else sys.argv[1:])

    def body() -> int:
        cfg = parse_config(args)
        from icg_rl.paths import default_preference_dir, resolve_output, uses_coverworld_models

        out = default_preference_dir(cfg)
        if args.out:  # inside a Ray job a relative --out would land in Ray's temporary working directory
            resolved, warning = resolve_output(args.out, "--out")
            out = Path(resolved)
            if warning:
                log.warning(warning)
        if uses_coverworld_models(cfg):  # its click log, or its tiny CLIP for a MovieLens / PixelRec run
            from icg_rl.commands.world import build

            log.info("CoverWorld at %s (built once per config, then reused)", cfg.world.dir)
            build(cfg, Path(cfg.world.dir), progress=True)
        report(train_and_evaluate(cfg, out), out, f"preference model at {out}")
        return 0

    return run_main(body)


def popularity_scores(train_items: np.ndarray, train_labels: np.ndarray, items: np.ndarray, num_items: int,
                      counts: bool = False) -> np.ndarray:
    """Baseline: each item's click rate in the training impressions (global rate for unseen items); with `counts`,
    its number of training clicks (MostPop, the baseline of click-only logs: there a click rate would only measure
    how often the negative sampler drew the item). Items are codes (rows of the items table)."""
    clicks = np.bincount(train_items, weights=train_labels, minlength=num_items)
    if counts:
        return clicks[items]
    shown = np.bincount(train_items, minlength=num_items)
    overall = float(train_labels.mean()) if len(train_labels) else 0.0
    rate = np.divide(clicks, shown, out=np.full(num_items, overall), where=shown > 0)
    return rate[items]


def ndcg_per_user(scores: np.ndarray, labels: np.ndarray, users, k: int = 10, seed: int = 0) -> float:
    """`ndcg_at_k` over users (the mean over users with a click), on a seeded shuffle of the rows and in chunks of
    users. The shuffle breaks ties at random: a log's clicks precede their sampled negatives, and a stable sort would
    rank a tied click first (popularity counts tie often). The chunks keep it linear: `ndcg_at_k` masks every row
    once per user, minutes on a MovieLens-1M test split."""
    from icg_rl.evaluation.scores import ndcg_at_k

    codes, _ = pd.factorize(pd.Series(np.asarray(users)))
    if not len(codes):
        return float("nan")
    shuffle = np.random.default_rng(seed).permutation(len(codes))
    by_chunk = np.argsort(codes[shuffle] // NDCG_CHUNK_USERS, kind="stable")
    order = shuffle[by_chunk]
    bounds = np.searchsorted(codes[order] // NDCG_CHUNK_USERS, np.arange(codes.max() // NDCG_CHUNK_USERS + 2))
    total, weight = 0.0, 0
    for start, stop in zip(bounds[:-1], bounds[1:]):
        rows = order[start:stop]
        clicked = int(len(np.unique(codes[rows][labels[rows] > 0.5])))  # users that count in this chunk's mean
        if clicked:
            total += ndcg_at_k(scores[rows], labels[rows], codes[rows], k) * clicked
            weight += clicked
    return total / weight if weight else float("nan")


def versus_popularity(labels: np.ndarray, users: np.ndarray, logits: np.ndarray, popularity: np.ndarray,
                      seed: int = 0) -> dict:
    """AUC and NDCG@10 of the model and of popularity on the held-out time split, and `beats_popularity`: True when
    the model is better on both, False (with a warning saying what to try) when not, None when undefined (a split
    with one class only). A personalized model that popularity beats adds nothing a recommender lacks."""
    labels = np.asarray(labels) > 0.5
    out = {"auc": roc_auc(logits, labels), "popularity_auc": roc_auc(popularity, labels),
           "ndcg_at_10": ndcg_per_user(logits, labels, users, 10, seed),
           "popularity_ndcg_at_10": ndcg_per_user(popularity, labels, users, 10, seed)}
    if any(np.isnan(v) for v in out.values()):
        out["beats_popularity"] = None
        return out
    out["beats_popularity"] = bool(out["auc"] > out["popularity_auc"] and
                                   out["ndcg_at_10"] > out["popularity_ndcg_at_10"])
    if not out["beats_popularity"]:
        log.warning("popularity beats the preference model on the test split (AUC %.3f vs popularity %.3f, NDCG@10 "
                    "%.3f vs %.3f): try preference.item_bias=true (it learns popularity), preference.item_tags=true, "
                    "more preference.epochs or a lower preference.lr, a longer data.history_len; a catalogue without "
                    "images leaves the towers only titles", out["auc"], out["popularity_auc"], out["ndcg_at_10"],
                    out["popularity_ndcg_at_10"])
    return out


def train_and_evaluate(cfg, out: Path) -> dict:
    import torch

    from icg_rl.data import load_from_config
    from icg_rl.distributed.placement import connect
    from icg_rl.models.item_features import catalogue_features
    from icg_rl.preference.data import impressions, is_click_only
    from icg_rl.preference.model import save_preference_model
    from icg_rl.preference.train import fit, predict_split

    start = time.perf_counter()
    p, data = cfg.preference, timed(log, "load", lambda: load_from_config(cfg))
    features = timed(log, "catalogue features", lambda: catalogue_features(cfg, data))
    imps = timed(log, "impressions", lambda: impressions(data, cfg.data.history_len, p.negatives_per_positive, p.seed))
    if list(features.keys) != list(imps.covers.keys):
        raise RuntimeError("catalogue features and the cover table disagree on the order of covers")
    train_codes = np.unique(imps.users("train"))
    train_ids = data.users["user_id"].to_numpy().astype(str)[train_codes]
    by_id = np.argsort(train_ids, kind="stable")  # the model's user table is sorted by id
    user_row = np.zeros(len(data.users), dtype=np.int32)
    if p.user_id_dropout >= 1.0:  # every id is hidden in training: users are their history, no id table is kept
        by_id = by_id[:0]  # (its rows would stay zero yet cost an optimizer update each step: 21M at ml-latest)
    user_row[train_codes[by_id]] = np.arange(1, len(by_id) + 1, dtype=np.int32)
    dim = features.matrix.shape[1]
    model_args = dict(user_ids=train_ids[by_id].tolist(), item_ids=list(features.keys), item_dim=dim,
                      image_dim=dim, user_dim=p.user_dim, hidden_dim=p.hidden_dim, item_bias=p.item_bias,
                      standardize=p.standardize,
                      tag_vocab=sorted({t for tags in data.items["genres"] for t in tags}) if p.item_tags else [])
    item_tags = dict(zip(data.items["item_id"], (list(t) for t in data.items["genres"])))
    log.info("impressions: %s", imps.sizes())
    log.info("Ray: %s", connect(cfg.ray.address, cfg.ray.num_cpus))
    fit_start = time.perf_counter()
    model, history = fit(model_args, torch.as_tensor(features.matrix), item_tags, imps, user_row, p,
                         out / "ray_train", threads=cfg.ray.threads_per_worker)
    train_seconds = time.perf_counter() - fit_start
    clip_ref = os.path.relpath(features.clip_dir.resolve(), (out / "model").resolve())  # moves with its world
    # which click log it learned (the world's content, wherever its folder is)
    world_hash = section_hash(cfg.world.content()) if cfg.data.kind == "coverworld" else None
    save_preference_model(model, out / "model", clip_ref, cfg.data.history_len, world_hash)

    def scores(split: str) -> np.ndarray:
        return predict_split(model, imps, split, user_row)

    test, train = imps.splits["test"], imps.splits["train"]
    test_logits = timed(log, "score test", lambda: scores("test"))
    popularity = popularity_scores(train["item"], train["label"], test["item"], len(data.items),
                                   counts=is_click_only(data))
    summary = {**versus_popularity(test["label"], imps.users("test"), test_logits, popularity, p.seed),
               "ece": expected_calibration_error(1.0 / (1.0 + np.exp(-test_logits)), test["label"]),
               "valid_auc_best": max(h["valid_auc"] for h in history), "best_epoch": int(history[0]["epoch"]),
               "epochs": p.epochs,
               "train_seconds": round(train_seconds, 1), "seconds": round(time.perf_counter() - start, 1),
               "impressions": imps.sizes()}
    if imps.sizes()["heldout"]:
        summary["auc_heldout_users"] = roc_auc(scores("heldout"), imps.splits["heldout"]["label"] > 0.5)
    if cfg.data.kind == "coverworld":  # after training: the world's truth as the reference, never as a signal
        from icg_rl.evaluation.world_reference import true_click_auc

        summary["oracle_auc"] = true_click_auc(data.root, imps.frame("test"))
        if len(imps.splits["heldout"]["label"]):
            summary["oracle_auc_heldout_users"] = true_click_auc(data.root, imps.frame("heldout"))
    return summary

