"""Cross-user relabelling (rl/relabel.py): partners, the relabelled trajectory, the personal advantage."""

import numpy as np
import torch

from icg_rl.rl.relabel import partner_rows, personal_advantages, relabel, shown_rows
from icg_rl.rl.trajectory import Trajectory

KEYS = np.array(["u1|a"] * 3 + ["u2|b"] * 3 + ["u3|c"] * 3 + ["u4|d"] * 3)


def test_partners_are_a_seeded_derangement_of_whole_groups():
    partner = partner_rows(KEYS, seed=0, iteration=5)
    groups = np.repeat(np.arange(4), 3)
    assert np.all(groups[partner] != groups)  # every cover meets another group's user
    for g in range(4):  # a group goes to one partner group, whose first row it points at
        assert len(set(partner[groups == g])) == 1 and partner[groups == g][0] % 3 == 0
    assert sorted(set(groups[partner])) == [0, 1, 2, 3]  # a cycle: every user is still in the audience
    assert np.array_equal(partner, partner_rows(KEYS, seed=0, iteration=5))
    assert any(not np.array_equal(partner_rows(KEYS, 0, it), partner) for it in range(6, 12))  # re-drawn each time
    two = partner_rows(KEYS, seed=0, iteration=5, shift=2)
    assert np.all(groups[two] != groups) and np.all(groups[two] != groups[partner])
    assert partner_rows(np.array(["u1|a"] * 4), 0, 0) is None


def _trajectory(n=12):
    gen = torch.Generator().manual_seed(0)
    return Trajectory(
        latents=torch.randn(n, 2, 4, 2, 2, generator=gen), log_probs=torch.zeros(n, 1), timesteps=torch.tensor([10]),
        condition={"user_index": torch.arange(n) // 3, "history": torch.randn(n, 5, 3, generator=gen),
                   "history_mask": torch.ones(n, 5), "mllm.input_ids": torch.arange(n)[:, None].repeat(1, 4)},
        prompt_embeds=torch.randn(n, 3, 8, generator=gen), images=np.arange(n)[:, None, None, None].repeat(4, 1),
        group_key=KEYS[:n], extra={"user_id": np.array([k.split("|")[0] for k in KEYS[:n]]),
                                   "item_id": np.array([k.split("|")[1] for k in KEYS[:n]]),
                                   "history": np.arange(n)[:, None].repeat(2, 1), "title": np.arange(n)})


def test_relabel_swaps_only_the_user_and_keeps_the_covers_and_items():
    trajectory = _trajectory()
    partner = partner_rows(trajectory.group_key, 0, 1)
    shown = relabel(trajectory, partner)
    assert torch.equal(shown.latents, trajectory.latents) and np.array_equal(shown.images, trajectory.images)
    assert torch.equal(shown.condition["mllm.input_ids"], trajectory.condition["mllm.input_ids"])  # the item's
    for key in ("user_index", "history", "history_mask"):
        assert torch.equal(shown.condition[key], trajectory.condition[key][partner])
    assert np.array_equal(shown.extra["user_id"], trajectory.extra["user_id"][partner])
    assert np.array_equal(shown.extra["history"], trajectory.extra["history"][partner])
    assert np.array_equal(shown.extra["item_id"], trajectory.extra["item_id"])
    assert np.array_equal(shown.extra["title"], trajectory.extra["title"])
    assert np.array_equal(shown.group_key, trajectory.group_key)  # keys the draws: the same (t, ε) as the original
    assert torch.equal(trajectory.condition["user_index"], torch.arange(12) // 3)  # the original is untouched


def test_the_personal_advantage_ignores_what_both_users_agree_on_and_their_click_rates():
    rng = np.random.default_rng(0)
    taste = rng.normal(size=12)  # what only the partner likes about each cover
    common = rng.normal(size=12) * 5  # what everybody likes about it
    rate = np.repeat(rng.normal(size=4), 3) * 5  # the partner's overall click rate for the item
    own = common
    shown = common + taste + rate
    advantages = personal_advantages(own, shown, KEYS)
    groups = np.repeat(np.arange(4), 3)
    centred = taste - np.array([taste[groups == g].mean() for g in range(4)])[groups]
    assert np.allclose(advantages, centred / centred.std(), atol=1e-5)


def test_shown_rows_score_the_covers_for_the_partners_with_the_user_dependent_rewards_only():
    trajectory = _trajectory()
    calls = []

    def score_shown(images, inputs, names):
        calls.append(names)
        liked = (images[:, 0, 0, 0] % 3 == 0).astype(float)  # the partner likes each group's first cover
        return {name: liked + (inputs["user_id"] == "u1") for name in names}  # …and u1 clicks everything more

    own = {"preference": np.zeros(12), "clip_t": np.ones(12), "preference_lift": np.zeros(12)}
    weights = {"preference": 2.0, "clip_t": 1.0, "preference_lift": 0.0}
    rows, advantages, _ = shown_rows(trajectory, own, weights, score_shown, shifts=2, seed=0, iteration=3)
    assert calls == [["preference"], ["preference"]]  # clip_t scores a cover the same for everyone
    assert len(rows) == 48 and advantages.shape == (48,)  # per shift: the covers under their own users, then shown
    for shift in range(2):
        own_rows, shown = slice(24 * shift, 24 * shift + 12), slice(24 * shift + 12, 24 * shift + 24)
        assert torch.equal(rows.condition["user_index"][own_rows], trajectory.condition["user_index"])
        partner = partner_rows(trajectory.group_key, 0, 3, shift + 1)
        assert torch.equal(rows.condition["user_index"][shown], trajectory.condition["user_index"][partner])
        first = np.arange(12) % 3 == 0
        liked = advantages[shown]
        assert np.all(liked[first] > 0) and np.all(liked[~first] < 0)  # u1's higher rate cancels in-group
        assert np.array_equal(advantages[own_rows], -liked)  # the pair: the own user likes it relatively less
    assert shown_rows(trajectory, own, {"clip_t": 1.0}, score_shown, 1, 0, 3) is None
