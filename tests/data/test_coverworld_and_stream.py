import numpy as np
import pandas as pd
import pytest

from icg_rl.data import load_dataset, load_from_config
from icg_rl.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS, RecDataset
from icg_rl.data.stream import PairStream, build_pairs, expand_groups, stream_from_config


def test_coverworld_loads_into_the_schema(micro_world):
    cfg, _ = micro_world
    data = load_from_config(cfg)
    assert data.kind == "coverworld"
    assert list(data.items.columns[: len(ITEM_COLUMNS)]) == list(ITEM_COLUMNS)
    assert list(data.interactions.columns[: len(INTERACTION_COLUMNS)]) == list(INTERACTION_COLUMNS)
    assert data.interactions["timestamp"].dtype == np.int64 and data.interactions["clicked"].dtype == bool
    assert data.image_file(data.items["item_id"].iloc[0]).is_file()
    assert "oracle" not in " ".join(map(str, data.extra))  # the loader never reads the hidden truth


def test_load_dataset_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="data.kind: got 'imdb'; allowed coverworld, movielens, pixelrec"):
        load_dataset("imdb", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a CoverWorld build"):
        load_dataset("coverworld", tmp_path)


def tiny_dataset(tmp_path) -> RecDataset:
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["Á", "B", "C"], "genres": [["x"], [], ["y"]],
                          "image_path": [None, None, None]})
    log = pd.DataFrame({
        "user_id": ["u", "u", "u", "u", "v"], "item_id": ["a", "b", "c", "a", "c"],
        "timestamp": [1, 2, 3, 4, 5], "clicked": [True, True, False, False, True],
        "rating": np.nan, "variant_id": None})
    return RecDataset("test", tmp_path, items, pd.DataFrame({"user_id": ["u", "v"]}), log)


def test_pairs_carry_history_without_look_ahead(tmp_path):
    pairs = build_pairs(tiny_dataset(tmp_path), split=None, history_len=8).frame().set_index(["user_id", "item_id"])
    assert pairs.loc[("u", "a"), "history"] == []  # first impression: nothing clicked before
    assert pairs.loc[("u", "b"), "history"] == ["a"]
    assert pairs.loc[("u", "c"), "history"] == ["a", "b"]
    assert len(pairs) == 4  # (u, a) shown twice is one pair
    short = build_pairs(tiny_dataset(tmp_path), split=None, history_len=1).frame().set_index(["user_id", "item_id"])
    assert short.loc[("u", "c"), "history"] == ["b"]  # the latest clicks are kept


def test_expand_groups_repeats_each_pair_k_times():
    batch = {"user_id": np.array(["u", "v"]), "item_id": np.array(["a", "b"]),
             "reference_image": np.zeros((2, 4, 4, 3), np.uint8)}
    out = expand_groups(batch, 3)
    assert list(out["group_key"]) == ["u|a"] * 3 + ["v|b"] * 3
    assert out["reference_image"].shape == (6, 4, 4, 3)


def test_ray_data_stream_yields_groups_in_the_batch_contract(micro_world, ray_cluster):
    cfg, _ = micro_world
    data = load_from_config(cfg)
    P, K, H = cfg.data.pairs_per_batch, cfg.data.samples_per_pair, cfg.data.history_len
    stream = stream_from_config(cfg, data, "train", seed=3)  # P, K, H and the reference size from cfg.data
    batches = list(stream.iter_groups(epoch=0))
    assert len(batches) == len(stream) > 0
    first = batches[0]
    assert first["reference_image"].shape == (P * K, cfg.world.image_size, cfg.world.image_size, 3)
    assert first["reference_image"].dtype == np.uint8 and first["has_reference"].all()
    assert first["history"].shape == (P * K, H)
    assert len(set(first["group_key"])) == P
    assert all(len(set(first["group_key"][g * K:(g + 1) * K])) == 1 for g in range(P))
    seen = {key for b in batches for key in b["group_key"]}
    assert len(seen) == len(batches) * P  # each pair once per epoch
    again = list(stream.iter_groups(epoch=0))
    assert [list(b["group_key"]) for b in again] == [list(b["group_key"]) for b in batches]  # seeded order
    other = list(stream.iter_groups(epoch=1))
    assert [list(b["group_key"]) for b in other] != [list(b["group_key"]) for b in batches]


def test_stream_rejects_a_batch_larger_than_the_split(micro_world, ray_cluster):
    cfg, _ = micro_world
    with pytest.raises(ValueError, match="data.pairs_per_batch: got 100000"):
        PairStream(load_from_config(cfg), "train", 100000, 2, 2, reference_size=32)
