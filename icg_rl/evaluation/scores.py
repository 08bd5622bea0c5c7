"""Evaluation metrics on covers: pure functions of images, reward models and (on CoverWorld) true probabilities.

Each takes uint8 images [N, H, W, 3] as the arms produce them. The statistics are spelled out here: a mean with a
normal 95% interval over pairs, Wilson intervals for simulated click counts, a two-proportion z-test for A/B
differences, NDCG@k with binary gains.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from icg_rl.models.images import to_float_images

Z95 = 1.959964


def reward_scores(reward, images: np.ndarray, batch: dict, chunk: int = 256) -> np.ndarray:
    """A reward model's raw score per image -> float [N]."""
    out = []
    for start in range(0, len(images), chunk):
        rows = slice(start, start + chunk)
        out.append(reward.score(to_float_images(images[rows]), {k: v[rows] for k, v in batch.items()}).double().numpy())
    return np.concatenate(out)


def mean_ci(values: np.ndarray) -> dict[str, float]:
    """Mean with a normal-approximation 95% interval over the pairs."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    half = Z95 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    mean = float(values.mean())
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": int(len(values))}


@torch.no_grad()
def diversity(embedder, images_by_item: list[np.ndarray]) -> float:
    """Mean pairwise cosine distance (1 − cos) of CLIP image embeddings among the covers different users got for
    the same item, averaged over items: 0 when every user sees the same cover."""
    distances = []
    for covers in images_by_item:  # (U, H, W, 3) each
        embeds = torch.nn.functional.normalize(embedder.image_embeds(to_float_images(covers)), dim=-1)
        similarity = embeds @ embeds.T  # (U, U)
        upper = torch.triu_indices(len(covers), len(covers), offset=1)
        distances.append(max(0.0, float((1.0 - similarity[upper[0], upper[1]]).mean())))  # rounding: never -0
    return float(np.mean(distances))


@torch.no_grad()
def personal_win_rate(preference, images: np.ndarray, batch: dict) -> float:
    """How often the preference model scores cover i higher for its own user than for another evaluated user:
    mean over i ≠ j of 1[s(u_i, x_i) > s(u_j, x_i)] (ties count half). 0.5 = the cover is not tailored to anyone;
    compare arms (the reference covers carry only the users' general click-propensity differences)."""
    n = len(images)
    users, histories = np.asarray(batch["user_id"]), np.asarray(batch["history"])
    wins, pairs = 0.0, 0
    for i in range(n):
        tiled = np.repeat(images[i : i + 1], n, axis=0)  # cover i shown to every evaluated user
        scores = reward_scores(preference, tiled, {"user_id": users, "history": histories})
        others = np.delete(scores, i)
        wins += float((scores[i] > others).sum() + 0.5 * (scores[i] == others).sum())
        pairs += n - 1
    return wins / pairs


def wilson(clicks: int, shown: int) -> tuple[float, float]:
    """95% Wilson score interval of a click rate."""
    if shown == 0:
        return float("nan"), float("nan")
    p, z2 = clicks / shown, Z95**2
    centre = (p + z2 / (2 * shown)) / (1 + z2 / shown)
    half = Z95 * math.sqrt(p * (1 - p) / shown + z2 / (4 * shown**2)) / (1 + z2 / shown)
    return centre - half, centre + half


def two_proportion_p(clicks_a: int, shown_a: int, clicks_b: int, shown_b: int) -> float:
    """Two-sided p-value of H0: equal click rates (pooled two-proportion z-test)."""
    pooled = (clicks_a + clicks_b) / (shown_a + shown_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / shown_a + 1 / shown_b))
    if se == 0:
        return 1.0
    z = (clicks_a / shown_a - clicks_b / shown_b) / se
    return math.erfc(abs(z) / math.sqrt(2))


def simulated_ab_test(click_probs: dict[str, np.ndarray], impressions_per_pair: int, seed: int,
                      control: str = "reference") -> dict[str, dict]:
    """Show every pair's cover `impressions_per_pair` times under each arm, clicks drawn from the true P(click):
    per arm clicks, impressions, CTR with its Wilson interval, lift over `control` and that difference's p-value.
    All arms draw from one seeded generator in a fixed order, so a rerun gives the same table."""
    rng = np.random.default_rng(seed)
    counts = {}
    for arm, probs in click_probs.items():
        clicks = int(rng.binomial(impressions_per_pair, np.clip(probs, 0.0, 1.0)).sum())
        counts[arm] = (clicks, impressions_per_pair * len(probs))
    table = {}
    base_clicks, base_shown = counts[control]
    for arm, (clicks, shown) in counts.items():
        low, high = wilson(clicks, shown)
        table[arm] = {"clicks": clicks, "impressions": shown, "ctr": clicks / shown, "ci_low": low, "ci_high": high,
                      "true_ctr": float(np.mean(click_probs[arm])),
                      "lift_vs_" + control: clicks / shown / max(base_clicks / base_shown, 1e-12) - 1.0,
                      "p_vs_" + control: two_proportion_p(clicks, shown, base_clicks, base_shown)}
    return table


def ndcg_at_k(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean over groups (users) with at least one positive of NDCG@k, binary gains, ranked by score."""
    values = []
    for group in np.unique(groups):
        mask = groups == group
        gains = np.asarray(labels)[mask].astype(np.float64)
        if gains.sum() == 0:
            continue
        order = np.argsort(-np.asarray(scores)[mask], kind="stable")[:k]
        discounts = 1.0 / np.log2(np.arange(2, len(order) + 2))
        ideal = np.sort(gains)[::-1][: len(order)]
        values.append(float((gains[order] * discounts).sum() / (ideal * discounts).sum()))
    return float(np.mean(values)) if values else float("nan")
