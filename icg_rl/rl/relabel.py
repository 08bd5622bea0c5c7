"""Cross-user relabelling for reward-only RL: every cover is also shown to another user of the batch.

A group's covers were made for user u. Scored for u they tell the policy which covers u likes, but most of that is
what *every* user likes (a clean look, the title's genre): the item path learns it as well as the user path, and
the user-zeroed policy improves as much as the personalized one. Shown to another user u′ of the batch, the same
covers tell what only the user path can learn: under u′'s condition, a cover u′ likes more than u does is pulled
toward, one u′ likes less is pushed away; the item, title and reference are the same, so nothing but the user
embedding separates the two conditions. NFT can train on covers it did not sample for that condition (its loss is a
regression on x₀ under a condition, no likelihood of the sampling path), which is what makes this free of
importance weights.

    partner   = partner_rows(group_key, seed, iteration, shift)   # row -> the row whose user it is shown to
    relabelled = relabel(trajectory, partner)                     # same covers, u′'s user condition and inputs
    A′(c)     = [s(u′, c) − s(u, c)] − mean over c's group        s: the weighted user-dependent rewards
    pair      = (c under u with advantage −A′, c under u′ with +A′), both at the same (t, ε) draws

The difference removes everything the two users agree on about a cover, and centring it within the group removes
u′'s and u's overall click rates for the item (the same for every cover of the group). Groups go to partners as a
random cycle: every group meets a group of another (user, item), and the batch's audience is unchanged (the
preference lift centres on it).

Why a pair. At the sampling policy NFT's gradient is Σ (2r − 1) ∇‖f_θ(x_t) − y‖², and the denoising error of
one (t, ε) draw is mostly the draw's own, the same under any user: as single rows the shown covers' gradients are
noise on the user path (benchmarks/snr_probe.py: cosine between batches ≈ 0). The pair's two rows differ only in
the user and meet the same draw (they keep the cover's group key, which keys `nft_shared_draws`), so their
gradient is A′ ∇[‖f_θ(x_t | u′) − y‖² − ‖f_θ(x_t | u) − y‖²]: the draw's own error cancels, and what is left
is what the user changes.
"""

from __future__ import annotations

import numpy as np

from icg_rl.rl.seeding import RELABEL, derive_seed

USER_CONDITION_KEYS = ("user_index", "history", "history_mask")  # what the ICG user encoder reads
USER_REWARD_INPUTS = ("user_id", "history")  # what a user-dependent reward reads about the user


def group_of_rows(group_key: np.ndarray) -> np.ndarray:
    """Each row's group number, groups numbered by first appearance (not by sorted key)."""
    _, first, inverse = np.unique(np.asarray(group_key).astype(str), return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse]


def partner_rows(group_key: np.ndarray, seed: int, iteration: int, shift: int = 1) -> np.ndarray | None:
    """Row -> the first row of the group its covers are shown to: the groups in a random cycle (seeded by the run
    and iteration), each meeting the group `shift` places on. None when the batch has a single group."""
    group_of_row = group_of_rows(group_key)
    groups = int(group_of_row.max()) + 1
    if groups < 2:
        return None
    cycle = np.random.default_rng(derive_seed(seed, RELABEL, iteration)).permutation(groups)
    to = np.empty(groups, dtype=np.int64)
    to[cycle] = np.roll(cycle, -(shift % groups or 1))  # a derangement of the groups
    first_row = np.array([np.flatnonzero(group_of_row == g)[0] for g in range(groups)])
    return first_row[to[group_of_row]]


def relabel_inputs(extra: dict, partner: np.ndarray) -> dict:
    """Reward inputs of the covers shown to their partner's user: the user fields taken from the partner row."""
    return {k: (np.asarray(v)[partner] if k in USER_REWARD_INPUTS else np.asarray(v)) for k, v in extra.items()}


def relabel(trajectory, partner: np.ndarray):
    """The trajectory's covers with their partner row's user: its user condition and reward inputs. The group key
    stays the cover's own, so the shown rows meet the same (t, ε) draws as the originals."""
    shown = trajectory.rows(slice(None))
    for key in USER_CONDITION_KEYS:
        shown.condition[key] = trajectory.condition[key][partner]
    shown.extra = relabel_inputs(trajectory.extra, partner)
    return shown


def personal_advantages(own: np.ndarray, shown: np.ndarray, group_key: np.ndarray,
                        eps: float = 1e-6) -> np.ndarray:
    """Scores of the covers for their own users `own` [N] and for their partners' `shown` [N] -> the shown rows'
    advantages [N] (batch std units): how much more the partner likes each cover than its own user does, centred
    within the group."""
    diff = np.asarray(shown, dtype=np.float64) - np.asarray(own, dtype=np.float64)
    group_of_row = group_of_rows(group_key)
    means = np.bincount(group_of_row, weights=diff) / np.bincount(group_of_row)
    centred = diff - means[group_of_row]
    return (centred / (centred.std() + eps)).astype(np.float32)


def shown_rows(trajectory, own_scores: dict, weights: dict[str, float], score_shown, shifts: int, seed: int,
               iteration: int) -> tuple[object, np.ndarray, dict[str, float]] | None:
    """The relabelled pairs of a batch for `shifts` partners each -> (trajectory of the pairs' rows: per shift the
    covers under their own users, then under the partners'; their advantages [2·shifts·N], metrics), or None when
    nothing can be relabelled (one group, no user-dependent reward).

    `own_scores` {reward: [N]} are the covers' scores for their own users; `score_shown(images, inputs, names)`
    scores the covers for other users with the rewards `names` (the user-dependent ones of `weights`) ->
    {reward: [N]}: the reward pools, or the in-process reward models."""
    from icg_rl.rewards.registry import USER_DEPENDENT
    from icg_rl.rl.trajectory import Trajectory

    personal = {name: w for name, w in weights.items() if w and name in USER_DEPENDENT}
    if not personal or shifts < 1:
        return None
    own = sum(w * np.asarray(own_scores[name], dtype=np.float64) for name, w in personal.items())
    parts, advantages = [], []
    for shift in range(1, shifts + 1):
        partner = partner_rows(trajectory.group_key, seed, iteration, shift)
        if partner is None:
            return None
        shown = relabel(trajectory, partner)
        scores = score_shown(shown.images, shown.extra, sorted(personal))
        other = sum(w * np.asarray(scores[name], dtype=np.float64) for name, w in personal.items())
        liked = personal_advantages(own, other, trajectory.group_key)
        parts += [trajectory, shown]
        advantages += [-liked, liked]
    advantages = np.concatenate(advantages)
    return Trajectory.concat(parts), advantages, {"stats/relabel_rows": float(len(advantages)),
                                                  "stats/relabel_abs_advantage": float(np.abs(advantages).mean())}
