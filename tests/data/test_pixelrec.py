"""PixelRec loader: a small release-shaped folder (item info CSV, interactions CSV, images written by PIL) loads
into the exact schema values; bad rows are reported as file:line with the bad value, or skipped and counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from icg_rl.data.movielens import load_movielens
from icg_rl.data.pixelrec import load_pixelrec, split_tags, timestamp_seconds
from icg_rl.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS, DataFileError

ITEM_INFO = (
    "item_id,view_number,comment_number,thumbup_number,share_number,coin_number,favorite_number,"
    "barrage_number,title,tag,description\n"
    'i1,1024,3,50,1,2,7,0,我的世界 生存 第一集,"游戏,我的世界","A long, quoted ""description"""\n'
    "i2,88,0,4,0,0,1,2,Night city walk,music|live|music,\n"
    "i3,5,0,0,0,0,0,0,No cover here,,\n"
)
INTERACTIONS = (
    "item_id,user_id,timestamp\n"
    "i1,u10,1640995200\n"
    "i2,u10,2022-01-01 12:00:00\n"
    "i3,u7,1640995300\n"
)


def write_pixelrec(
    root: Path, *, interactions: str = INTERACTIONS, item_info: str = ITEM_INFO, images: str = "images"
) -> Path:
    """A Pixel200K-shaped folder: item_info.csv, Pixel200K.csv, `<images>/i1.jpg` and `i2.jpg` (i3 has none)."""
    (root / images).mkdir(parents=True, exist_ok=True)
    (root / "item_info.csv").write_text(item_info, encoding="utf-8")
    (root / "Pixel200K.csv").write_text(interactions, encoding="utf-8")
    for item, colour in (("i1", (255, 0, 0)), ("i2", (0, 0, 255))):
        Image.new("RGB", (8, 6), colour).save(root / images / f"{item}.jpg")
    return root


def test_loads_exact_values(tmp_path):
    data = load_pixelrec(write_pixelrec(tmp_path))
    assert data.kind == "pixelrec" and data.root == tmp_path and data.skipped_rows == {}
    items = data.items
    assert items["item_id"].tolist() == ["i1", "i2", "i3"]
    assert items["title"].tolist() == ["我的世界 生存 第一集", "Night city walk", "No cover here"]
    assert items["genres"].tolist() == [["游戏", "我的世界"], ["music", "live"], []]
    assert items["image_path"].tolist() == ["images/i1.jpg", "images/i2.jpg", None]
    assert items["description"].tolist() == ['A long, quoted "description"', "", ""]
    assert items["view_number"].tolist() == ["1024", "88", "5"]  # extra columns kept as written
    inter = data.interactions
    assert inter["item_id"].tolist() == ["i1", "i2", "i3"] and inter["user_id"].tolist() == ["u10", "u10", "u7"]
    assert inter["timestamp"].tolist() == [1640995200, 1641038400, 1640995300]  # 2022-01-01 12:00 UTC
    assert inter["clicked"].tolist() == [True, True, True]
    assert inter["rating"].isna().all() and inter["variant_id"].tolist() == [None, None, None]
    assert data.users["user_id"].tolist() == ["u10", "u7"]


def test_images_open_through_the_dataset(tmp_path):
    data = load_pixelrec(write_pixelrec(tmp_path))
    with Image.open(data.image_file("i2")) as image:
        assert image.size == (8, 6)
    assert data.image_file("i3") is None


def test_same_schema_as_movielens(tmp_path):
    pixel = load_pixelrec(write_pixelrec(tmp_path / "pixel"))
    ml = tmp_path / "ml"
    ml.mkdir()
    (ml / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    (ml / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    movie = load_movielens(ml)
    for table, columns in (("items", ITEM_COLUMNS), ("interactions", INTERACTION_COLUMNS)):
        ours, theirs = getattr(pixel, table), getattr(movie, table)
        assert list(ours.columns[: len(columns)]) == list(theirs.columns[: len(columns)]) == list(columns)
        assert [str(ours[c].dtype) for c in columns] == [str(theirs[c].dtype) for c in columns]
    assert str(pixel.users["user_id"].dtype) == str(movie.users["user_id"].dtype)
    assert pixel.interactions["timestamp"].dtype == np.int64


def test_variants_subfolders_cover_folder_title_en_bom_and_milliseconds(tmp_path):
    (tmp_path / "pixelrec_interaction").mkdir()
    (tmp_path / "pixelrec_iteminfo").mkdir()
    (tmp_path / "cover").mkdir()
    (tmp_path / "pixelrec_interaction" / "Pixel1M.csv").write_text(
        "\ufeffitem_id,user_id,timestamp\ni5,u1,1640995200000\n", encoding="utf-8"
    )
    (tmp_path / "pixelrec_iteminfo" / "item_info.csv").write_text("item_id,title_en\ni5,A cat\n", encoding="utf-8")
    Image.new("RGB", (4, 4)).save(tmp_path / "cover" / "i5.jpg")
    data = load_pixelrec(tmp_path)
    assert data.items[["item_id", "title", "image_path"]].values.tolist() == [["i5", "A cat", "cover/i5.jpg"]]
    assert data.items["genres"].tolist() == [[]]
    assert data.interactions["timestamp"].tolist() == [1640995200]  # milliseconds -> seconds


def test_interactions_csv_can_be_named_when_several(tmp_path):
    root = write_pixelrec(tmp_path)
    (root / "Pixel1M.csv").write_text("item_id,user_id,timestamp\ni1,u99,1\n")
    with pytest.raises(ValueError, match="Pixel1M.csv"):
        load_pixelrec(root)
    data = load_pixelrec(root / "Pixel1M.csv")
    assert data.root == root and data.interactions["user_id"].tolist() == ["u99"]


def _error(root: Path) -> DataFileError:
    with pytest.raises(DataFileError) as caught:
        load_pixelrec(root)
    return caught.value


def test_bad_timestamp_names_file_line_and_value(tmp_path):
    err = _error(write_pixelrec(tmp_path, interactions=INTERACTIONS + "i1,u7,yesterday\n"))
    assert err.line == 5 and "Pixel200K.csv:5" in str(err) and "'yesterday'" in str(err)


def test_unknown_item_and_duplicate_item(tmp_path):
    err = _error(write_pixelrec(tmp_path / "a", interactions=INTERACTIONS + "i404,u7,1640995300\n"))
    assert "Pixel200K.csv:5" in str(err) and "'i404'" in str(err) and "item_info.csv" in str(err)
    err = _error(write_pixelrec(tmp_path / "b", item_info=ITEM_INFO + "i2,1,1,1,1,1,1,1,Again,,\n"))
    assert "item_info.csv:5" in str(err) and "'i2'" in str(err) and "unique" in str(err)


def test_line_numbers_count_newlines_inside_quoted_descriptions(tmp_path):
    item_info = ITEM_INFO + 'i4,1,1,1,1,1,1,1,Multi,tag,"line one\nline two"\n,1,1,1,1,1,1,1,No id,,\n'
    err = _error(write_pixelrec(tmp_path, item_info=item_info))
    assert err.line == 7 and "item_info.csv:7" in str(err) and "non-empty id" in str(err)


def test_too_many_fields(tmp_path):
    err = _error(write_pixelrec(tmp_path, interactions=INTERACTIONS.replace("i3,u7,1640995300", "i3,u7,1,extra")))
    assert "Pixel200K.csv:4" in str(err) and "expected 3 fields" in str(err)


def test_skip_mode_drops_and_counts(tmp_path):
    interactions = INTERACTIONS + "i404,u7,1640995300\ni1,u8,someday\ni1,,5\ni2,u9,1640995400,extra\ni2,u9,7\n"
    item_info = ITEM_INFO + ",1,1,1,1,1,1,1,No id,,\n"
    data = load_pixelrec(write_pixelrec(tmp_path, interactions=interactions, item_info=item_info), on_bad_row="skip")
    assert data.skipped_rows == {"Pixel200K.csv": 4, "item_info.csv": 1}
    assert data.interactions["user_id"].tolist() == ["u10", "u10", "u7", "u9"]
    assert data.interactions["timestamp"].tolist()[-1] == 7


def test_missing_files_are_clear(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="item_id,user_id,timestamp"):
        load_pixelrec(tmp_path)
    (tmp_path / "Pixel200K.csv").write_text(INTERACTIONS)
    with pytest.raises(FileNotFoundError, match="item info CSV"):
        load_pixelrec(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pixelrec(tmp_path / "absent")


def test_missing_timestamp_column_is_a_header_error(tmp_path):
    err = _error(write_pixelrec(tmp_path, interactions="item_id,user_id\ni1,u1\n"))
    assert "Pixel200K.csv:1" in str(err) and "timestamp" in str(err)


def test_split_tags_and_timestamps():
    assert split_tags("a, b ，c；d、a|#e") == ["a", "b", "c", "d", "e"]
    assert split_tags("['x', 'y']") == ["x", "y"] and split_tags("") == []
    text = pd.Series(["0", "1640995200", "2022-01-01T01:00:00+01:00", "01/02/2022 00:00", "later", "1.5"], dtype=str)
    assert timestamp_seconds(text).tolist()[:4] == [0.0, 1640995200.0, 1640995200.0, 1641081600.0]
    assert timestamp_seconds(text)[4:].isna().all()
