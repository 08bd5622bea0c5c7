"""PixelRec loader: the Pixel200K / Pixel1M / Pixel8M / PixelRec releases into the one schema (docs/architecture.md §5).

The public release (github.com/westlake-repl/PixelRec) ships
- an interactions CSV named after the dataset (`Pixel200K.csv`, ...) with columns `item_id,user_id,timestamp`;
- an item info CSV (`item_info.csv` for Pixel200K; per-dataset files in `pixelrec_iteminfo/`) with `item_id`,
  view/comment/thumbup/share/coin/favorite/barrage counts, `title` (and `title_en` in some versions), `tag`,
  `description`;
- cover images `<item_id>.jpg` in `images/` (the Pixel200K integrated folder) or `cover/` (the full release).
Ids look like "i123" / "u456" and are kept as written (stripped of spaces).

Files are found by their columns, not their names: the interactions CSV is the one with `user_id` and `item_id`
columns, the item info CSV the one with `item_id` and `title`/`title_en` (and no `user_id`); both are searched in
the folder and its direct subfolders. Pass the interactions CSV itself as `path` when a folder holds several.

Every interaction is a click (clicked=True, rating NaN). Timestamps may be whole numbers (seconds; values of
1e11 or more are taken as milliseconds, which seconds cannot be before the year 5000) or date-time strings such
as "2022-01-01 12:00:00" (read as UTC unless they carry an offset). Genres come from `tag`, split on , ， ; ； | 、.
Extra item info columns are kept as strings. Users come from the interactions (the release has no users file).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from icg_rl.data.schema import DataFileError, RecDataset, users_from_interactions
from icg_rl.data.tabular import (
    FileFormat,
    ParsedFile,
    Problems,
    image_paths,
    parse_int,
    read_file,
    read_typed,
    settle,
)

OnBadRow = Literal["error", "skip"]

CSV = FileFormat(sep=",", encoding="utf-8-sig", header=True, quoted=True)  # utf-8-sig: tolerate a BOM
IMAGE_FOLDERS = ("images", "cover", "covers", "image")  # first folder holding an item's image wins
TAG_SEPARATORS = re.compile(r"[,，;；|、]")
TAG_STRIP = " \t'\"[]#"  # list-literal quotes/brackets and hashtag marks around a tag
MILLISECONDS_FROM = 1e11  # a timestamp this large is in milliseconds (as seconds it would be after year 5000)
EPOCH = pd.Timestamp(0, tz="UTC")
TITLES = {"title", "title_en"}
LAYOUT = (
    "a PixelRec folder: an interactions CSV with columns item_id,user_id,timestamp (e.g. Pixel200K.csv), an item "
    "info CSV with item_id,title (e.g. item_info.csv) and images/<item_id>.jpg"
)


def load_pixelrec(path: str | Path, *, on_bad_row: OnBadRow = "error") -> RecDataset:
    """Load a PixelRec folder (or its interactions CSV) into a `RecDataset` (see the module docstring).

    Bad rows (missing id, unparseable timestamp, duplicate item id, interaction naming an item the item info
    lacks) raise `DataFileError` naming file:line and the value when `on_bad_row="error"`; with "skip" they are
    dropped and counted in `skipped_rows[file name]`. Missing files raise `FileNotFoundError` saying what was
    found and what is expected.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    root, interactions_csv, item_csv = locate_files(Path(path))
    skipped: dict[str, int] = {}
    items = _read_items(item_csv, root, on_bad_row, skipped)
    typed = _typed_interactions(interactions_csv, items)
    if typed is not None:
        interactions, users = typed
    else:  # the text path: slower, and it names a bad row by file and line (or skips and counts it)
        interactions = _read_interactions(interactions_csv, items, item_csv.name, on_bad_row, skipped)
        users = users_from_interactions(interactions)
    return RecDataset("pixelrec", root, items, users, interactions, skipped)


def locate_files(path: Path) -> tuple[Path, Path, Path]:
    """(dataset root, interactions CSV, item info CSV), recognised by their header columns."""
    if path.is_file():
        root, chosen = path.parent, path
    elif path.is_dir():
        root, chosen = path, None
    else:
        raise FileNotFoundError(f"PixelRec path {path} does not exist; expected {LAYOUT}")
    headers = {csv_path: _header(csv_path) for csv_path in _csv_files(root)}
    if chosen is not None and not {"user_id", "item_id"} <= headers.get(chosen, _header(chosen)):
        raise DataFileError(chosen, 1, "is not a PixelRec interactions CSV: its header lacks user_id and item_id")
    interactions = [p for p, cols in headers.items() if {"user_id", "item_id"} <= cols]
    items = [p for p, cols in headers.items() if "item_id" in cols and "user_id" not in cols and cols & TITLES]
    if chosen is None:
        what, hint = "interactions CSV (columns item_id,user_id,timestamp)", "pass the one to load as `path`"
        chosen = _pick(interactions, root, what, hint, headers)
    what, hint = "item info CSV (columns item_id,title)", f"name the right one {chosen.stem}_items.csv"
    item_csv = _pick(_prefer_matching(items, chosen), root, what, hint, headers)
    return root, chosen, item_csv


def _csv_files(root: Path) -> list[Path]:
    """CSV files in `root` and its direct subfolders (image folders and hidden ones skipped), sorted."""
    folders = [root] + sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in IMAGE_FOLDERS
    )
    return [p for folder in folders for p in sorted(folder.glob("*.csv")) if p.is_file()]


def _header(path: Path) -> set[str]:
    """The lower-cased column names on a CSV's first line (empty set if it cannot be read as text)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as stream:
            first = next(csv.reader(stream), [])
    except OSError:
        return set()
    return {name.strip().lower() for name in first}


def _prefer_matching(items: list[Path], interactions: Path) -> list[Path]:
    """Among several item info CSVs, those named after the interactions file (Pixel1M.csv -> Pixel1M_items.csv)."""
    stem = interactions.stem.lower()
    matching = [p for p in items if p.stem.lower().startswith(stem)]
    return matching or items


def _pick(candidates: list[Path], root: Path, what: str, hint: str, headers: dict[Path, set[str]]) -> Path:
    """The one candidate file (a lone top-level one wins over subfolders); FileNotFoundError if none, ValueError
    with `hint` if several."""
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        found = ", ".join(f"{p.relative_to(root)} {sorted(c)}" for p, c in headers.items()) or "no CSV files"
        raise FileNotFoundError(f"no PixelRec {what} in {root} (or its subfolders): found {found}; expected {LAYOUT}")
    top = [p for p in candidates if p.parent == root]
    if len(top) == 1:
        return top[0]
    names = ", ".join(str(p.relative_to(root)) for p in candidates)
    raise ValueError(f"several PixelRec {what}s in {root}: {names}; {hint}")


def _read_items(path: Path, root: Path, on_bad_row: OnBadRow, skipped: dict[str, int]) -> pd.DataFrame:
    """The items table: ids, title (title_en when there is no title), genres from tags, cover image paths."""
    parsed = _read_lowercase(path, on_bad_row, skipped)
    frame, problems = parsed.frame, Problems(parsed)
    ids = frame["item_id"].str.strip()
    problems.need("item_id", ids != "", "a non-empty id")
    problems.need("item_id", ~ids.duplicated() | (ids == ""), "unique (this item id appeared on an earlier line)")
    keep = settle(parsed, problems, on_bad_row, skipped)
    frame, ids = frame[keep], ids[keep]
    title = frame["title"] if "title" in frame.columns else frame["title_en"]
    tags = frame["tag"] if "tag" in frame.columns else pd.Series("", index=frame.index)
    items = pd.DataFrame({
        "item_id": ids.to_numpy(),
        "title": title.str.strip().to_numpy(),
        "genres": pd.Series([split_tags(t) for t in tags], dtype=object).to_numpy(),
    })  # fmt: skip
    items["image_path"] = _cover_paths(items["item_id"], root)
    extra = [c for c in frame.columns if c not in ("item_id", "title", "genres", "image_path")]
    for column in extra:
        items[column] = frame[column].to_numpy()
    return items


def split_tags(text: str) -> list[str]:
    """Tags of one item as a list: split on common separators, stripped, empty and repeated ones dropped."""
    tags = (part.strip(TAG_STRIP) for part in TAG_SEPARATORS.split(text))
    return list(dict.fromkeys(tag for tag in tags if tag))


def _cover_paths(item_ids: pd.Series, root: Path) -> list[str | None]:
    """Each item's cover image relative to root, from the first image folder that has it (None if none does)."""
    paths: list[str | None] = [None] * len(item_ids)
    for folder in IMAGE_FOLDERS:
        if (root / folder).is_dir():
            found = image_paths(item_ids, root, root / folder)
            paths = [old if old is not None else new for old, new in zip(paths, found)]
    return paths


def _read_interactions(
    path: Path, items: pd.DataFrame, items_file: str, on_bad_row: OnBadRow, skipped: dict[str, int]
) -> pd.DataFrame:
    """The interactions table: every row a click, timestamps in seconds, rows naming unknown items settled."""
    parsed = _read_lowercase(path, on_bad_row, skipped, required=["item_id", "user_id", "timestamp"])
    frame, problems = parsed.frame, Problems(parsed)
    user_id, item_id = frame["user_id"].str.strip(), frame["item_id"].str.strip()
    seconds = timestamp_seconds(frame["timestamp"])
    problems.need("user_id", user_id != "", "a non-empty id")
    problems.need("item_id", item_id != "", "a non-empty id")
    problems.need("timestamp", seconds.notna(), "a whole number or a date-time like '2022-01-01 12:00:00'")
    problems.need("item_id", item_id.isin(items["item_id"]) | (item_id == ""), f"an item listed in {items_file}")
    keep = settle(parsed, problems, on_bad_row, skipped)
    count = int(keep.sum())
    return pd.DataFrame({
        "user_id": user_id[keep].to_numpy(),
        "item_id": item_id[keep].to_numpy(),
        "timestamp": seconds[keep].astype("int64").to_numpy(),
        "clicked": np.ones(count, dtype=bool),
        "rating": np.full(count, np.nan),
        "variant_id": np.full(count, None, dtype=object),
    })  # fmt: skip


def _typed_interactions(path: Path, items: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(interactions, users) from the typed fast path (`read_typed`: ids read dictionary-encoded, whole-number
    timestamps), without a string per row; None when the file needs the text path (date-time timestamps, ids
    padded with spaces or empty, an item the item info lacks, any malformed row)."""
    import pyarrow as pa

    ids = pa.dictionary(pa.int32(), pa.string())
    table = read_typed(path, CSV, {"item_id": ids, "user_id": ids, "timestamp": pa.int64()})
    if table is None:
        return None
    # each block of the file has its own dictionary: unify them, then one array per column
    user, item = (table.column(c).unify_dictionaries().combine_chunks() for c in ("user_id", "item_id"))
    names = {c: np.asarray(a.dictionary.to_pylist(), dtype=object) for c, a in (("user_id", user), ("item_id", item))}
    if any((np.char.strip(v.astype(str)) != v.astype(str)).any() or (v == "").any() for v in names.values()):
        return None
    item_code = pd.Index(items["item_id"].astype(str), dtype=object).get_indexer(names["item_id"])
    if (item_code < 0).any():
        return None
    seconds = table.column("timestamp").to_numpy()
    seconds = np.where(seconds < MILLISECONDS_FROM, seconds, seconds // 1000)
    by_id = np.argsort(names["user_id"].astype(str), kind="stable")  # users in id order, as from the text path
    user_code = np.empty(len(by_id), dtype=np.int32)
    user_code[by_id] = np.arange(len(by_id), dtype=np.int32)
    users = pd.DataFrame({"user_id": names["user_id"][by_id].astype(str)})
    interactions = pd.DataFrame({
        "user_id": pd.Categorical.from_codes(user_code[user.indices.to_numpy(zero_copy_only=False)],
                                             categories=pd.Index(users["user_id"], dtype=object)),
        "item_id": pd.Categorical.from_codes(item_code[item.indices.to_numpy(zero_copy_only=False)].astype(np.int32),
                                             categories=pd.Index(items["item_id"].astype(str), dtype=object)),
        "timestamp": seconds.astype(np.int64), "clicked": np.ones(len(seconds), dtype=bool),
        "rating": np.full(len(seconds), np.nan), "variant_id": np.full(len(seconds), None, dtype=object),
    })  # fmt: skip
    return interactions, users


def _read_lowercase(
    path: Path, on_bad_row: OnBadRow, skipped: dict[str, int], required: list[str] | None = None
) -> ParsedFile:
    """Read a PixelRec CSV with lower-cased, stripped column names; a missing required column is a header error."""
    parsed = read_file(path, CSV, None, on_bad_row, skipped)
    parsed.frame.columns = [str(c).strip().lower() for c in parsed.frame.columns]
    missing = [c for c in required or [] if c not in parsed.frame.columns]
    if missing:
        header = list(parsed.frame.columns)
        raise DataFileError(path, 1, f"header {header} lacks column(s) {missing}; expected {required}")
    return parsed


def timestamp_seconds(text: pd.Series) -> pd.Series:
    """Seconds since 1970 (float64, NaN where unreadable) from whole numbers or date-time strings, vectorised."""
    seconds = parse_int(text)
    rest = seconds.isna() & (text.str.strip() != "")
    if rest.any():
        # ISO 8601 parses fast in one go; only what it rejects goes through the slower per-value "mixed" parser.
        when = pd.to_datetime(text[rest], errors="coerce", utc=True, format="ISO8601")
        retry = when.isna()
        if retry.any():
            when[retry] = pd.to_datetime(text[rest][retry], errors="coerce", utc=True, format="mixed")
        seconds[rest] = (when - EPOCH) // pd.Timedelta(seconds=1)
    return seconds.where(seconds < MILLISECONDS_FROM, seconds // 1000)
