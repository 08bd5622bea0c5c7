"""The showcase behind a run's sample grid: a few held-out items, each made for the same few users of different
tastes, every user of an item on the same noise — along a row only the user changes — plus the item with the user
zeroed. It feeds the picture (evaluation/sample_grid.py) and nothing else: the held-out metrics and their batch are
heldout.py's, untouched.

Users are spread in taste: on CoverWorld by their hidden ideal look φ* (the oracle's, evaluation only), farthest
first; elsewhere, with no truth about taste, a seeded choice. Both choices are fixed for a run (seeded by
`train.seed`), so grids of a run's evaluations compare.
"""

from __future__ import annotations

import numpy as np

from icg_rl.data.stream import Pairs, build_pairs
from icg_rl.evaluation.heldout import heldout_batch, pairs_to_batch
from icg_rl.rl.seeding import EVALUATION

SHOWCASE_ITEMS = 4  # rows of the grid
SHOWCASE_USERS = 4  # personalized columns of the grid


def heldout_and_showcase(cfg, data, with_oracle: bool) -> tuple[dict, dict, dict]:
    """(the held-out batch, the end-of-run one, the showcase batch) from one read of the test split's pairs. The
    end-of-run batch has `train.final_eval_pairs` pairs (it is the held-out batch itself when that is not larger):
    an arm's mean true CTR is ±0.05 (95 %) on 64 pairs, ±0.02 on 512 (benchmarks/RESULTS.md, issue 34)."""
    pairs = build_pairs(data, "test", cfg.data.history_len)
    heldout, final = heldout_batch(cfg, data, pairs=pairs), cfg.train.final_eval_pairs
    if final is not None and final > cfg.train.eval_pairs:  # the seeded order's first `final` pairs hold the others
        return heldout, heldout_batch(cfg, data, count=final, pairs=pairs), showcase_batch(cfg, pairs, with_oracle)
    return heldout, heldout, showcase_batch(cfg, pairs, with_oracle)


def spread_by_taste(tastes: np.ndarray, k: int) -> np.ndarray:
    """Indices of `k` rows of `tastes` (N, D) far apart: farthest-point selection on standardized dimensions,
    starting from the row farthest from the mean (ties: the lowest index), so extremes of taste come first."""
    std = tastes.std(axis=0)
    z = (tastes - tastes.mean(axis=0)) / np.where(std > 0, std, 1.0)  # (N, D): no dimension dominates by its unit
    chosen = [int(np.argmax((z * z).sum(axis=1)))]
    distance = ((z - z[chosen[0]]) ** 2).sum(axis=1)  # (N,) to the nearest chosen row
    distance[chosen[0]] = -np.inf
    while len(chosen) < min(k, len(z)):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, ((z - z[chosen[-1]]) ** 2).sum(axis=1))
        distance[chosen] = -np.inf  # identical tastes: never the same user twice
    return np.asarray(chosen)


def showcase_batch(cfg, pairs: Pairs, with_oracle: bool, items: int = SHOWCASE_ITEMS,
                   users: int = SHOWCASE_USERS) -> dict[str, np.ndarray]:
    """A stream batch of items × users rows, item-major (row i·U + u: item i for user u). Items: a seeded choice
    among those with a reference cover (any, when too few have one); each user's history is the one before their
    first pair of the split, the same for every item (as in the evaluation suite's diversity)."""
    if not len(pairs):
        raise ValueError("showcase: the split has no (user, item) pairs")
    item_rows = np.sort(np.unique(pairs.item, return_index=True)[1])  # each item's first pair, in pair order
    user_rows = np.sort(np.unique(pairs.user, return_index=True)[1])  # each user's first pair
    rng = np.random.default_rng(cfg.train.seed)
    has_cover = np.array([path is not None for path in pairs.image_paths], dtype=bool)[pairs.item[item_rows]]
    candidates = item_rows[has_cover] if has_cover.sum() >= items else item_rows
    chosen_items = candidates[rng.permutation(len(candidates))[:items]]
    if with_oracle:
        from icg_rl.world.oracle import Oracle

        ideal = Oracle(cfg.world.dir).ideal_points(pairs.user_ids[pairs.user[user_rows]])  # (N, 5) hidden tastes
        chosen_users = user_rows[spread_by_taste(ideal, users)]
    else:
        chosen_users = user_rows[rng.permutation(len(user_rows))[:users]]
    grid = pairs.frame(chosen_items)[["item_id", "title", "image_path"]].merge(
        pairs.frame(chosen_users)[["user_id", "history"]], how="cross")  # item-major, users within
    return pairs_to_batch(cfg, grid)


def sample_showcase(cfg, rollout, batch: dict, with_oracle: bool, weights_ref=None) -> dict:
    """Covers of the showcase batch from the rollout pool (its weights, or `weights_ref`'s) ->

        reference     uint8 (I, S, S, 3)     the items' own covers
        personalized  uint8 (I, U, H, W, 3)  item i made for user u
        zeroed        uint8 (I, H, W, 3)     item i with the user embedding zeroed
        user_ids (U,), item_ids (I,), titles (I,)
        click_prob    {"reference", "personalized", "zeroed"} -> (I, U) oracle P(click) (CoverWorld only)

    Each user's column is its own call of I rows, so item i takes noise row i (the evaluation stream) in every
    column and in the zeroed one."""
    import ray

    n, first_item = len(batch["item_id"]), batch["item_id"][0]
    users = int((batch["item_id"] == first_item).sum())
    items = n // users
    assert items * users == n and (batch["item_id"].reshape(items, users) == batch["item_id"][::users, None]).all(), \
        f"showcase batch: {n} rows are not item-major items × {users} users"
    columns = [{k: v[u::users] for k, v in batch.items()} for u in range(users)]  # each (I, ...)
    submitted = [rollout.sample(column, iteration=0, stream=EVALUATION, weights_ref=weights_ref)
                 for column in columns]
    submitted.append(rollout.sample(columns[0], iteration=0, stream=EVALUATION, zero_user=True,
                                    weights_ref=weights_ref))  # the user is zeroed: any user's rows give the same
    images = [np.concatenate(ray.get([image_ref for _, image_ref, _ in chunks])) for chunks in submitted]
    out = {"reference": np.asarray(columns[0]["reference_image"]), "personalized": np.stack(images[:-1], axis=1),
           "zeroed": images[-1], "user_ids": np.asarray(batch["user_id"][:users]),  # the first item's row
           "item_ids": np.asarray(columns[0]["item_id"]), "titles": np.asarray(columns[0]["title"])}
    if with_oracle:
        out["click_prob"] = showcase_click_prob(cfg.world.dir, batch, out["personalized"], out["zeroed"])
    return out


def showcase_click_prob(world_dir, batch: dict, personalized: np.ndarray, zeroed: np.ndarray) -> dict:
    """{"reference", "personalized", "zeroed"} -> (I, U) true P(click) of that cover for that row's user."""
    from icg_rl.world.oracle import Oracle

    oracle = Oracle(world_dir)
    items, users = personalized.shape[:2]
    user_ids, item_ids = batch["user_id"], batch["item_id"]  # (I·U,) item-major, as personalized flattens
    return {"reference": oracle.variant_click_prob(user_ids, item_ids, ["ref"] * len(user_ids)).reshape(items, users),
            "personalized": oracle.click_prob(user_ids, item_ids,
                                              personalized.reshape(-1, *personalized.shape[2:])).reshape(items, users),
            "zeroed": oracle.click_prob(user_ids, item_ids, np.repeat(zeroed, users, axis=0)).reshape(items, users)}
