"""One split rule for every source: per-user time split (train ≤ valid ≤ test in time) plus held-out users, checked
on a small generated CoverWorld, a MovieLens folder and a PixelRec folder written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from icg_rl.config import ConfigError, WorldConfig, load_config
from icg_rl.data import load_dataset, load_from_config
from icg_rl.data.schema import RecDataset
from icg_rl.data.splits import SPLITS, SplitRule, assign_splits, heldout_users
from icg_rl.data.stream import LoadReferences, build_pairs

USERS, PER_USER = 20, 12


def _log(seed: int = 0) -> pd.DataFrame:
    """USERS users × PER_USER (user, item, timestamp) rows, in shuffled order, timestamps with ties."""
    rng = np.random.default_rng(seed)
    rows = [(u, int(i), int(t)) for u in range(1, USERS + 1)
            for i, t in zip(rng.permutation(30)[:PER_USER] + 1, rng.integers(1_600_000_000, 1_600_000_040, PER_USER))]
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"]).sample(frac=1.0, random_state=seed)


def write_movielens(root: Path) -> Path:
    """An ml-latest folder without posters: ratings.csv (shuffled rows) and movies.csv."""
    root.mkdir(parents=True)
    log = _log()
    ratings = [f"{u},{i},{1.0 + (u + i) % 5},{t}" for u, i, t in log.itertuples(index=False)]
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(ratings) + "\n")
    movies = [f"{i},Movie {i} (1999),{'Drama' if i % 2 else 'Comedy'}" for i in range(1, 31)]
    (root / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(movies) + "\n")
    return root


def write_pixelrec(root: Path, with_image=lambda item: item % 3 != 0) -> Path:
    """A Pixel200K-shaped folder; items whose id fails `with_image` have no cover in images/."""
    (root / "images").mkdir(parents=True)
    log = _log(1)
    clicks = [f"i{i},u{u},{t}" for u, i, t in log.itertuples(index=False)]
    (root / "Pixel200K.csv").write_text("item_id,user_id,timestamp\n" + "\n".join(clicks) + "\n")
    items = [f"i{i},Video {i},tag{i % 4}" for i in range(1, 31)]
    (root / "item_info.csv").write_text("item_id,title,tag\n" + "\n".join(items) + "\n")
    for i in range(1, 31):
        if with_image(i):
            Image.new("RGB", (8, 8), (i * 8, 0, 255 - i * 8)).save(root / "images" / f"i{i}.jpg")
    return root


def assert_time_split(data: RecDataset) -> None:
    """The rule's invariants: every row in exactly one of the four parts; held-out users only (and wholly) in
    `heldout`; per other user, every train row no later than every valid row, every valid row no later than every
    test row; each user's latest row is a test row."""
    log = data.interactions
    assert set(log["split"]) <= set(SPLITS) and log["split"].notna().all()
    held = set(data.users.loc[data.users["heldout"], "user_id"])
    assert set(log.loc[log["split"] == "heldout", "user_id"]) == held & set(log["user_id"])
    assert not log.loc[log["user_id"].isin(held), "split"].ne("heldout").any()
    for user, rows in log[~log["user_id"].isin(held)].groupby("user_id"):
        times = {s: rows.loc[rows["split"] == s, "timestamp"] for s in ("train", "valid", "test")}
        assert len(times["test"]), user
        assert times["test"].max() == rows["timestamp"].max()
        for early, late in (("train", "valid"), ("valid", "test"), ("train", "test")):
            if len(times[early]) and len(times[late]):
                assert times[early].max() <= times[late].min(), (user, early, late)


def test_coverworld_stores_the_rule(tmp_path):
    from icg_rl.world.generate import generate_world

    cfg = WorldConfig(dir=str(tmp_path), num_genres=2, items_per_genre=3, variants_per_item=1, num_users=10,
                      impressions_per_user=12, heldout_user_fraction=0.2)
    world = generate_world(cfg, progress=False)
    data = RecDataset("coverworld", tmp_path, world.items, world.users, world.interactions)
    assert_time_split(data)
    assert data.users["heldout"].sum() == 2 and {"train", "valid", "test", "heldout"} == set(data.interactions["split"])


@pytest.mark.parametrize("kind", ["movielens", "pixelrec"])
def test_every_source_is_split_by_the_same_rule(tmp_path, kind):
    root = (write_movielens if kind == "movielens" else write_pixelrec)(tmp_path / kind)
    data = load_dataset(kind, root, split=SplitRule(0.25, 0.25, 0.2, seed=3))
    assert_time_split(data)
    log = data.interactions
    assert data.users["heldout"].sum() == 4  # round(20 users × 0.2)
    sizes = log[log["split"] != "heldout"].groupby("user_id")["split"].value_counts().unstack()
    assert (sizes["test"] == 3).all() and (sizes["valid"] == 3).all() and (sizes["train"] == 6).all()  # of 12
    # the same function as CoverWorld's, so the same labels
    held = heldout_users(data.users["user_id"], 0.2, 3)
    assert log["split"].tolist() == assign_splits(log, 0.25, 0.25, held).tolist()
    again = load_dataset(kind, root, split=SplitRule(0.25, 0.25, 0.2, seed=3))
    assert again.interactions["split"].tolist() == log["split"].tolist()  # seeded
    assert "split" not in load_dataset(kind, root, split=None).interactions  # the loader's tables as read


def test_assign_splits_is_a_stable_sort_by_user_then_time():
    """Ties in time keep input order; the labels are those of the straightforward sort (CoverWorld's split stays)."""
    log = pd.DataFrame({"user_id": ["b", "a", "b", "a", "b", "a", "b", "b"],
                        "timestamp": [5, 1, 5, 2, 1, 2, 9, 5]}, index=[7, 3, 5, 1, 0, 2, 4, 6])
    labels = assign_splits(log, valid_fraction=0.2, test_fraction=0.2, heldout=set())
    # b's rows by time (ties in input order): idx0 t1, idx7 t5, idx5 t5, idx6 t5, idx4 t9 -> train×3, valid, test
    assert labels.loc[[0, 7, 5, 6, 4]].tolist() == ["train", "train", "train", "valid", "test"]
    # a's: idx3 t1, idx1 t2, idx2 t2 -> ceil(0.6)=1 test, floor(0.6)=0 valid
    assert labels.loc[[3, 1, 2]].tolist() == ["train", "train", "test"]
    assert assign_splits(log, 0.2, 0.2, {"a"}).loc[[3, 1, 2]].tolist() == ["heldout"] * 3


def test_load_from_config_uses_the_data_fields(tmp_path):
    root = write_movielens(tmp_path / "ml")
    cfg = load_config(None, ["data.kind=movielens", f"data.path={root}", "data.test_fraction=0.4",
                             "data.valid_fraction=0", "data.heldout_user_fraction=0.1", "data.split_seed=7"])
    data = load_from_config(cfg)
    assert_time_split(data)
    kept = data.interactions[data.interactions["split"] != "heldout"]
    assert set(kept["split"]) == {"train", "test"} and (kept.groupby("user_id").size() == PER_USER).all()
    assert (kept[kept["split"] == "test"].groupby("user_id").size() == 5).all()  # ceil(12 × 0.4)
    assert set(data.users.loc[data.users["heldout"], "user_id"]) == heldout_users(data.users["user_id"], 0.1, 7)


def test_bad_split_settings_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"data.test_fraction: got 0.7; allowed 0 < value < 0.5"):
        SplitRule(test_fraction=0.7)
    with pytest.raises(ConfigError, match="data.heldout_user_fraction: got 1.5"):
        load_config(None, ["data.heldout_user_fraction=1.5"])


def test_posters_dir_comes_from_the_config_and_a_missing_one_names_the_option(tmp_path):
    root = write_movielens(tmp_path / "ml")
    (root / "posters").mkdir()
    Image.new("RGB", (8, 8)).save(root / "posters" / "2.jpg")
    cfg = load_config(None, ["data.kind=movielens", f"data.path={root}", f"data.posters_dir={root / 'posters'}"])
    assert load_from_config(cfg).image_file("2") == root / "posters" / "2.jpg"
    cfg.data.posters_dir = str(tmp_path / "no_posters")
    with pytest.raises(FileNotFoundError, match=r"posters_dir \(data.posters_dir\): .*no_posters does not exist"):
        load_from_config(cfg)
    cfg.data.kind = "pixelrec"
    with pytest.raises(ConfigError, match="data.posters_dir: .* only movielens reads posters"):
        load_from_config(cfg)


@pytest.mark.parametrize("kind", ["movielens", "pixelrec"])
def test_the_pair_stream_reads_every_split_and_text_only_items(tmp_path, kind):
    """`icg_rl.train data.kind=pixelrec` used to stop in build_pairs (no split column); items without an image
    come out of the stream as zero references with has_reference False."""
    root = (write_movielens if kind == "movielens" else write_pixelrec)(tmp_path / kind)
    data = load_dataset(kind, root)
    parts = {s: build_pairs(data, s, history_len=3).frame() for s in ("train", "test")}
    assert len(parts["train"]) and len(parts["test"])
    keys = {s: set(zip(p["user_id"], p["item_id"])) for s, p in parts.items()}
    assert not keys["train"] & keys["test"]  # every (user, item) is rated/clicked once in these logs
    loaded = LoadReferences(16, 3)(parts["test"])
    has_image = [data.image_file(i) is not None for i in parts["test"]["item_id"]]
    assert loaded["has_reference"].tolist() == has_image
    assert all(img.shape == (16, 16, 3) for img in loaded["reference_image"])
    assert not any(img.any() for img, ok in zip(loaded["reference_image"], has_image) if not ok)
