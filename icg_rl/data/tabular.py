"""Delimited data files read fast, with bad rows reported as file:line or skipped and counted (docs/architecture.md §5).

Files are parsed by pandas' C reader as strings and checked column-wise (`Problems`), so millions of rows cost
no Python loop. Only when a row is bad in "error" mode is the file scanned again with the `csv` module to find
the line it sits on: pandas' own line numbers do not count newlines inside quoted fields, and it drops rows with
too many fields, so the index of a parsed row is not its line. Also here: `image_paths`, the per-item image
lookup the loaders share.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd

from icg_rl.data.schema import DataFileError

OnBadRow = Literal["error", "skip"]
EXTRA = "\x00extra"  # one column past the expected ones: a row that fills it has too many fields
UNIT_SEPARATOR = "\x1f"  # stands in for multi-character separators (MovieLens' "::"), which pandas' C reader lacks
MAX_SHOWN = 200  # characters of a bad line quoted in an error message


@dataclass(frozen=True)
class FileFormat:
    """How one delimited file is written: what splits fields, its encoding, a header line, CSV quoting."""

    sep: str
    encoding: str = "utf-8"
    header: bool = False
    quoted: bool = False  # CSV quoting ("a, b" and "" escapes); GroupLens' `|`, tab and `::` files have none


@dataclass
class ParsedFile:
    """A file's rows as strings (one column per field, index = data row number from 0) and how to re-read it.

    Rows with too many fields are either in `frame`, flagged in `overlong`, or were left out by pandas (`dropped`,
    a count); in "skip" mode `read_file` has already removed and counted both kinds.
    """

    path: Path
    fmt: FileFormat
    frame: pd.DataFrame
    overlong: pd.Series
    dropped: int = 0


@dataclass
class Problems:
    """Column checks on a parsed file: which rows fail which check, and what the column allows (for messages)."""

    parsed: ParsedFile
    checks: list[tuple[str, pd.Series, str]] = field(default_factory=list)

    def need(self, column: str, ok: pd.Series, allowed: str) -> None:
        """Rows where `ok` is False are bad: `column` must be `allowed`. `ok` may cover a subset of the rows."""
        self.checks.append((column, ok.astype(bool), allowed))

    def bad(self) -> pd.Series:
        """Rows failing any check (a boolean Series over the file's rows)."""
        bad = pd.Series(False, index=self.parsed.frame.index)
        for _, ok, _ in self.checks:
            bad |= ~ok.reindex(bad.index, fill_value=True)
        return bad

    def reason(self, row: int) -> str:
        """Why row `row` is bad: the first failed check, with the value as written in the file."""
        for column, ok, allowed in self.checks:
            if row in ok.index and not ok.loc[row]:
                return f"{column} {self.parsed.frame.at[row, column]!r} is not {allowed}"
        return "the row is malformed"


def read_file(
    path: Path, fmt: FileFormat, names: list[str] | None, on_bad_row: OnBadRow, skipped: dict[str, int]
) -> ParsedFile:
    """Read `path` as strings. `names` are the fields of a header-less file, or the columns a header must have.

    Over-long rows are removed and counted here in "skip" mode; in "error" mode the first `settle` call reports
    them (earliest bad line first). Empty lines are ignored.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    columns = _header(path, fmt, names) if fmt.header else list(names or [])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            frame = pd.read_csv(
                _open(path, fmt) if len(fmt.sep) > 1 else path,
                sep=UNIT_SEPARATOR if len(fmt.sep) > 1 else fmt.sep,
                header=None,
                skiprows=1 if fmt.header else 0,
                # The extra column keeps pandas from turning a long first row into an index or widening the table.
                names=[*columns, EXTRA],
                index_col=False,
                dtype=str,
                keep_default_na=False,  # "NA", "null" are titles/tags too; missing fields read as ""
                quoting=csv.QUOTE_MINIMAL if fmt.quoted else csv.QUOTE_NONE,
                encoding=fmt.encoding,
                on_bad_lines="warn",
                engine="c",
            )
    except UnicodeDecodeError as exc:
        raise _decode_error(path, fmt, exc) from None
    except pd.errors.EmptyDataError:
        raise DataFileError(path, None, f"is empty; expected {', '.join(columns)}") from None
    overlong = frame.pop(EXTRA) != ""
    dropped = sum(len(re.findall(r"Skipping line", str(w.message))) for w in caught)
    if on_bad_row == "skip" and (count := dropped + int(overlong.sum())):
        skipped[path.name] = skipped.get(path.name, 0) + count
        frame, overlong, dropped = frame[~overlong], overlong[~overlong], 0
    return ParsedFile(path, fmt, frame, overlong, dropped)


def _header(path: Path, fmt: FileFormat, required: list[str] | None) -> list[str]:
    """The column names on line 1 (stripped); a DataFileError if any `required` one is missing."""
    try:
        with _open(path, fmt) as stream:
            columns = [name.strip() for name in next(_reader(stream, fmt), [])]
    except UnicodeDecodeError as exc:  # decoding runs ahead of line 1, so a bad byte further on shows up here
        raise _decode_error(path, fmt, exc) from None
    if not columns:
        raise DataFileError(path, 1, f"is empty; expected a header line {required or 'naming the columns'}")
    missing = [n for n in required or [] if n not in columns]
    if missing:
        raise DataFileError(path, 1, f"header {columns} lacks column(s) {missing}; expected {required}")
    return columns


def settle(parsed: ParsedFile, problems: Problems, on_bad_row: OnBadRow, skipped: dict[str, int]) -> pd.Series:
    """Resolve the bad rows found by `problems`: raise for the earliest ("error") or count them ("skip").

    Returns the rows to keep (a boolean Series over `parsed.frame.index`); in "error" mode it is all True.
    """
    bad = problems.bad() | parsed.overlong.reindex(parsed.frame.index, fill_value=False)
    if on_bad_row == "skip":
        if count := int(bad.sum()):
            skipped[parsed.path.name] = skipped.get(parsed.path.name, 0) + count
        return ~bad
    if bad.any() or parsed.dropped:
        first = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else None
        raise _bad_row_error(parsed, problems, first)
    return ~bad


def _bad_row_error(parsed: ParsedFile, problems: Problems, row: int | None) -> DataFileError:
    """The error for parsed row `row` (or, when None or later, the first over-long row), with its line number."""
    width = len(parsed.frame.columns)
    # Every record before the first over-long one is a row pandas kept, so the record count is the row number.
    for kept, (line, fields) in enumerate(_records(parsed)):
        shown = _shown(parsed.fmt.sep.join(fields))
        if len(fields) > width or (kept == row and len(fields) < width):
            expected = ", ".join(map(str, parsed.frame.columns))
            message = f"expected {width} fields ({expected}), found {len(fields)}: {shown}"
            return DataFileError(parsed.path, line, message)
        if kept == row:
            return DataFileError(parsed.path, line, f"{problems.reason(row)}; the line reads {shown}")
    # Only reached if the csv module split the file differently from pandas; still name the row.
    reason = problems.reason(row) if row is not None else "a row has too many fields"
    return DataFileError(parsed.path, None, f"{reason} (data row {0 if row is None else row + 1})")


def _records(parsed: ParsedFile) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each non-empty data record, split the way pandas split them."""
    csv.field_size_limit(2**31 - 1)  # long descriptions must not stop the search for the bad line
    with _open(parsed.path, parsed.fmt) as stream:
        reader = _reader(stream, parsed.fmt)
        previous_end = 0
        for fields in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if fields and not (parsed.fmt.header and start == 1):
                yield start, fields


def _reader(stream: IO[str], fmt: FileFormat) -> Any:  # a csv reader; its type is private to the csv module
    """A csv reader that splits lines the way `read_file` asks pandas to."""
    sep = UNIT_SEPARATOR if len(fmt.sep) > 1 else fmt.sep
    return csv.reader(stream, delimiter=sep, quoting=csv.QUOTE_MINIMAL if fmt.quoted else csv.QUOTE_NONE)


def _open(path: Path, fmt: FileFormat) -> IO[str]:
    """The file as text; a multi-character separator is rewritten to one character (line numbers unchanged)."""
    if len(fmt.sep) > 1:
        return io.StringIO(path.read_text(encoding=fmt.encoding).replace(fmt.sep, UNIT_SEPARATOR))
    return open(path, encoding=fmt.encoding, newline="")


def _shown(line: str) -> str:
    """A bad line quoted for a message, cut to MAX_SHOWN characters."""
    return repr(line if len(line) <= MAX_SHOWN else line[:MAX_SHOWN] + "...")


def _decode_error(path: Path, fmt: FileFormat, exc: UnicodeDecodeError) -> DataFileError:
    """Name the first line that does not decode (found by decoding line by line: the error path only)."""
    line = None
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                raw.decode(fmt.encoding)
            except UnicodeDecodeError:
                line = number
                break
    return DataFileError(path, line, f"is not valid {fmt.encoding} text ({exc.reason}); re-save it as {fmt.encoding}")


def parse_number(values: pd.Series) -> pd.Series:
    """Numbers written in `values`, as float64 (NaN where the text is not a number), vectorised."""
    try:
        # A plain cast is ~4x faster than to_numeric on Arrow-backed strings; it fails on any bad value, and only
        # then (rare: a file with bad rows) do we pay for the coercing parse.
        return values.astype("float64")
    except (ValueError, TypeError):
        return pd.to_numeric(values, errors="coerce").astype("float64")


def parse_int(values: pd.Series) -> pd.Series:
    """Whole numbers written in `values`, as float64 (NaN where the text is not a finite whole number)."""
    number = parse_number(values)
    whole = np.isfinite(number) & (np.floor(number) == number)
    return number.where(whole)


def id_strings(numbers: pd.Series) -> pd.Series:
    """Integer ids (float64 holding whole numbers) as canonical strings; formats each distinct id once."""
    codes, uniques = pd.factorize(numbers.to_numpy(dtype="int64"))
    labels = np.array([str(u) for u in uniques], dtype=object)
    return pd.Series(labels[codes], index=numbers.index, dtype=object)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # in order of preference when an item has several


def image_paths(item_ids: pd.Series, root: Path, folder: str | Path | None,
                option: str = "the image folder") -> list[str | None]:
    """Each item's image `<item_id>.jpg|.jpeg|.png` in `folder`, or None; one directory listing, no per-item stat.

    Paths are relative to `root` when `folder` lies inside it (the schema's convention), otherwise absolute, so an
    image folder kept elsewhere still works with `RecDataset.image_file` (`root / absolute` is the absolute path).
    A `folder` that is named but missing is an error naming `option` (what supplied it): silently loading every
    item text-only would hide a typo until the results looked wrong.
    """
    if folder is None:
        return [None] * len(item_ids)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{option}: {folder} does not exist (or is not a folder); point it at a folder of "
                                "<item_id>.jpg/.png images, or leave it unset to load the items text-only")
    found: dict[str, tuple[int, str]] = {}  # item id -> (suffix preference, file name)
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                candidate = (IMAGE_SUFFIXES.index(suffix.lower()), entry.name)
                found[stem] = min(found.get(stem, candidate), candidate)
    base = _relative_base(folder, root)
    return [None if (hit := found.get(item)) is None else str(base / hit[1]) for item in item_ids]


def _relative_base(folder: Path, root: Path) -> Path:
    """`folder` relative to `root` when inside it, else absolute."""
    try:
        return folder.resolve().relative_to(root.resolve())
    except ValueError:
        return folder.resolve()


def read_typed(path: Path, fmt: FileFormat, columns: dict[str, Any]) -> Any | None:
    """The fast path: `columns` (name -> pyarrow type) of a header CSV read typed by pyarrow's multi-threaded
    reader, as a pyarrow Table; None when any row does not parse that way (a wrong field count, a value of another
    type, a missing value, a header that is not exactly the names), so that the caller re-reads the file on the
    text path, which reports the bad row by file and line or skips and counts it. ml-latest's 33.8M ratings load
    in seconds this way instead of minutes as Python strings."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if len(fmt.sep) > 1 or not fmt.header or not path.is_file():
        return None
    encoding = fmt.encoding
    if encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig"):
        with open(path, "rb") as stream:
            if stream.read(3) == b"\xef\xbb\xbf":  # a byte-order mark: the text path strips it
                return None
        encoding = "utf8"  # pyarrow's own decoder (any other name goes through Python's codecs)
    try:
        header = _header(path, fmt, list(columns))
    except DataFileError:
        return None
    with open(path, encoding=fmt.encoding, newline="") as stream:
        if next(csv.reader(stream, delimiter=fmt.sep), []) != header:  # names padded with spaces: the text path
            return None
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(encoding=encoding, block_size=64 << 20),
            parse_options=pacsv.ParseOptions(delimiter=fmt.sep, quote_char='"' if fmt.quoted else False),
            convert_options=pacsv.ConvertOptions(column_types=columns, include_columns=list(columns),
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError, KeyError):
        return None
    if any(table.column(name).null_count for name in columns):  # an empty numeric field
        return None
    return table
