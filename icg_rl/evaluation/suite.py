"""The evaluation suite's steps, one function per metric family, each returning {arm: value} (or "unavailable:
<reason>" strings). `icg_rl/commands/evaluate.py` calls them in order; they share the arms' images and the pairs'
batch."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd

from icg_rl.data.schema import optional_str
from icg_rl.data.stream import build_pairs
from icg_rl.evaluation.arms import ARMS, GENERATED, generate
from icg_rl.evaluation.heldout import pairs_to_batch
from icg_rl.evaluation.scores import diversity, mean_ci, personal_win_rate, reward_scores, simulated_ab_test
from icg_rl.models.images import to_float_images

log = logging.getLogger("icg_rl.evaluate")


class Steps:
    """Logs each step as it starts and keeps its wall time (the report shows where the time went)."""

    def __init__(self, progress: bool = True):
        self.progress, self.seconds = progress, {}

    @contextmanager
    def __call__(self, name: str):
        if self.progress:
            log.info("evaluate: %s ...", name)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 1)
        if self.progress:
            log.info("%s: %.1f s", name, self.seconds[name])


def unavailable(reason: str, arms=ARMS) -> dict[str, str]:
    return {arm: f"unavailable: {reason}" for arm in arms}


# ------------------------------------------------------------------------------------------------------ the pairs
def build_rewards(cfg) -> dict:
    from icg_rl.rewards.registry import build_reward

    names = list(cfg.reward.weights)
    return {name: build_reward(name, cfg.reward, cfg.world.dir) for name in names}


def mean_ci_of(reward, images: np.ndarray, batch: dict) -> dict:
    return mean_ci(reward_scores(reward, images, batch))


def clip_embedder(cfg, rewards: dict):
    """The relevance rewards' CLIP when one is configured, else the configured CLIP folder."""
    for reward in rewards.values():
        if hasattr(reward, "embedder"):
            return reward.embedder
    from icg_rl.models.clip_embedder import CLIPEmbedder
    from icg_rl.paths import clip_folder

    return CLIPEmbedder.from_pretrained(clip_folder(cfg.reward, cfg.world.dir))


# ---------------------------------------------------------------------------------------------------- the metrics
def diversity_by_arm(cfg, data, pipe, rewards: dict, sampling: dict) -> dict:
    """`diversity_items` items × `diversity_users` users, every user of an item on the same noise."""
    e = cfg.evaluation
    pairs = build_pairs(data, e.split, cfg.data.history_len)
    item_rows = np.sort(np.unique(pairs.item, return_index=True)[1])  # each item's first pair, in pair order
    user_rows = np.sort(np.unique(pairs.user, return_index=True)[1])
    if len(user_rows) < 2:
        return unavailable(f"split {e.split!r} has fewer than 2 users")
    rng = np.random.default_rng(cfg.train.seed)
    items = pairs.frame(item_rows[rng.permutation(len(item_rows))[: e.diversity_items]])
    users = pairs.frame(user_rows[rng.permutation(len(user_rows))[: e.diversity_users]])
    grid = items[["item_id", "title", "image_path"]].merge(users[["user_id", "history"]], how="cross")
    batch = pairs_to_batch(cfg, grid)  # rows: item-major, users within
    noise_rows = np.repeat(np.arange(len(items)), len(users))
    embedder, per_user = clip_embedder(cfg, rewards), len(users)
    out = {"reference": diversity(embedder, np.split(np.stack(list(batch["reference_image"])), len(items)))}
    for arm in GENERATED:
        images = generate(pipe, batch, arm, noise_rows=noise_rows, **sampling)
        out[arm] = diversity(embedder, np.split(images, len(images) // per_user))
    return out


def win_rate_by_arm(rewards: dict, arms: dict, batch: dict) -> dict:
    if "preference" not in rewards:
        return unavailable("no preference reward configured (reward.weights has no 'preference')")
    return {arm: personal_win_rate(rewards["preference"], images, batch) for arm, images in arms.items()}


def lpips_by_arm(lpips_cfg, arms: dict) -> dict:
    from icg_rl.evaluation.lpips import LPIPS, lpips_available

    ok, reason = lpips_available(lpips_cfg.backbone_weights, lpips_cfg.linear_weights)
    if not ok:
        return unavailable(reason)
    import torch

    metric = LPIPS.from_files(lpips_cfg.backbone_weights, lpips_cfg.linear_weights, backbone=lpips_cfg.backbone)
    reference = to_float_images(arms["reference"])
    out = {}
    with torch.no_grad():
        for arm, images in arms.items():
            generated = to_float_images(images)
            ref = reference if reference.shape[-2:] == generated.shape[-2:] else torch.nn.functional.interpolate(
                reference, size=generated.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
            out[arm] = float(metric(generated, ref).mean())
    return out


def judge_by_arm(cfg, arms: dict, batch: dict) -> tuple[dict, dict]:
    from icg_rl.paths import judge_folder

    j, folder = cfg.evaluation.judge, judge_folder(cfg)
    if folder is None:
        return unavailable("no judge model configured (evaluation.judge.model)"), {}
    if not folder.exists():
        return unavailable(f"judge model folder {folder} does not exist"), {}
    from icg_rl.evaluation.judge import DEFAULT_JUDGE_PROMPT, MLLMJudge

    judge = MLLMJudge.from_pretrained(folder, prompt=j.prompt or DEFAULT_JUDGE_PROMPT,
                                      max_new_tokens=j.max_new_tokens)
    titles = [str(t) for t in batch["title"]]
    scores, meta = {}, {"model": str(folder), "prompt": j.prompt or DEFAULT_JUDGE_PROMPT}
    for arm, images in arms.items():
        result = judge.score(images, titles)
        scores[arm] = (float(result.mean) if result.unparseable < len(titles)
                       else f"unavailable: all {len(titles)} judge answers were unparseable")
        meta[arm] = {"unparseable": int(result.unparseable), "answered": len(titles),
                     "example_answers": result.answers[:3]}
    return scores, meta


def is_coverworld(cfg) -> bool:
    return cfg.data.kind == "coverworld"


def oracle_by_arm(cfg, arms: dict, batch: dict) -> tuple[dict, dict]:
    """True CTR (mean with interval over pairs) and true aesthetic per arm; the best existing variant as a fifth,
    image-less arm; the simulated A/B test over all of them."""
    from icg_rl.world.oracle import Oracle

    oracle = Oracle(cfg.world.dir)
    users, items = list(batch["user_id"]), list(batch["item_id"])
    probs = {arm: oracle.click_prob(users, items, images) for arm, images in arms.items()}
    probs["reference"] = oracle.variant_click_prob(users, items, ["ref"] * len(users))  # the exact stored cover
    probs["best_variant"] = oracle.best_variant_ctr(users, items)
    e = cfg.evaluation
    metrics = {"oracle_ctr": {arm: mean_ci(p) for arm, p in probs.items()},
               "oracle_aesthetic": {arm: mean_ci(oracle.aesthetic(images)) for arm, images in arms.items()}}
    return metrics, simulated_ab_test(probs, e.ab_impressions_per_pair, cfg.train.seed, control="reference")


def taste_by_arm(cfg, arms: dict, batch: dict) -> dict:
    """Per look dimension: correlation of the arm's covers with the users' true ideal looks (evaluation only)."""
    from icg_rl.evaluation.world_reference import taste_correlation

    per_arm = {arm: taste_correlation(cfg.world.dir, list(batch["user_id"]), images) for arm, images in arms.items()}
    names = next(iter(per_arm.values())).keys()
    return {name.removeprefix("oracle/"): {arm: values[name] for arm, values in per_arm.items()} for name in names}


def embed_shown(embedder, data, paths, item_ids) -> np.ndarray:
    """Normalised CLIP embeddings [N, D] of what each row showed: its cover image, or for an item without one (None,
    NaN or pd.NA: pandas lookups produce each) its title's text embedding, as in the item features
    (models/item_features.py): text-only items are scored, never skipped or crashed on."""
    import torch

    from icg_rl.models.item_features import embed_image_files

    keys = [optional_str(p) or ("title", str(item)) for p, item in zip(paths, item_ids)]
    files = sorted({k for k in keys if isinstance(k, str)})
    table = dict(zip(files, embed_image_files(embedder, [data.root / p for p in files]).numpy()))
    text = sorted({k for k in keys if not isinstance(k, str)})
    if text:
        titles = dict(zip(data.items["item_id"].astype(str), data.items["title"].astype(str)))
        with torch.no_grad():
            embeds = embedder.text_embeds([titles[item] for _, item in text])
        table.update(zip(text, torch.nn.functional.normalize(embeds, dim=-1).numpy()))
    return np.stack([table[k] for k in keys])


def whole_users(rows: pd.DataFrame, budget: int, seed: int) -> pd.DataFrame:
    """A seeded choice of whole users' rows (every ranking complete) with at most `budget` rows in all (at least one
    user); the rows keep their order. Keeps the downstream model's cost bounded on a paper-size log."""
    users = rows["user_id"]
    codes = users.cat.codes.to_numpy() if isinstance(users.dtype, pd.CategoricalDtype) else pd.factorize(users)[0]
    sizes = np.bincount(codes)
    present = np.flatnonzero(sizes)
    if not len(present):
        return rows.reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(present)
    kept = order[np.cumsum(sizes[order]) <= budget]
    chosen = np.zeros(len(sizes), dtype=bool)
    chosen[kept if len(kept) else order[:1]] = True
    return rows[chosen[codes]].reset_index(drop=True)


def downstream_by_arm(cfg, data, pipe, rewards: dict, sampling: dict) -> dict:
    """Train the CTR model on the train split's logged covers; rank whole users' test impressions with each arm."""
    import torch

    from icg_rl.data.history import histories_before
    from icg_rl.evaluation.downstream import fit_ctr_model, index_of, rank_quality
    from icg_rl.preference.data import cover_paths

    log_ = data.interactions
    if "split" not in log_ or not (log_["split"] == "train").any() or not (~log_["clicked"]).any():
        return {arm: "unavailable: needs a click log with a train split and shown-but-not-clicked impressions"
                for arm in ("logged", *ARMS)}
    embedder = clip_embedder(cfg, rewards)
    e = cfg.evaluation
    train = whole_users(log_[log_["split"] == "train"], e.downstream_train_impressions, cfg.train.seed)
    test = whole_users(log_[log_["split"] == e.split], e.downstream_impressions, cfg.train.seed)
    user_index = {u: i + 1 for i, u in enumerate(sorted(set(train["user_id"])))}
    item_index = {i: k + 1 for k, i in enumerate(sorted(set(data.items["item_id"])))}

    def embed(paths: pd.Series, item_ids: pd.Series) -> np.ndarray:
        return embed_shown(embedder, data, paths, item_ids)

    model = fit_ctr_model(index_of(train["user_id"], user_index), index_of(train["item_id"], item_index),
                          embed(cover_paths(data, train), train["item_id"]), train["clicked"].to_numpy(),
                          e.downstream_epochs, cfg.train.seed)
    reference = test["item_id"].map(dict(zip(data.items["item_id"], data.items["image_path"])))
    covers = {"logged": embed(cover_paths(data, test), test["item_id"]), "reference": embed(reference, test["item_id"])}
    pairs = test[["user_id", "item_id", "timestamp"]].sort_values("timestamp").drop_duplicates(["user_id", "item_id"])
    clicks = log_[log_["clicked"]]
    pairs = pairs.assign(history=histories_before(pairs, clicks, cfg.data.history_len))
    pairs = pairs.merge(data.items[["item_id", "title", "image_path"]], on="item_id", how="left")
    pairs["image_path"] = pd.Series([None if (p := optional_str(path)) is None else str(data.root / p)
                                     for path in pairs["image_path"]], index=pairs.index, dtype=object)
    batch = pairs_to_batch(cfg, pairs)
    row_of = {(u, i): r for r, (u, i) in enumerate(zip(pairs["user_id"], pairs["item_id"]))}
    rows = np.asarray([row_of[(u, i)] for u, i in zip(test["user_id"], test["item_id"])])
    for arm in GENERATED:
        with torch.no_grad():
            embeds = embedder.image_embeds(to_float_images(generate(pipe, batch, arm, **sampling)))
        covers[arm] = torch.nn.functional.normalize(embeds, dim=-1).numpy()[rows]
    users, items = index_of(test["user_id"], user_index), index_of(test["item_id"], item_index)
    labels, groups = test["clicked"].to_numpy().astype(np.float64), test["user_id"].to_numpy()
    return {arm: rank_quality(model, users, items, features, labels, groups) for arm, features in covers.items()}
