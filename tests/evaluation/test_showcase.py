"""The showcase behind the sample grid: users spread in taste, an item-major items × users batch whose users keep one
history, one sampling call per user so an item takes the same noise row in every column, and a held-out batch that
stays the one the evaluation always had."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icg_rl.config import load_config
from icg_rl.data.schema import RecDataset
from icg_rl.data.stream import build_pairs
from icg_rl.evaluation.showcase import sample_showcase, showcase_batch, spread_by_taste
from tests.conftest import MICRO_CONFIG


def test_spread_by_taste_takes_the_extremes_first_and_never_a_user_twice():
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
    crowd = np.random.default_rng(0).normal(0.0, 0.05, (20, 2))  # many users of middling taste
    tastes = np.concatenate([crowd[:10], corners * [3.0, 1.0] + [0.0, 0.01], crowd[10:]])  # wide in x, not in y
    chosen = spread_by_taste(tastes, 4)
    assert sorted(chosen) == [10, 11, 12, 13]  # the four corners (dimensions standardized), not the crowd
    np.testing.assert_array_equal(spread_by_taste(tastes, 4), chosen)  # deterministic
    same = spread_by_taste(np.ones((5, 3)), 3)
    assert len(set(same.tolist())) == 3
    assert len(spread_by_taste(tastes[:2], 4)) == 2  # fewer users than asked: all of them


def catalogue(tmp_path, items: int = 6, users: int = 5) -> RecDataset:
    """Every user sees every item once, in a user-specific order, clicking every other impression."""
    item_ids = [f"i{k}" for k in range(items)]
    rows = [(f"u{u}", item_ids[(k + u) % items], 10 * u + k, k % 2 == 0) for u in range(users) for k in range(items)]
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "clicked"]).assign(rating=np.nan,
                                                                                            variant_id=None)
    frame = pd.DataFrame({"item_id": item_ids, "title": [f"title {k}" for k in range(items)],
                          "genres": [[] for _ in item_ids], "image_path": [None] * items})
    return RecDataset("test", tmp_path, frame, pd.DataFrame({"user_id": [f"u{u}" for u in range(users)]}), log)


def test_showcase_batch_is_items_by_the_same_users_each_with_one_history(tmp_path):
    cfg = load_config(MICRO_CONFIG)
    pairs = build_pairs(catalogue(tmp_path), None, cfg.data.history_len)
    batch = showcase_batch(cfg, pairs, with_oracle=False, items=3, users=4)
    assert len(batch["item_id"]) == 12
    items = batch["item_id"].reshape(3, 4)
    assert (items == items[:, :1]).all() and len(set(items[:, 0])) == 3  # row i·U + u: item i for user u
    users = batch["user_id"].reshape(3, 4)
    assert (users == users[0]).all() and len(set(users[0])) == 4  # the same four users in every row
    for u in range(4):  # a user's history does not change with the item it is shown
        assert all((batch["history"][i * 4 + u] == batch["history"][u]).all() for i in range(3))
    assert batch["reference_image"].shape == (12, cfg.data.reference_size, cfg.data.reference_size, 3)
    again = showcase_batch(cfg, pairs, with_oracle=False, items=3, users=4)
    assert all(np.array_equal(again[k], batch[k]) for k in ("user_id", "item_id", "history"))  # fixed for a run


class FakeRollout:
    """`RolloutPool.sample`'s contract without Ray: each image says which call row, user and zeroing made it.
    A stand-in on purpose: real covers cannot show which call and noise row made them, and that routing is what
    this test checks; the real pool draws the grid in tests/distributed/test_training.py's train-command test."""

    def __init__(self):
        self.calls = []

    def sample(self, batch, iteration, stream, zero_user=False, weights_ref=None):
        self.calls.append((list(batch["user_id"]), list(batch["item_id"]), zero_user, weights_ref))
        images = np.zeros((len(batch["user_id"]), 8, 8, 3), np.uint8)
        images[:, 0, 0, 0] = np.arange(len(images))  # the row in this call: its noise generator
        images[:, 0, 0, 1] = [int(u.removeprefix("u")) for u in batch["user_id"]]
        images[:, 0, 0, 2] = 255 if zero_user else 0
        return [(None, images, None)]  # (trajectory, images, reward inputs) refs; here the arrays themselves


def test_each_user_column_is_its_own_call_so_an_item_keeps_its_noise_row(tmp_path, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda refs: refs)  # the fake pool hands back arrays, not refs
    cfg = load_config(MICRO_CONFIG)
    batch = showcase_batch(cfg, build_pairs(catalogue(tmp_path), None, cfg.data.history_len), False, items=3, users=4)
    rollout = FakeRollout()
    shown = sample_showcase(cfg, rollout, batch, with_oracle=False, weights_ref="averaged")
    assert shown["personalized"].shape == (3, 4, 8, 8, 3) and shown["zeroed"].shape == (3, 8, 8, 3)
    assert list(shown["user_ids"]) == list(batch["user_id"][:4])
    assert list(shown["item_ids"]) == list(batch["item_id"][::4]) and "click_prob" not in shown
    for i in range(3):
        for u in range(4):
            assert tuple(shown["personalized"][i, u, 0, 0]) == (i, int(shown["user_ids"][u][1:]), 0)
        assert tuple(shown["zeroed"][i, 0, 0])[::2] == (i, 255)  # noise row i, the user zeroed
    assert len(rollout.calls) == 5 and all(call[3] == "averaged" for call in rollout.calls)
    assert [call[2] for call in rollout.calls] == [False] * 4 + [True]
    np.testing.assert_array_equal(shown["reference"], batch["reference_image"][::4])


def test_on_coverworld_users_spread_in_hidden_taste_and_the_heldout_batch_is_unchanged(micro_world):
    from icg_rl.data import load_from_config
    from icg_rl.evaluation.heldout import heldout_batch
    from icg_rl.evaluation.showcase import SHOWCASE_ITEMS, SHOWCASE_USERS, heldout_and_showcase, showcase_click_prob
    from icg_rl.world.oracle import Oracle

    cfg, _ = micro_world
    data = load_from_config(cfg)
    heldout, final, batch = heldout_and_showcase(cfg, data, with_oracle=True)
    before = heldout_batch(cfg, data)  # how the trainer built it before the showcase existed
    assert heldout.keys() == before.keys() and all(np.array_equal(heldout[k], before[k]) for k in before)
    assert final is heldout  # train.final_eval_pairs unset: the run ends on the same pairs
    users = list(batch["user_id"][:SHOWCASE_USERS])
    pairs = build_pairs(data, "test", cfg.data.history_len)
    candidates = pairs.user_ids[pairs.user[np.sort(np.unique(pairs.user, return_index=True)[1])]]  # first-seen order
    oracle = Oracle(cfg.world.dir)
    expected = candidates[spread_by_taste(oracle.ideal_points(candidates), SHOWCASE_USERS)]
    assert users == list(expected) and len(batch["user_id"]) == SHOWCASE_ITEMS * SHOWCASE_USERS
    assert batch["has_reference"].all()  # CoverWorld items all have a cover to compare against
    images = np.random.default_rng(0).integers(0, 256, (SHOWCASE_ITEMS, SHOWCASE_USERS, 16, 16, 3), dtype=np.uint8)
    prob = showcase_click_prob(cfg.world.dir, batch, images, images[:, 0])
    assert {k: v.shape for k, v in prob.items()} == {k: (SHOWCASE_ITEMS, SHOWCASE_USERS)
                                                      for k in ("reference", "personalized", "zeroed")}
    assert prob["personalized"][1, 2] == pytest.approx(
        oracle.click_prob([users[2]], [batch["item_id"][SHOWCASE_USERS]], images[1, 2][None])[0])
    np.testing.assert_allclose(prob["zeroed"][:, 0], prob["personalized"][:, 0])  # same cover, same user


def test_the_end_of_run_batch_is_larger_and_holds_the_periodic_pairs(micro_world):
    from icg_rl.data import load_from_config
    from icg_rl.evaluation.showcase import heldout_and_showcase

    cfg, _ = micro_world
    data = load_from_config(cfg)
    pairs = build_pairs(data, "test", cfg.data.history_len)
    count = min(len(pairs), cfg.train.eval_pairs + 4)
    assert count > cfg.train.eval_pairs, "the micro world's test split is too small for this test"
    bigger = load_config(MICRO_CONFIG, [f"world.dir={cfg.world.dir}", f"train.final_eval_pairs={count}"])
    heldout, final, _ = heldout_and_showcase(bigger, data, with_oracle=True)
    assert len(final["user_id"]) == count and len(heldout["user_id"]) == cfg.train.eval_pairs
    periodic = set(zip(heldout["user_id"], heldout["item_id"]))
    assert periodic < set(zip(final["user_id"], final["item_id"]))  # the summary's pairs extend the curve's
