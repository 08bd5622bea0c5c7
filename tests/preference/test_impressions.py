"""Impressions of click-only logs (sampled negatives), text-only items in the preference pipeline's data preparation,
and the summary's comparison with popularity — on real tables and folders written here, with a tiny random CLIP."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from icg_rl.commands.preference import ndcg_per_user, popularity_scores, versus_popularity
from icg_rl.data import load_dataset
from icg_rl.data.schema import RecDataset
from icg_rl.data.splits import SplitRule, split_dataset
from icg_rl.preference.data import cover_paths, impressions, sample_negatives
from tests.data.test_splits import write_movielens, write_pixelrec


@pytest.fixture(scope="module")
def embedder():
    """A randomly initialised tiny CLIP: the data preparation needs embeddings, not good ones."""
    from icg_rl.models.clip_embedder import CLIPEmbedder

    return CLIPEmbedder(*tiny_clip_parts())


def tiny_clip_parts() -> tuple[CLIPModel, CLIPProcessor]:
    """A tiny random CLIPModel and its processor (seeded), to use in memory or save as a model folder."""
    from icg_rl.models.tokenizer import train_clip_tokenizer
    from icg_rl.models.zoo import image_processor

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 600},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16))
    tokenizer = train_clip_tokenizer(["Movie Video Drama Comedy 1999 tag"], 600, 16)
    return clip, CLIPProcessor(image_processor=image_processor(32), tokenizer=tokenizer)


def skewed_log(users: int = 40, per_user: int = 10, num_items: int = 50, seed: int = 0) -> RecDataset:
    """A click-only log where item k is clicked ∝ 1/(k+1): a few popular items, a long tail."""
    rng = np.random.default_rng(seed)
    items = [f"i{k}" for k in range(num_items)]
    popularity = 1.0 / np.arange(1, num_items + 1)
    rows = []
    for u in range(users):
        chosen = rng.choice(num_items, size=per_user, replace=False, p=popularity / popularity.sum())
        rows += [(f"u{u}", items[k], 1000 + t) for t, k in enumerate(chosen)]
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(
        clicked=True, rating=np.nan, variant_id=None)
    table = pd.DataFrame({"item_id": items, "title": items, "genres": [[] for _ in items], "image_path": None})
    data = RecDataset("pixelrec", Path("/nowhere"), table, pd.DataFrame({"user_id": sorted(set(log["user_id"]))}),
                      log)
    return split_dataset(data, SplitRule(0.2, 0.2, 0.1, seed=0))


def _coded(data):
    """The log's columns as `sample_negatives` takes them."""
    from icg_rl.data.columnar import split_codes
    from icg_rl.data.schema import codes

    log = data.interactions
    return (codes(log["user_id"]), codes(log["item_id"]), split_codes(log), log["clicked"].to_numpy(),
            len(data.items))


def test_negatives_are_seeded_and_never_an_item_the_user_touched():
    data = skewed_log()
    user, item, split, clicked, num_items = _coded(data)
    owner, drawn = sample_negatives(user, item, split, clicked, num_items, per_positive=4, seed=5)
    again = sample_negatives(user, item, split, clicked, num_items, per_positive=4, seed=5)
    np.testing.assert_array_equal(owner, again[0]) and np.testing.assert_array_equal(drawn, again[1])
    other = sample_negatives(user, item, split, clicked, num_items, per_positive=4, seed=6)[1]
    assert not np.array_equal(drawn, other)
    assert len(drawn) == 4 * int(clicked.sum()) and clicked[owner].all()  # anchored on clicks
    touched = set(zip(user.tolist(), item.tolist()))  # every split
    assert not touched & set(zip(user[owner].tolist(), drawn.tolist()))


def test_popular_items_are_drawn_more_often_than_rare_ones():
    data = skewed_log(users=300, per_user=3, num_items=100)  # few clicks per user: exclusion barely matters
    user, item, split, clicked, num_items = _coded(data)
    drawn = sample_negatives(user, item, split, clicked, num_items, per_positive=4, seed=0)[1]
    counts = np.bincount(drawn, minlength=num_items)
    head, tail = counts[:5].mean(), counts[-50:].mean()
    assert head > 3 * tail > 0, (head, tail)  # and the tail is still drawn (+1 smoothing, ^0.75)


def test_evaluation_impressions_come_only_from_held_out_rows():
    data = skewed_log()
    imps = impressions(data, history_len=3, negatives_per_positive=4, seed=0)
    parts = {split: imps.frame(split) for split in imps.splits}
    log = data.interactions
    for split, rows in parts.items():
        assert (rows["split"] == split).all()
        clicks = rows[rows["label"] == 1.0]
        real = log[(log["split"] == split)]
        assert sorted(zip(clicks["user_id"], clicks["item_id"])) == sorted(zip(real["user_id"], real["item_id"]))
    # sampled negatives are anchored on their own split's clicks: every impression of a user's test part is later
    # than every impression of their train part, and no row is in both
    first_test = parts["test"].groupby("user_id")["timestamp"].min()
    last_train = parts["train"].groupby("user_id")["timestamp"].max()
    assert (last_train.reindex(first_test.index) < first_test).all()
    rows = {s: set(zip(p["user_id"], p["item_id"], p["timestamp"])) for s, p in parts.items()}
    assert not rows["train"] & rows["test"] and not rows["train"] & rows["valid"]
    assert (parts["test"]["label"] == 0).sum() == 4 * (parts["test"]["label"] == 1).sum()
    held = set(data.users.loc[data.users["heldout"], "user_id"])
    assert set(parts["heldout"]["user_id"]) == held and not held & set(parts["train"]["user_id"])
    # history never looks ahead: only clicks strictly before the impression
    when = dict(zip(zip(log["user_id"], log["item_id"]), log["timestamp"]))
    for user, time, history in parts["test"][["user_id", "timestamp", "history"]].itertuples(index=False):
        assert all(when[(user, item)] < time for item in history)


def test_a_log_without_split_is_refused(tmp_path):
    data = load_dataset("pixelrec", write_pixelrec(tmp_path / "p"), split=None)
    with pytest.raises(ValueError, match="has no 'split' column: load it with icg_rl.data.load_dataset"):
        impressions(data, history_len=2)


def _prepare(data, embedder):
    """The data preparation of `train_and_evaluate`, up to the inputs the model sees (per batch)."""
    from icg_rl.models.item_features import compute_item_features
    from icg_rl.preference.model import PreferenceModel
    from icg_rl.preference.train import model_inputs, training_rows

    item_ids, features = compute_item_features(embedder, data)
    imps = impressions(data, history_len=3, negatives_per_positive=2, seed=0)
    assert item_ids == list(imps.covers.keys)  # the model's item table is the cover table
    model = PreferenceModel([], item_ids, 16, 16)
    model.set_item_features(features)
    user_row = np.zeros(len(data.users), dtype=np.int32)
    images = {}
    for split, n in imps.sizes().items():
        if n:
            inputs = model_inputs(model, training_rows(imps, split, user_row), imps.history.cover, 3)
            images[split] = inputs[2].numpy()
    parts = {split: imps.frame(split) for split in imps.splits}
    return parts, dict(zip(item_ids, features.numpy())), images


def test_movielens_without_posters_prepares_text_only_rows(tmp_path, embedder):
    """Was: TypeError: unsupported operand type(s) for /: 'PosixPath' and 'NAType' (ml-100k without posters)."""
    data = load_dataset("movielens", write_movielens(tmp_path / "ml"))
    assert data.items["image_path"].isna().all()
    parts, item_embeds, images = _prepare(data, embedder)
    assert all(c is None for rows in parts.values() for c in rows["cover"])
    rows, image = parts["test"], images["test"]
    np.testing.assert_allclose(image, np.stack([item_embeds[i] for i in rows["item_id"]]), rtol=1e-6)
    assert np.isfinite(image).all() and np.allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-5)
    # low ratings are real non-clicks, sampled negatives come on top of them
    assert (parts["train"]["label"] == 0).sum() > (data.interactions.query("split == 'train'")["clicked"] == 0).sum()


def test_pixelrec_with_some_images_missing_embeds_the_rest(tmp_path, embedder):
    from icg_rl.models.item_features import embed_image_files

    data = load_dataset("pixelrec", write_pixelrec(tmp_path / "p"))
    with_image = set(data.items.loc[data.items["image_path"].notna(), "item_id"])
    assert 0 < len(with_image) < len(data.items)
    parts, item_embeds, images = _prepare(data, embedder)
    rows = pd.concat(parts.values())
    assert set(rows["cover"].dropna()) == {f"images/{i}.jpg" for i in set(rows["item_id"]) & with_image}
    for split, table in parts.items():
        if not len(table):
            continue
        shown = [i in with_image for i in table["item_id"]]
        files = [data.root / f"images/{i}.jpg" for i, s in zip(table["item_id"], shown) if s]
        expected = np.stack([item_embeds[i] for i in table["item_id"]])
        expected[np.asarray(shown)] = embed_image_files(embedder, files).numpy()  # the image itself, embedded
        np.testing.assert_allclose(images[split], expected, rtol=1e-4, atol=1e-6)


def test_missing_values_of_every_kind_mean_no_image(tmp_path, embedder):
    """pandas lookups give None, NaN or pd.NA for a missing path: all are "no image" (never `root / NA`)."""
    from icg_rl.data.columnar import covers_of
    from icg_rl.evaluation.suite import embed_shown
    from icg_rl.models.item_features import embed_image_files

    data = load_dataset("pixelrec", write_pixelrec(tmp_path / "p"))
    frame = pd.DataFrame({"item_id": ["i1", "i3", "i6", "i9"], "variant_id": None})
    assert cover_paths(data, frame).tolist() == ["images/i1.jpg", None, None, None]
    spellings = ["images/i1.jpg", None, np.nan, pd.NA]
    odd = data.items.assign(image_path=np.array([spellings[k % 4] for k in range(len(data.items))], dtype=object))
    paths = covers_of(RecDataset("pixelrec", data.root, odd, data.users, data.interactions)).paths
    assert all(p is None or isinstance(p, str) for p in paths) and sum(p is not None for p in paths) >= 1
    shown = embed_shown(embedder, data, pd.Series(["images/i1.jpg", None, np.nan, pd.NA], dtype=object),
                        frame["item_id"])
    assert shown.shape == (4, 16) and np.isfinite(shown).all()
    np.testing.assert_allclose(shown[0], embed_image_files(embedder, [data.root / "images/i1.jpg"])[0], rtol=1e-5)


def test_popularity_of_a_click_only_log_is_the_click_count():
    items, labels = np.array([0, 0, 0, 1, 1, 2]), np.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])  # a, b, c; 3 = new
    assert popularity_scores(items, labels, np.arange(4), 4, counts=True).tolist() == [2.0, 1.0, 0.0, 0.0]
    assert popularity_scores(items, labels, np.arange(4), 4).tolist() == pytest.approx([2 / 3, 1 / 2, 0.0, 0.5])


def test_ndcg_per_user_matches_ndcg_at_k_across_chunks():
    from icg_rl.evaluation.scores import ndcg_at_k

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(700), 6).astype(str)  # 700 users: three chunks of 256
    labels = (rng.random(len(users)) < 0.3).astype(float)
    scores = rng.random(len(users))  # no ties: the shuffle changes nothing
    assert ndcg_per_user(scores, labels, users, k=3) == pytest.approx(ndcg_at_k(scores, labels, users, k=3))
    # ties are broken at random, not in favour of the rows that come first (clicks precede their negatives)
    tied = ndcg_per_user(np.zeros(60), np.tile([1.0, 0, 0, 0, 0], 12), np.repeat(np.arange(12), 5), k=1)
    assert tied < 0.6


def test_the_summary_says_when_popularity_wins(caplog):
    users = np.repeat([f"u{u}" for u in range(30)], 5)
    labels = np.tile([1.0, 0, 0, 0, 0], 30)
    good = labels + np.random.default_rng(0).normal(0, 0.3, len(labels))
    bad = np.random.default_rng(1).random(len(labels))
    with caplog.at_level(logging.WARNING, logger="icg_rl.preference"):
        won = versus_popularity(labels, users, good, bad)
    assert won["beats_popularity"] is True and won["ndcg_at_10"] > won["popularity_ndcg_at_10"]
    assert won["auc"] > won["popularity_auc"] and not caplog.records
    with caplog.at_level(logging.WARNING, logger="icg_rl.preference"):
        lost = versus_popularity(labels, users, bad, good)
    assert lost["beats_popularity"] is False and lost["popularity_ndcg_at_10"] > lost["ndcg_at_10"]
    assert "popularity beats the preference model" in caplog.text and "preference.item_bias" in caplog.text
    assert versus_popularity(np.ones_like(labels), users, good, bad)["beats_popularity"] is None  # one class: undefined
