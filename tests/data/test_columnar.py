"""The columnar data path (data/columnar.py, data/sorting.py): histories as offsets agree with a plain per-row
reading of the log, the typed CSV path reads what the text path reads, and the catalogue features are cached."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from icg_rl.data import load_dataset
from icg_rl.data.columnar import ClickHistory, windows_from
from icg_rl.data.sorting import sorted_unique, user_time_order
from tests.data.test_splits import write_movielens, write_pixelrec


def brute_force_history(user, time, cover, row_user, row_time, length):
    """The definition, row by row: the latest `length` clicks of the user strictly before the row, oldest first."""
    out = np.full((len(row_user), length), -1)
    for r, (u, t) in enumerate(zip(row_user, row_time)):
        mine = [(time[k], k) for k in range(len(user)) if user[k] == u and time[k] < t]
        kept = [cover[k] for _, k in sorted(mine)][-length:] if length else []  # ties in log order (stable)
        out[r, :len(kept)] = kept
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_history_windows_match_the_definition(seed):
    rng = np.random.default_rng(seed)
    clicks = 300
    user = rng.integers(0, 12, clicks)
    time = rng.integers(0, 40, clicks)  # many ties in time
    cover = rng.integers(0, 50, clicks)
    history = ClickHistory(user, time, cover, num_users=14)  # two users never click
    row_user, row_time = rng.integers(0, 14, 200), rng.integers(-5, 50, 200)  # before the first, after the last
    for length in (0, 1, 4, 64):
        end = history.ends(row_user, row_time)
        got = history.windows(history.starts(row_user, end, length), end, length)
        np.testing.assert_array_equal(got, brute_force_history(user, time, cover, row_user, row_time, length))


def test_history_survives_timestamps_too_wide_for_one_key():
    """Millisecond stamps × a million users would overflow the int64 key: times fall back to their rank."""
    user = np.array([0, 0, 999_999, 999_999])
    time = np.array([0, 2**61, 5, 2**61 - 1], dtype=np.int64)
    history = ClickHistory(user, time, np.array([1, 2, 3, 4]), num_users=1_000_000)
    end = history.ends(np.array([0, 0, 999_999]), np.array([1, 2**61 + 1, 2**61 - 1]))
    np.testing.assert_array_equal(windows_from(history.cover, history.starts(np.array([0, 0, 999_999]), end, 2),
                                               end, 2), [[1, -1], [1, 2], [3, -1]])


def test_sorting_helpers_agree_with_numpy():
    rng = np.random.default_rng(0)
    user, time = rng.integers(0, 100, 5000), rng.integers(0, 30, 5000)
    np.testing.assert_array_equal(user_time_order(user, time), np.lexsort((time, user)))
    keys = rng.integers(0, 1000, 5000)
    np.testing.assert_array_equal(sorted_unique(keys), np.unique(keys))


def _text_path(monkeypatch):
    """Force the text reader (as when the typed read finds a bad row)."""
    monkeypatch.setattr("icg_rl.data.movielens.read_typed", lambda *a, **k: None)
    monkeypatch.setattr("icg_rl.data.pixelrec.read_typed", lambda *a, **k: None)


@pytest.mark.parametrize("kind", ["movielens", "pixelrec"])
def test_the_typed_path_reads_what_the_text_path_reads(tmp_path, monkeypatch, kind):
    root = (write_movielens if kind == "movielens" else write_pixelrec)(tmp_path / kind)
    typed = load_dataset(kind, root)
    _text_path(monkeypatch)
    text = load_dataset(kind, root)
    pd.testing.assert_frame_equal(typed.users, text.users)
    for column in typed.interactions.columns:  # ids compare as the id strings, whatever their encoding
        assert typed.interactions[column].astype(str).tolist() == text.interactions[column].astype(str).tolist()


def test_a_bad_row_late_in_a_big_csv_is_named_by_file_and_line(tmp_path):
    """The typed reader gives up on the bad value; the text reader then names its line (or skips it)."""
    root = tmp_path / "ml"
    root.mkdir()
    (root / "movies.csv").write_text("movieId,title,genres\n1,A (1999),Drama\n2,\"B, The (2001)\",Comedy\n")
    rows = 200_000
    frame = pd.DataFrame({"userId": np.arange(rows) // 50 + 1, "movieId": np.arange(rows) % 2 + 1,
                          "rating": 4.0, "timestamp": np.arange(rows)})
    frame.to_csv(root / "ratings.csv", index=False)
    lines = (root / "ratings.csv").read_text().splitlines()
    lines[150_001] = "3001,2,4.0,not-a-time"  # line 150,002 of the file
    (root / "ratings.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(Exception, match=r"ratings\.csv:150002: timestamp 'not-a-time'"):
        load_dataset("movielens", root)
    skipped = load_dataset("movielens", root, on_bad_row="skip")
    assert skipped.skipped_rows == {"ratings.csv": 1} and len(skipped.interactions) == rows - 1


def test_catalogue_features_are_computed_once_and_keyed_by_the_item_table(tmp_path, caplog):
    """A real tiny CLIP saved as a folder (the code path of a real checkpoint): the second call reads the cache, a
    changed item table embeds again, and the cached matrix is the one computed."""
    from icg_rl.config import load_config
    from icg_rl.models.clip_embedder import CLIPEmbedder
    from icg_rl.models.item_features import catalogue_features, compute_item_features
    from tests.preference.test_impressions import tiny_clip_parts

    model, processor = tiny_clip_parts()
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    clip = CLIPEmbedder.from_pretrained(tmp_path / "clip")
    data = load_dataset("pixelrec", write_pixelrec(tmp_path / "p"))
    cfg = load_config(None, [f"data.cache_dir={tmp_path / 'cache'}", f"reward.clip={tmp_path / 'clip'}"])
    with caplog.at_level(logging.INFO, logger="icg_rl.catalogue"):
        first = catalogue_features(cfg, data)
        assert "embedding 30 items" in caplog.text and "reusing" not in caplog.text
        second = catalogue_features(cfg, data)
    assert "reusing" in caplog.text
    np.testing.assert_array_equal(first.matrix, second.matrix)
    keys, direct = compute_item_features(clip, data)
    assert list(second.keys) == keys == list(data.items["item_id"])
    np.testing.assert_allclose(second.matrix, direct.numpy(), rtol=1e-5, atol=1e-6)
    data.items = data.items.assign(title=data.items["title"] + " (new edition)")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="icg_rl.catalogue"):
        catalogue_features(cfg, data)  # another item table: embedded again, beside the first
    assert "embedding 30 items" in caplog.text
    assert len([p for p in (tmp_path / "cache").iterdir() if p.name.startswith("catalogue-")]) == 2
