"""MovieLens loader: each GroupLens layout, written here as small files, loads into the exact schema values; bad
rows are reported as file:line with the bad value, or skipped and counted."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icg_rl.data.movielens import ML100K_GENRES, load_movielens
from icg_rl.data.schema import INTERACTION_COLUMNS, ITEM_COLUMNS, DataFileError


def _flags(*genres: str, names: tuple[str, ...] = ML100K_GENRES) -> str:
    return "|".join("1" if name in genres else "0" for name in names)


def write_ml100k(root: Path, *, genre_names: tuple[str, ...] = ML100K_GENRES, ratings: str | None = None) -> Path:
    """An ml-100k folder: u.data (tab), u.item and u.genre (`|`, latin-1), u.user."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.data").write_text(ratings or "1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250951\n")
    toy_story = _flags("Animation", "Children's", "Comedy")
    items = [
        f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{toy_story}",
        f"2|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/Les|{_flags('Drama', 'Musical')}",
        f"3|unknown||||{_flags('unknown')}",
    ]
    (root / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    (root / "u.genre").write_text("".join(f"{name}|{i}\n" for i, name in enumerate(genre_names)) + "\n")
    (root / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return root


def write_ml1m(root: Path, *, ratings: str | None = None) -> Path:
    """An ml-1m folder: ratings.dat, movies.dat (latin-1), users.dat, all `::`-separated."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.dat").write_text(ratings or "1::1193::5::978300760\n1::2::3::978302109\n2::1193::4::978298413\n")
    movies = "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n2::Misérables, Les (1995)::Drama|Musical\n"
    (root / "movies.dat").write_bytes(movies.encode("latin-1"))
    (root / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    return root


LATEST_MOVIES = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '2,"American President, The (1995)",Comedy|Drama|Romance\n'
    '3,"Quote ""Unquote"", Part 2 (2000)",(no genres listed)\n'
)
LATEST_RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,0.5,964981247\n7,2,3.5,964982224\n"


def write_latest(root: Path, *, ratings: str = LATEST_RATINGS, movies: str = LATEST_MOVIES) -> Path:
    """An ml-latest-small folder: ratings.csv and movies.csv with headers, quoted titles, no users file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.csv").write_text(ratings, encoding="utf-8")
    (root / "movies.csv").write_text(movies, encoding="utf-8")
    return root


def _dtypes(frame: pd.DataFrame, columns: dict[str, str]) -> dict[str, str]:
    return {column: str(frame[column].dtype) for column in columns}


def test_ml100k_loads_exact_values(tmp_path):
    data = load_movielens(write_ml100k(tmp_path / "ml-100k"))
    assert data.kind == "movielens" and data.root == tmp_path / "ml-100k" and data.skipped_rows == {}
    assert data.items["item_id"].tolist() == ["1", "2", "3"]
    assert data.items["title"].tolist() == ["Toy Story (1995)", "Misérables, Les (1995)", "unknown"]
    assert data.items["genres"].tolist() == [["Animation", "Children's", "Comedy"], ["Drama", "Musical"], []]
    assert data.items["image_path"].tolist() == [None, None, None]
    inter = data.interactions
    assert inter["user_id"].tolist() == ["1", "1", "2"] and inter["item_id"].tolist() == ["1", "2", "1"]
    assert inter["timestamp"].tolist() == [881250949, 881250950, 881250951]
    assert inter["rating"].tolist() == [5.0, 3.0, 4.0]
    assert inter["clicked"].tolist() == [True, False, True]  # rating >= 4.0
    assert inter["variant_id"].tolist() == [None, None, None]
    assert data.users["user_id"].tolist() == ["1", "2"]
    assert data.users["age"].tolist() == [24, 53] and data.users["occupation"].tolist() == ["technician", "other"]
    assert data.users["gender"].tolist() == ["M", "F"] and data.users["zip_code"].tolist() == ["85711", "94043"]


def test_ml100k_genre_names_come_from_u_genre(tmp_path):
    renamed = tuple("Kids" if name == "Children's" else name for name in ML100K_GENRES)
    data = load_movielens(write_ml100k(tmp_path, genre_names=renamed))
    assert data.items["genres"].iloc[0] == ["Animation", "Kids", "Comedy"]


def test_ml1m_loads_exact_values(tmp_path):
    data = load_movielens(write_ml1m(tmp_path), positive_rating=5.0)
    assert data.items["item_id"].tolist() == ["1193", "2"]
    assert data.items["title"].tolist() == ["One Flew Over the Cuckoo's Nest (1975)", "Misérables, Les (1995)"]
    assert data.items["genres"].tolist() == [["Drama"], ["Drama", "Musical"]]
    inter = data.interactions
    assert inter["item_id"].tolist() == ["1193", "2", "1193"] and inter["user_id"].tolist() == ["1", "1", "2"]
    assert inter["timestamp"].tolist() == [978300760, 978302109, 978298413]
    assert inter["clicked"].tolist() == [True, False, False]  # threshold 5.0
    assert data.users.to_dict("list") == {
        "user_id": ["1", "2"], "age": [1, 56], "gender": ["F", "M"], "occupation": ["10", "16"],
        "zip_code": ["48067", "70072"],
    }  # fmt: skip


def test_utf8_dat_files_are_recognised(tmp_path):
    root = write_ml1m(tmp_path)
    (root / "movies.dat").write_text("1193::Cuckoo (1975)::Drama\n2::Misérables, Les (1995)::Drama|Musical\n")
    assert load_movielens(root).items["title"].tolist() == ["Cuckoo (1975)", "Misérables, Les (1995)"]


def test_ml_latest_loads_quoted_titles_and_empty_genres(tmp_path):
    data = load_movielens(write_latest(tmp_path), positive_rating=3.5)
    assert data.items["title"].tolist() == [
        "Toy Story (1995)", "American President, The (1995)", 'Quote "Unquote", Part 2 (2000)',
    ]  # fmt: skip
    assert data.items["genres"].tolist() == [
        ["Adventure", "Animation", "Children", "Comedy", "Fantasy"], ["Comedy", "Drama", "Romance"], [],
    ]  # fmt: skip
    inter = data.interactions
    assert inter["rating"].tolist() == [4.0, 0.5, 3.5]
    assert inter["clicked"].tolist() == [True, False, True]
    assert data.users["user_id"].tolist() == ["1", "7"]  # no users file: from the interactions
    assert list(data.users.columns) == ["user_id"]


def test_all_layouts_share_the_schema(tmp_path):
    loaded = [
        load_movielens(write_ml100k(tmp_path / "a")),
        load_movielens(write_ml1m(tmp_path / "b")),
        load_movielens(write_latest(tmp_path / "c")),
    ]
    first = loaded[0]
    for data in loaded:
        assert list(data.items.columns[:4]) == list(ITEM_COLUMNS)
        assert list(data.interactions.columns) == list(INTERACTION_COLUMNS)
        assert _dtypes(data.items, ITEM_COLUMNS) == _dtypes(first.items, ITEM_COLUMNS)
        assert _dtypes(data.interactions, INTERACTION_COLUMNS) == _dtypes(first.interactions, INTERACTION_COLUMNS)
        assert str(data.users["user_id"].dtype) == str(first.users["user_id"].dtype)
        assert data.interactions["timestamp"].dtype == np.int64 and data.interactions["clicked"].dtype == bool
        assert data.interactions["rating"].dtype == np.float64
        assert pd.api.types.is_string_dtype(data.items["item_id"])
        assert all(isinstance(g, list) for g in data.items["genres"])


def test_posters_inside_root_are_relative_outside_absolute(tmp_path):
    root = write_latest(tmp_path / "ml")
    (root / "posters").mkdir()
    (root / "posters" / "1.jpg").write_bytes(b"jpg")
    (root / "posters" / "1.png").write_bytes(b"png")  # .jpg is preferred
    (root / "posters" / "3.PNG").write_bytes(b"png")
    (root / "posters" / "99.jpg").write_bytes(b"no such movie")
    data = load_movielens(root, posters_dir=root / "posters")
    assert data.items["image_path"].tolist() == ["posters/1.jpg", None, "posters/3.PNG"]
    assert data.image_file("1") == root / "posters" / "1.jpg" and data.image_file("2") is None
    elsewhere = tmp_path / "posters"
    elsewhere.mkdir()
    (elsewhere / "2.jpeg").write_bytes(b"jpeg")
    data = load_movielens(root, posters_dir=elsewhere)
    assert data.items["image_path"].tolist() == [None, str((elsewhere / "2.jpeg").resolve()), None]
    assert data.image_file("2").read_bytes() == b"jpeg"


def test_missing_posters_dir_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_movielens(write_latest(tmp_path), posters_dir=tmp_path / "nowhere")


def _error(tmp_path_root: Path, **kwargs) -> DataFileError:
    with pytest.raises(DataFileError) as caught:
        load_movielens(tmp_path_root, **kwargs)
    return caught.value


def test_non_numeric_rating_names_file_line_and_value(tmp_path):
    err = _error(write_ml100k(tmp_path, ratings="1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\tx\t881250951\n"))
    assert err.line == 3 and err.path.endswith("u.data")
    assert "u.data:3" in str(err) and "'x'" in str(err) and "0.5..5" in str(err)


def test_rating_out_of_range_counts_the_header_line(tmp_path):
    ratings = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,7,964981247\n"
    err = _error(write_latest(tmp_path, ratings=ratings))
    assert err.line == 3 and "ratings.csv:3" in str(err) and "'7'" in str(err)


def test_line_numbers_count_blank_lines_and_newlines_inside_quotes(tmp_path):
    movies = LATEST_MOVIES + '4,"Two\nLines (2001)",Drama\n\nx5,Bad Id (2002),Drama\n'
    err = _error(write_latest(tmp_path, movies=movies))
    assert err.line == 8 and "movies.csv:8" in str(err) and "'x5'" in str(err)


def test_too_many_and_too_few_fields(tmp_path):
    err = _error(write_ml1m(tmp_path / "a", ratings="1::1193::5::978300760\n1::2::3::978302109::9\n"))
    assert "ratings.dat:2" in str(err) and "expected 4 fields" in str(err) and "found 5" in str(err)
    assert "1::2::3::978302109::9" in str(err)
    err = _error(write_ml100k(tmp_path / "b", ratings="1\t1\t5\t881250949\n1\t2\t3\n"))
    assert "u.data:2" in str(err) and "found 3" in str(err)


def test_too_many_fields_on_the_first_line(tmp_path):
    # pandas sizes the table from the first row; a long first row must still be a bad row, not a wider table.
    err = _error(write_ml100k(tmp_path / "a", ratings="1\t1\t5\t881250949\t7\t8\n1\t2\t3\t881250950\n"))
    assert "u.data:1" in str(err) and "found 6" in str(err)
    ratings = "userId,movieId,rating,timestamp\n1,1,4.0,964982703,1\n1,3,0.5,964981247\n"
    err = _error(write_latest(tmp_path / "b", ratings=ratings))
    assert "ratings.csv:2" in str(err) and "found 5" in str(err)
    data = load_movielens(write_latest(tmp_path / "c", ratings=ratings), on_bad_row="skip")
    assert data.skipped_rows == {"ratings.csv": 1} and data.interactions["item_id"].tolist() == ["3"]


def test_empty_files(tmp_path):
    data = load_movielens(write_latest(tmp_path / "a", ratings="userId,movieId,rating,timestamp\n"))
    assert len(data.interactions) == 0 and len(data.users) == 0 and len(data.items) == 3
    err = _error(write_latest(tmp_path / "b", ratings=""))
    assert "ratings.csv:1" in str(err) and "empty" in str(err)
    err = _error(write_latest(tmp_path / "c", ratings="user,movie,rating,timestamp\n1,1,4.0,1\n"))
    assert "ratings.csv:1" in str(err) and "userId" in str(err)
    root = write_ml1m(tmp_path / "d")
    (root / "ratings.dat").write_text("")
    assert len(load_movielens(root).interactions) == 0


def test_non_numeric_timestamp_and_id(tmp_path):
    err = _error(write_latest(tmp_path / "a", ratings="userId,movieId,rating,timestamp\n1,1,4.0,yesterday\n"))
    assert "ratings.csv:2" in str(err) and "'yesterday'" in str(err)
    err = _error(write_latest(tmp_path / "b", ratings="userId,movieId,rating,timestamp\nu1,1,4.0,964982703\n"))
    assert "ratings.csv:2" in str(err) and "'u1'" in str(err) and "userId" in str(err)


def test_unknown_movie_and_unknown_user(tmp_path):
    ratings = LATEST_RATINGS + "1,99,4.0,964982703\n"
    err = _error(write_latest(tmp_path / "a", ratings=ratings))
    assert "ratings.csv:5" in str(err) and "'99'" in str(err) and "movies.csv" in str(err)
    err = _error(write_ml1m(tmp_path / "b", ratings="1::1193::5::978300760\n3::2::3::978302109\n"))
    assert "ratings.dat:2" in str(err) and "'3'" in str(err) and "users.dat" in str(err)


def test_duplicate_movie_id(tmp_path):
    err = _error(write_latest(tmp_path, movies=LATEST_MOVIES + "2,Again (1999),Drama\n"))
    assert "movies.csv:5" in str(err) and "'2'" in str(err) and "unique" in str(err)


def test_bad_genre_flag_in_u_item(tmp_path):
    root = write_ml100k(tmp_path)
    text = (root / "u.item").read_bytes().decode("latin-1").replace("|unknown||||1|", "|unknown||||yes|")
    (root / "u.item").write_bytes(text.encode("latin-1"))
    err = _error(root)
    assert "u.item:3" in str(err) and "'yes'" in str(err) and "0 or 1" in str(err)


def test_skip_mode_drops_and_counts(tmp_path):
    ratings = (
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n"
        "1,2,9,964982703\n"  # rating out of range
        "1,2,4.0,964982703,extra\n"  # too many fields
        "1,99,4.0,964982703\n"  # unknown movie
        "2,2,2.0,964982704\n"
    )
    movies = LATEST_MOVIES + "x,Bad (2000),Drama\n"
    data = load_movielens(write_latest(tmp_path, ratings=ratings, movies=movies), on_bad_row="skip")
    assert data.skipped_rows == {"ratings.csv": 3, "movies.csv": 1}
    assert data.interactions[["user_id", "item_id"]].values.tolist() == [["1", "1"], ["2", "2"]]
    assert data.interactions["clicked"].tolist() == [True, False]
    assert data.items["item_id"].tolist() == ["1", "2", "3"]


def test_skip_mode_unknown_user_in_ml1m(tmp_path):
    data = load_movielens(
        write_ml1m(tmp_path, ratings="1::1193::5::978300760\n3::2::3::978302109\n1::2::bad::1\n"), on_bad_row="skip"
    )
    assert data.skipped_rows == {"ratings.dat": 2}
    assert data.interactions["user_id"].tolist() == ["1"]


def test_no_layout_is_a_clear_file_not_found(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(FileNotFoundError) as caught:
        load_movielens(tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message and "readme.txt" in message
    assert "u.data" in message and "ratings.dat" in message and "ratings.csv" in message


def test_layout_in_a_subfolder_is_suggested(tmp_path):
    write_ml100k(tmp_path / "ml-100k")
    with pytest.raises(FileNotFoundError, match="ml-100k"):
        load_movielens(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_movielens(tmp_path / "absent")


def test_invalid_utf8_names_the_line(tmp_path):
    root = write_latest(tmp_path)
    (root / "movies.csv").write_bytes(LATEST_MOVIES.encode() + b"4,Caf\xe9 (2001),Drama\n")
    err = _error(root)
    assert "movies.csv:5" in str(err) and "utf-8" in str(err)


def test_bad_on_bad_row_value(tmp_path):
    with pytest.raises(ValueError, match="on_bad_row"):
        load_movielens(write_latest(tmp_path), on_bad_row="ignore")  # type: ignore[arg-type]


def test_ratings_are_exact_floats(tmp_path):
    data = load_movielens(write_latest(tmp_path))
    assert all(not math.isnan(r) for r in data.interactions["rating"])
