"""MovieLens loader: every GroupLens layout into the one schema (docs/architecture.md §5, `schema.py`).

Layouts are recognised by their files, so the folder name does not matter:
- ml-100k: `u.data` (tab) + `u.item` (`|`, latin-1, 19 genre flags named by `u.genre` when present) [+ `u.user`];
- ml-1m (and ml-10m, same format): `ratings.dat` + `movies.dat` (`::`, latin-1) [+ `users.dat`];
- ml-latest, ml-latest-small, ml-25m, ml-32m: `ratings.csv` + `movies.csv` (UTF-8, quoted CSV with a header).

Ids become strings of the integer (so "007" and "7" are the same movie). Ratings are read as clicks: a rating
`>= positive_rating` is a click (clicked=True); a lower one stays a row with clicked=False (the user watched the
movie and did not like it). MovieLens does not log what users were shown and skipped, so the preference model
samples further negatives from the movies a user never rated (preference/data.py), as for PixelRec.
Genres are lists; "(no genres listed)" and ml-100k's "unknown" flag mean no genre. With `posters_dir`, an item's
`image_path` is `<posters_dir>/<item_id>.jpg|.jpeg|.png` relative to the dataset root when the posters folder lies
inside it, otherwise the poster's absolute path (both work with `RecDataset.image_file`); a relative `posters_dir`
is taken from the working directory, like any path argument. Without a users file, users are the ids seen in the
ratings, in numeric order.

The row parsing shared with other loaders (bad rows reported as file:line or skipped and counted) lives in
`tabular.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from icg_rl.data.schema import RecDataset
from icg_rl.data.tabular import (
    FileFormat,
    ParsedFile,
    Problems,
    id_strings,
    image_paths,
    parse_int,
    parse_number,
    read_file,
    read_typed,
    settle,
)

OnBadRow = Literal["error", "skip"]

# Which files mark which layout: (layout, ratings file, movies file, optional users file).
LAYOUTS = (
    ("ml-100k", "u.data", "u.item", "u.user"),
    ("ml-1m", "ratings.dat", "movies.dat", "users.dat"),
    ("ml-latest", "ratings.csv", "movies.csv", None),
)
ACCEPTED = (
    "ml-100k (u.data + u.item), ml-1m/ml-10m (ratings.dat + movies.dat), "
    "ml-latest/ml-latest-small/ml-25m/ml-32m (ratings.csv + movies.csv)"
)
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRE = {"(no genres listed)", "unknown", ""}

TAB = FileFormat(sep="\t", encoding="latin-1")
PIPE = FileFormat(sep="|", encoding="latin-1")
COLONS = FileFormat(sep="::", encoding="latin-1")
CSV = FileFormat(sep=",", encoding="utf-8", header=True, quoted=True)
RATINGS_FORMAT = {"ml-100k": TAB, "ml-1m": COLONS, "ml-latest": CSV}
# The ratings columns of each layout, named as the GroupLens READMEs (and the csv headers) name them, so error
# messages use the names the user sees in the documentation: (user, item, rating, timestamp).
RATING_COLUMNS = {
    "ml-100k": ["user id", "item id", "rating", "timestamp"],
    "ml-1m": ["UserID", "MovieID", "Rating", "Timestamp"],
    "ml-latest": ["userId", "movieId", "rating", "timestamp"],
}


@dataclass
class _Options:
    """The caller's choices, passed together through the per-layout readers."""

    positive_rating: float
    on_bad_row: OnBadRow
    skipped: dict[str, int] = field(default_factory=dict)


def load_movielens(
    path: str | Path,
    *,
    positive_rating: float = 4.0,
    on_bad_row: OnBadRow = "error",
    posters_dir: str | Path | None = None,
) -> RecDataset:
    """Load a MovieLens folder in any GroupLens layout into a `RecDataset` (see the module docstring).

    Bad rows (wrong field count, non-numeric id/rating/timestamp, rating outside 0.5..5, unknown movie or user,
    duplicate movie id) raise `DataFileError` naming file:line and the value when `on_bad_row="error"`; with
    "skip" they are dropped and counted in `skipped_rows[file name]`. A folder without a known layout raises
    `FileNotFoundError` saying what was found and what is accepted.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    root = Path(path)
    layout, ratings_name, movies_name, users_name = detect_layout(root)
    opts = _Options(positive_rating, on_bad_row)
    items = _read_movies(root / movies_name, layout, opts)
    # before the big ratings file: a wrong posters folder fails fast
    items["image_path"] = image_paths(items["item_id"], root, posters_dir, option="posters_dir (data.posters_dir)")
    users = _read_users(root / users_name, layout, opts) if users_name and (root / users_name).is_file() else None
    columns = RATING_COLUMNS[layout]
    typed = _typed_interactions(root / ratings_name, RATINGS_FORMAT[layout], columns, items, users, opts)
    if typed is not None:
        interactions, users = typed
    else:  # the text path: slower, and it names the bad row by file and line (or skips and counts it)
        ratings = read_file(root / ratings_name, RATINGS_FORMAT[layout], columns, on_bad_row, opts.skipped)
        interactions = _interactions(ratings, columns, items, users, opts)
        if users is None:
            users = _users_seen(interactions)
    return RecDataset("movielens", root, items, users, interactions, opts.skipped)


def detect_layout(root: Path) -> tuple[str, str, str, str | None]:
    """Which GroupLens layout `root` holds, by its files; FileNotFoundError that says what is there otherwise."""
    if not root.is_dir():
        raise FileNotFoundError(f"MovieLens folder {root} does not exist or is not a folder; accepted: {ACCEPTED}")
    names = {p.name for p in root.iterdir()}
    for layout in LAYOUTS:
        if set(layout[1:3]) <= names:
            return layout
    found = ", ".join(sorted(names)[:20]) + (", ..." if len(names) > 20 else "") if names else "nothing"
    hint = [p.name for p in root.iterdir() if p.is_dir() and any(set(lay[1:3]) <= _names(p) for lay in LAYOUTS)]
    where = f"; the subfolder(s) {hint} hold one: pass that folder instead" if hint else ""
    raise FileNotFoundError(f"no MovieLens layout in {root}: found {found}; accepted layouts: {ACCEPTED}{where}")


def _names(folder: Path) -> set[str]:
    """The file names in `folder`."""
    return {p.name for p in folder.iterdir()}


def _read_movies(path: Path, layout: str, opts: _Options) -> pd.DataFrame:
    """The items table (item_id, title, genres) from u.item / movies.dat / movies.csv, bad rows settled."""
    if layout == "ml-100k":
        genre_names = _ml100k_genres(path.parent / "u.genre", opts)
        flag_columns = [f"genre {name}" for name in genre_names]
        names = ["movie id", "movie title", "release date", "video release date", "IMDb URL", *flag_columns]
        parsed = read_file(path, _sniffed(path, PIPE), names, opts.on_bad_row, opts.skipped)
        id_col, title_col = "movie id", "movie title"
    else:
        names = ["MovieID", "Title", "Genres"] if layout == "ml-1m" else ["movieId", "title", "genres"]
        fmt = _sniffed(path, COLONS) if layout == "ml-1m" else CSV
        parsed = read_file(path, fmt, names, opts.on_bad_row, opts.skipped)
        id_col, title_col = names[0], names[1]
    frame, problems = parsed.frame, Problems(parsed)
    ids = parse_int(frame[id_col])
    problems.need(id_col, ids.notna(), "a whole number")
    problems.need(id_col, ~ids.duplicated() | ids.isna(), "unique (this movie id appeared on an earlier line)")
    if layout == "ml-100k":
        flags = frame[flag_columns]
        for column in flag_columns:
            problems.need(column, flags[column].isin(["0", "1"]), "0 or 1")
    else:
        # The genres field is never empty in the GroupLens files, so an empty one means the row lost its last field.
        problems.need(names[2], frame[names[2]].str.strip() != "", "a |-separated genre list (it is empty)")
    keep = settle(parsed, problems, opts.on_bad_row, opts.skipped)
    frame, ids = frame[keep], ids[keep]
    if layout == "ml-100k":
        genres = _genres_from_flags(frame[flag_columns].to_numpy() == "1", genre_names)
    else:
        genres = [_split_genres(text) for text in frame[names[2]]]
    return pd.DataFrame({
        "item_id": id_strings(ids).to_numpy(),
        "title": frame[title_col].str.strip().to_numpy(),
        "genres": pd.Series(genres, dtype=object).to_numpy(),
    })  # fmt: skip


def _sniffed(path: Path, fmt: FileFormat) -> FileFormat:
    """`fmt` with UTF-8 when the (small) movies file decodes as UTF-8, else latin-1 as GroupLens documents.

    ml-100k/ml-1m write titles in latin-1, but re-saved copies and some later `.dat` releases are UTF-8; accented
    latin-1 text is almost never valid UTF-8, so a successful decode tells them apart without mangling either.
    """
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return fmt
    return replace(fmt, encoding="utf-8")


def _ml100k_genres(path: Path, opts: _Options) -> list[str]:
    """Genre names in flag order: from u.genre (`name|index`) when present, else the documented default."""
    if not path.is_file():
        return list(ML100K_GENRES)
    parsed = read_file(path, PIPE, ["genre", "index"], "error", opts.skipped)
    problems = Problems(parsed)
    index = parse_int(parsed.frame["index"])
    problems.need("index", index.notna(), "a whole number")
    settle(parsed, problems, "error", opts.skipped)
    order = np.argsort(index.to_numpy(), kind="stable")
    return [str(name).strip() for name in parsed.frame["genre"].to_numpy()[order]]


def _genres_from_flags(flags: np.ndarray, names: list[str]) -> list[list[str]]:
    """One genre list per u.item row from its 0/1 flag columns (the "unknown" flag means no genre)."""
    labels = np.array(names, dtype=object)
    return [[g for g in labels[row] if g not in NO_GENRE] for row in flags]


def _split_genres(text: str) -> list[str]:
    """A `|`-separated genres field as a list ("(no genres listed)" -> [])."""
    return [g for g in (part.strip() for part in text.split("|")) if g not in NO_GENRE]


def _read_users(path: Path, layout: str, opts: _Options) -> pd.DataFrame:
    """The users table from u.user or users.dat, with age (int), gender, occupation and zip code kept."""
    if layout == "ml-100k":
        names, fmt = ["user id", "age", "gender", "occupation", "zip code"], PIPE
    else:
        names, fmt = ["UserID", "Gender", "Age", "Occupation", "Zip-code"], COLONS
    parsed = read_file(path, _sniffed(path, fmt), names, opts.on_bad_row, opts.skipped)
    frame, problems = parsed.frame, Problems(parsed)
    user_col, age_col = names[0], ("age" if layout == "ml-100k" else "Age")
    ids, ages = parse_int(frame[user_col]), parse_int(frame[age_col])
    problems.need(user_col, ids.notna(), "a whole number")
    problems.need(user_col, ~ids.duplicated() | ids.isna(), "unique (this user id appeared on an earlier line)")
    problems.need(age_col, ages.notna(), "a whole number")
    keep = settle(parsed, problems, opts.on_bad_row, opts.skipped)
    frame = frame[keep]
    gender_col, occupation_col, zip_col = names[2:5] if layout == "ml-100k" else [names[1], names[3], names[4]]
    return pd.DataFrame({
        "user_id": id_strings(ids[keep]).to_numpy(),
        "age": ages[keep].astype("int64").to_numpy(),
        "gender": frame[gender_col].to_numpy(),
        "occupation": frame[occupation_col].to_numpy(),
        "zip_code": frame[zip_col].to_numpy(),
    })  # fmt: skip


def _interactions(
    ratings: ParsedFile, columns: list[str], items: pd.DataFrame, users: pd.DataFrame | None, opts: _Options
) -> pd.DataFrame:
    """Validate the ratings rows and turn them into the interactions table; unknown movies/users are bad rows."""
    user_col, item_col, rating_col, time_col = columns
    frame, problems = ratings.frame, Problems(ratings)
    user_num, item_num = parse_int(frame[user_col]), parse_int(frame[item_col])
    rating = parse_number(frame[rating_col])
    stamp = parse_int(frame[time_col])
    problems.need(user_col, user_num.notna(), "a whole number")
    problems.need(item_col, item_num.notna(), "a whole number")
    problems.need(rating_col, rating.between(0.5, 5.0), "a number in 0.5..5")
    problems.need(time_col, stamp.notna(), "a whole number of seconds")
    keep = settle(ratings, problems, opts.on_bad_row, opts.skipped)
    user_id, item_id = id_strings(user_num[keep]), id_strings(item_num[keep])
    # Second pass on the rows that parsed: references to movies/users the other files do not list.
    problems = Problems(ratings)
    movies_file = _sibling_name(ratings, "movies")
    problems.need(item_col, item_id.isin(items["item_id"]), f"a movie listed in {movies_file}")
    if users is not None:
        problems.need(user_col, user_id.isin(users["user_id"]), f"a user listed in {_sibling_name(ratings, 'users')}")
    known = settle(ratings, problems, opts.on_bad_row, opts.skipped).reindex(user_id.index)
    rating, stamp = rating[keep][known], stamp[keep][known]
    return pd.DataFrame({
        "user_id": user_id[known].to_numpy(),
        "item_id": item_id[known].to_numpy(),
        "timestamp": stamp.astype("int64").to_numpy(),
        "clicked": (rating >= opts.positive_rating).to_numpy(),
        "rating": rating.to_numpy(),
        "variant_id": np.full(len(rating), None, dtype=object),
    })  # fmt: skip


def _typed_interactions(path: Path, fmt: FileFormat, columns: list[str], items: pd.DataFrame,
                        users: pd.DataFrame | None, opts: _Options) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(interactions, users) from the typed fast path (`read_typed`), ids dictionary-encoded against the movies
    and users tables without a string per row; None when any row would be a bad row (the text path then reports
    or skips it)."""
    import pyarrow as pa

    user_col, item_col, rating_col, time_col = columns
    table = read_typed(path, fmt, {user_col: pa.int64(), item_col: pa.int64(), rating_col: pa.float64(),
                                   time_col: pa.int64()})
    if table is None:
        return None
    rating = table.column(rating_col).to_numpy()
    if not ((rating >= 0.5) & (rating <= 5.0)).all():
        return None
    item = _codes_of(table.column(item_col).to_numpy(), items["item_id"].to_numpy().astype(np.int64))
    if item is None:  # a movie the movies file does not list
        return None
    user_num = table.column(user_col).to_numpy()
    if users is None:
        user_ids, user = np.unique(user_num, return_inverse=True)
        users = pd.DataFrame({"user_id": user_ids.astype(str)})
    else:
        user = _codes_of(user_num, users["user_id"].to_numpy().astype(np.int64))
        if user is None:
            return None
    timestamp = table.column(time_col).to_numpy()
    del table
    interactions = pd.DataFrame({
        "user_id": pd.Categorical.from_codes(user.astype(np.int32), categories=pd.Index(users["user_id"],
                                                                                        dtype=object)),
        "item_id": pd.Categorical.from_codes(item, categories=pd.Index(items["item_id"], dtype=object)),
        "timestamp": timestamp, "clicked": rating >= opts.positive_rating, "rating": rating,
        "variant_id": np.full(len(rating), None, dtype=object),
    })  # fmt: skip
    return interactions, users


def _codes_of(values: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
    """Rows of `ids` (unique integers, any order) holding each value, as int32; None if any value is not in `ids`."""
    order = np.argsort(ids, kind="stable")
    at = np.minimum(np.searchsorted(ids[order], values), len(ids) - 1) if len(ids) else np.zeros(len(values), int)
    if not len(ids) or not (ids[order][at] == values).all():
        return None
    return order[at].astype(np.int32)


def _users_seen(interactions: pd.DataFrame) -> pd.DataFrame:
    """The users table when there is no users file: the ids seen, in numeric order (sorting ints, not strings,
    which is several times faster on ml-25m than `users_from_interactions`)."""
    ids = np.unique(interactions["user_id"].unique().astype("int64"))
    return pd.DataFrame({"user_id": ids.astype(str)})


def _sibling_name(ratings: ParsedFile, what: str) -> str:
    """The name of the movies/users file next to a ratings file, for messages."""
    name = ratings.path.name
    if name == "u.data":
        return {"movies": "u.item", "users": "u.user"}[what]
    return what + ratings.path.suffix
