import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from icg_rl.config import load_config
from icg_rl.data.coverworld import load_coverworld
from icg_rl.metrics import roc_auc
from icg_rl.world.features import FEATURE_NAMES, image_features, image_features_torch
from icg_rl.world.generate import generate_world, write_world
from icg_rl.world.oracle import Oracle
from tests.conftest import MICRO_CONFIG


def tree_hash(root: Path) -> str:
    """Hash of every table and cover (paths and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (".parquet", ".png", ".json") and path.name != "summary.json":
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    cfg = load_config(MICRO_CONFIG)
    hashes = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        world_cfg = cfg.world.model_copy(update={"seed": seed})
        write_world(generate_world(world_cfg, progress=False), tmp_path / name, progress=False)
        hashes.append(tree_hash(tmp_path / name))
    assert hashes[0] == hashes[1]
    assert hashes[0] != hashes[2]


def test_catalogue_titles_covers_and_variants(micro_world):
    cfg, _ = micro_world
    data = load_coverworld(cfg.world.dir)
    assert len(data.items) == cfg.world.num_genres * cfg.world.items_per_genre
    assert data.items["title"].is_unique
    full = generate_world(load_config().world, progress=False)  # the default catalogue
    titles = " ".join(full.items["title"])
    assert any(ord(ch) > 127 for ch in titles), "titles must exercise non-ASCII"
    assert all(p in titles for p in (":", "!", "?", "'", "&", "—", "…"))
    per_item = data.variants.groupby("item_id").size()
    assert (per_item == cfg.world.variants_per_item + 1).all()
    # variants of one item move the look: their φ differ from the reference cover's in every feature somewhere
    phi = data.variants.set_index(["item_id", "variant_id"])[[f"phi_{n}" for n in FEATURE_NAMES]]
    spread = phi.groupby(level=0).std().mean()
    assert (spread > 0.005).all(), spread


def test_features_numpy_and_torch_agree(micro_world):
    import torch

    cfg, _ = micro_world
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    torch_phi = image_features_torch(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    assert np.allclose(image_features(images), torch_phi.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        image_features(np.zeros((4, 32, 32)))


def test_taste_is_bounded_peak_at_ideal(micro_world):
    """Appeal peaks at the user's ideal look and falls off on both sides: 'more' never wins forever."""
    cfg, _ = micro_world
    oracle = Oracle(cfg.world.dir)
    user, item = oracle._ideal.index[0], oracle._items.index[0]
    ideal = oracle._ideal.loc[user].to_numpy()
    for k in range(len(FEATURE_NAMES)):
        step = np.zeros(len(FEATURE_NAMES))
        step[k] = 3.0 / oracle.click_model.feature_scale[k]
        probs = oracle.click_prob_from_features([user] * 3, [item] * 3, np.stack([ideal - step, ideal, ideal + step]))
        assert probs[1] > probs[0] and probs[1] > probs[2], (FEATURE_NAMES[k], probs)


def test_splits_are_time_ordered_and_heldout_users_apart(micro_world):
    cfg, _ = micro_world
    data = load_coverworld(cfg.world.dir)
    log = data.interactions
    assert set(log["split"]) == {"train", "valid", "test", "heldout"}
    held = set(data.users.loc[data.users["heldout"], "user_id"])
    assert held and set(log.loc[log["split"] == "heldout", "user_id"]) == held
    for _, rows in log[log["split"] != "heldout"].groupby("user_id"):
        assert rows.loc[rows["split"] == "train", "timestamp"].max() <= rows.loc[rows["split"] == "test",
                                                                                   "timestamp"].min()


def test_oracle_knows_the_truth(micro_world):
    cfg, summary = micro_world
    stats = summary["world"]
    assert stats["oracle_test_auc"] > 0.65  # clicks follow the click model (small split: noisy)
    assert stats["oracle_test_ctr_best_variant"] >= stats["oracle_test_ctr_reference_cover"]
    oracle = Oracle(cfg.world.dir)
    data = load_coverworld(cfg.world.dir)
    log = data.interactions
    prob = oracle.variant_click_prob(log["user_id"], log["item_id"], log["variant_id"])
    assert roc_auc(prob, log["clicked"]) > 0.75
    # scoring pixels gives what the stored features give
    from icg_rl.io import read_image

    row = data.variants.iloc[3]
    image = read_image(Path(cfg.world.dir) / row["image_path"])[None]
    users = [data.users["user_id"].iloc[0]]
    assert np.allclose(oracle.click_prob(users, [row["item_id"]], image),
                       oracle.variant_click_prob(users, [row["item_id"]], [row["variant_id"]]))
    blown_out = np.full((1, 32, 32, 3), 255, np.uint8)
    assert oracle.aesthetic(blown_out)[0] < oracle.aesthetic(image)[0]
    with pytest.raises(KeyError, match="unknown"):
        oracle.click_prob(["nobody"], [row["item_id"]], image)


def test_summary_reports_click_variance_shares(micro_world):
    _, summary = micro_world
    shares = summary["world"].get("click_variance_share")
    assert shares is not None and shares["genre"] > 0.1 and shares["look"] > 0.1


def test_heavy_users_see_items_again_in_other_variants():
    # 80 > the 32 items of the micro world; spread 0: every user sees exactly the mean
    cfg = load_config(MICRO_CONFIG, ["world.impressions_per_user=80", "world.impressions_spread=0"])
    world = generate_world(cfg.world, progress=False)
    per_user = world.interactions.groupby("user_id").size()
    assert (per_user == 80).all()
    assert world.interactions.duplicated(["user_id", "item_id"]).any()


def test_persona_users_cluster_around_their_persona_and_keep_unit_spread():
    cfg = load_config(MICRO_CONFIG, ["world.num_users=600", "world.taste_segments=3", "world.segment_spread=0.2"])
    users = generate_world(cfg.world, progress=False).truth_users
    assert sorted(users["segment"].unique()) == [0, 1, 2]
    affinity = users.filter(like="affinity_")
    within = affinity.groupby(users["segment"]).std().to_numpy().mean()
    assert within < 0.35 * affinity.std().to_numpy().mean()  # tight personas...
    assert 0.6 < affinity.to_numpy().std() < 1.4  # ...but the population keeps the independent draws' spread


def test_users_without_personas_are_unchanged_by_the_persona_fields():
    base = load_config(MICRO_CONFIG, ["world.taste_segments=0"])
    other = load_config(MICRO_CONFIG, ["world.taste_segments=0", "world.segment_spread=0.9"])  # ignored then
    a, b = (generate_world(c.world, progress=False).truth_users for c in (base, other))
    assert "segment" not in a.columns
    assert a.equals(b)


def test_models_cache_key_follows_the_catalogue_not_the_users():
    from icg_rl.models.build import models_key

    cfg = load_config(MICRO_CONFIG)
    users_changed = load_config(MICRO_CONFIG, ["world.num_users=99", "world.taste_segments=4",
                                               "world.impressions_per_user=500", "world.look_weight=2"])
    covers_changed = load_config(MICRO_CONFIG, ["world.variants_per_item=3"])
    assert models_key(users_changed.world, users_changed.zoo) == models_key(cfg.world, cfg.zoo)
    assert models_key(covers_changed.world, covers_changed.zoo) != models_key(cfg.world, cfg.zoo)
    # the catalogue really is independent of the user fields: same covers, captions and public ratings
    a, b = (generate_world(c.world, progress=False) for c in (cfg, users_changed))
    assert a.variants.equals(b.variants) and a.ratings.equals(b.ratings)


def test_impressions_per_user_spread_from_light_to_heavy_users():
    cfg = load_config(MICRO_CONFIG, ["world.num_users=400", "world.impressions_per_user=150",
                                     "world.impressions_spread=0.6"])
    counts = generate_world(cfg.world, progress=False).interactions.groupby("user_id").size()
    assert abs(counts.mean() - 150) < 15  # the configured mean...
    assert counts.quantile(0.9) > 2 * counts.quantile(0.1)  # ...with light and heavy users
    assert counts.min() >= 10  # every user keeps train, valid and test rows


def test_a_rebuilt_world_rewrites_its_summary(tmp_path):
    """`train` and `preference` rebuild a world when a user-side field changes: summary.json must follow."""
    from icg_rl.commands.world import build

    for users in (24, 30):
        cfg = load_config(MICRO_CONFIG, [f"world.dir={tmp_path}", f"world.num_users={users}"])
        build(cfg, tmp_path, models=False, progress=False)
        assert json.loads((tmp_path / "summary.json").read_text())["world"]["users"] == users


def test_look_words_name_each_feature_by_its_decile_in_order():
    from icg_rl.world.features import FEATURE_NAMES, LOOK_WORDS, describe_looks

    rng = np.random.default_rng(0)
    features = rng.normal(size=(1000, len(FEATURE_NAMES)))
    words = np.array([look.split() for look in describe_looks(features, np.zeros(len(features)))])  # (N, 5)
    for k in range(len(FEATURE_NAMES)):
        assert len(LOOK_WORDS[k]) == 10 and set(words[:, k]) == set(LOOK_WORDS[k])  # deciles: every word used
        level = np.array([LOOK_WORDS[k].index(w) for w in words[:, k]])
        assert (np.bincount(level) == 100).all()  # equal shares
        # the words are ordered: a higher word never has a lower value than the one below it
        order = np.argsort(features[:, k])
        assert (np.diff(level[order]) >= 0).all()
    all_words = [w for ws in LOOK_WORDS for w in ws]
    assert len(set(all_words)) == len(all_words)  # a word names one feature (clip_texts relies on it)


def test_taste_correlation_sees_covers_that_follow_the_user(micro_world):
    """Grey covers whose level is each user's ideal brightness correlate ~1 on brightness; one grey for everybody
    has no correlation to measure (NaN), and the covers' other looks say nothing either."""
    from icg_rl.evaluation.world_reference import taste_correlation

    cfg, _ = micro_world
    oracle = Oracle(cfg.world.dir)
    users = list(oracle._ideal.index[:12])
    ideal = oracle.ideal_points(users)  # (12, 5)
    level = np.clip(ideal[:, 0], 0.05, 0.95)  # brightness of a grey image is its level
    following = np.broadcast_to(level[:, None, None, None], (len(users), 8, 8, 3)).astype(np.float32)
    corr = taste_correlation(cfg.world.dir, users, (following * 255).round().astype(np.uint8))
    assert corr["oracle/taste_corr_brightness"] > 0.95
    assert np.isnan(corr["oracle/taste_corr_warmth"])  # grey: warmth 0 for all, nothing to correlate
    same = np.full((len(users), 8, 8, 3), 128, dtype=np.uint8)
    assert np.isnan(taste_correlation(cfg.world.dir, users, same)["oracle/taste_corr_brightness"])
    with pytest.raises(KeyError, match="unknown user"):
        oracle.ideal_points(["nobody"])


def test_gold_reward_is_the_oracle_in_torch(micro_world):
    """The benchmark-only gold reward gives the oracle's click probability of stored covers, with a gradient."""
    import torch

    from icg_rl.data.coverworld import load_coverworld
    from icg_rl.evaluation.gold import GoldReward
    from icg_rl.io import read_image

    cfg, _ = micro_world
    data = load_coverworld(cfg.world.dir)
    variants = data.variants.head(6)
    users = list(data.users["user_id"][:6])
    images = np.stack([read_image(Path(cfg.world.dir) / p) for p in variants["image_path"]])  # (6, H, W, 3)
    truth = Oracle(cfg.world.dir).click_prob(users, list(variants["item_id"]), images)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    gold = GoldReward(cfg.world.dir).score(pixels, {"user_id": users, "item_id": list(variants["item_id"])})
    np.testing.assert_allclose(gold.detach().numpy(), truth, atol=1e-4)
    (grad,) = torch.autograd.grad(gold.sum(), pixels)
    assert grad.abs().sum() > 0


def test_gold_lift_is_the_true_logit_centred_on_the_audience(micro_world):
    """One cover shown to each distinct user of a batch: its gold lifts are the true click logits minus the
    cover-independent terms (genre affinity, item bias), centred over the users — they sum to zero."""
    import torch

    from icg_rl.data.coverworld import load_coverworld
    from icg_rl.evaluation.gold import GoldLiftReward
    from icg_rl.io import read_image

    cfg, _ = micro_world
    data = load_coverworld(cfg.world.dir)
    users = list(data.users["user_id"][:5])
    item = data.variants["item_id"].iloc[0]
    image = read_image(Path(cfg.world.dir) / data.variants["image_path"].iloc[0])
    images = np.stack([image] * len(users))
    oracle = Oracle(cfg.world.dir)
    affinity, ideal, bias = oracle._lookup(users, [item] * len(users))
    model = oracle.click_model
    logit = model.logit(affinity, image_features(images), ideal, bias)
    personal = logit - model.genre_weight * affinity - bias
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    lift = GoldLiftReward(cfg.world.dir).score(pixels, {"user_id": users, "item_id": [item] * len(users)})
    np.testing.assert_allclose(lift.numpy(), personal - personal.mean(), atol=1e-3)
    assert abs(float(lift.sum())) < 1e-4 and float(lift.abs().max()) > 1e-3


def test_ab_test_against_reference_covers(micro_world):
    """The reference covers themselves against the reference covers: no lift worth the name; grey covers that no
    user's taste peaks at lose clearly with enough impressions."""
    from icg_rl.evaluation.world_reference import ab_test_vs_reference
    from icg_rl.io import read_image

    cfg, _ = micro_world
    data = load_coverworld(cfg.world.dir)
    refs = data.variants[data.variants["variant_id"] == "ref"].head(8)
    users = list(data.users["user_id"][:8])
    images = np.stack([read_image(Path(cfg.world.dir) / p) for p in refs["image_path"]])
    same = ab_test_vs_reference(cfg.world.dir, users, list(refs["item_id"]), images, 2000, seed=0)
    assert abs(same["oracle/ab_lift"]) < 0.1 and same["oracle/ab_p_value"] > 0.001
    black = np.zeros_like(images)
    worse = ab_test_vs_reference(cfg.world.dir, users, list(refs["item_id"]), black, 2000, seed=0)
    assert worse["oracle/ab_lift"] < 0 and worse["oracle/ab_p_value"] < 0.01
