"""Synthetic recommender logs shaped like the ICG paper's datasets, at a chosen fraction of their real size.

    python benchmarks/synthetic_logs.py {ml-latest,pixelrec} OUT [--fraction F] [--seed S] [--image-size PX]

Writes the files our loaders read (icg_rl/data/movielens.py, pixelrec.py):
  ml-latest  ratings.csv (userId,movieId,rating,timestamp) + movies.csv (movieId,title,genres; quoted CSV)
  pixelrec   PixelRec.csv (item_id,user_id,timestamp) + item_info.csv (item_id, counts, title, tag, description)
             + images/<item_id>.jpg (image_size x image_size RGB covers)
and `synthetic.json` (what was written and the generator's parameters). A rerun with the same shape, fraction,
seed and image size returns that record at once; files are written into `OUT.tmp-<pid>` and renamed into place.

Generative model (synthetic_world.py has the details): users and items are latent vectors u, v in R^16; genres are
the directions v points along most; popularity is Zipf-like and activity log-normal (a few users with thousands of
rows, most with tens). Users pick distinct items by genre preference softmax(3 u.g) and popularity, keeping the ones
with the largest 1.5 u.v + Gumbel noise, so clicks follow taste. MovieLens ratings are 2.8 + 0.8 u.v + user and item
biases + noise, rounded to half or (more often) whole stars in 0.5..5 (at full size mean 3.55, sd 1.07, as
GroupLens'; picks follow taste, so u.v averages about 1 there). A PixelRec cover's colours are projections of v and
its pattern follows the primary genre, so the image carries the item. Everything is vectorised numpy, generated and
written in chunks of about 1.5M rows; deterministic for (fraction, seed).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

if str(Path(__file__).resolve().parent) not in sys.path:  # the sibling synthetic_world, however this is imported
    sys.path.append(str(Path(__file__).resolve().parent))
import synthetic_world as sw  # noqa: E402

VERSION = 1  # bump when the generator changes, so cached folders are rewritten
STARS = np.array(["0.5", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0", "4.5", "5.0"])
IMAGE_BATCH = 1024  # covers per worker task


# ------------------------------------------------------------------------------------------------ ml-latest
def _ml_tables(w: sw.World, seed: int, movie_ids: np.ndarray, seen: np.ndarray):
    """ratings.csv chunks: userId (1..n), movieId, rating in half stars, timestamp; marks rated items in `seen`."""
    labels = pa.array(STARS)
    for n, (lo, hi) in enumerate(sw.user_chunks(w.counts)):
        rng = np.random.default_rng([seed, 1, n])
        user, item, affinity = sw.pick_items(w, rng, lo, hi)
        seen[item] = True
        noise = 0.85 * rng.standard_normal(len(user))
        stars = 2.8 + 0.8 * affinity + 0.25 * w.user_bias[user] + 0.35 * w.item_bias[item] + noise
        half = rng.random(len(user)) < 0.35  # GroupLens users give whole stars more often than half stars
        stars = np.where(half, np.round(stars * 2) / 2, np.round(stars)).clip(0.5, 5.0)
        code = pa.array((stars * 2 - 1).astype(np.int8))  # index into STARS
        yield pa.table({"userId": pa.array(user + 1), "movieId": pa.array(movie_ids[item]),
                        "rating": pa.DictionaryArray.from_arrays(code, labels),
                        "timestamp": pa.array(sw.timestamps(w, rng, user))})


def _movies(w: sw.World, rng: np.random.Generator, movie_ids: np.ndarray) -> pd.DataFrame:
    """movies.csv: movieId, 'Title (year)' (years skewed recent), genres joined by '|'."""
    year = np.clip(2023 - np.floor(rng.exponential(15.0, len(movie_ids))), 1902, 2023).astype(int)
    title = sw.titles(rng, len(movie_ids)) + " (" + year.astype(str).astype(object) + ")"
    return pd.DataFrame({"movieId": movie_ids, "title": title, "genres": sw.genre_strings(w, "|")})


def write_ml_latest(folder: str | Path, fraction: float, seed: int) -> dict:
    """Write an ml-latest-layout folder (ratings.csv, movies.csv) at `fraction` of the real size; see module doc."""
    params = {"shape": sw.ML_LATEST.name, "fraction": fraction, "seed": seed, "version": VERSION}
    return _write(Path(folder), params, lambda tmp, clock: _fill_ml(tmp, fraction, seed, clock))


def _fill_ml(tmp: Path, fraction: float, seed: int, clock: dict) -> dict:
    """The ml-latest files in `tmp`; returns the counts for the record."""
    w = sw.build_world(sw.ML_LATEST, fraction, seed)
    rng = np.random.default_rng([seed, 4])
    movie_ids = np.sort(rng.choice(int(3.35 * len(w.items)), len(w.items), replace=False)) + 1  # sparse, as GroupLens
    _movies(w, rng, movie_ids).to_csv(tmp / "movies.csv", index=False, lineterminator="\n")
    seen = np.zeros(len(w.items), dtype=bool)
    rows = write_rows(tmp / "ratings.csv", "userId,movieId,rating,timestamp", _ml_tables(w, seed, movie_ids, seen))
    clock["rows"] = time.perf_counter()
    return {"rows": rows, "target_rows": sw.sizes(sw.ML_LATEST, fraction)[2], "users": len(w.users),
            "items": len(w.items), "items_rated": int(seen.sum()), "images": 0}


# ------------------------------------------------------------------------------------------------ pixelrec
def _pixel_tables(w: sw.World, seed: int, seen: np.ndarray):
    """PixelRec.csv chunks: item_id "i<n>", user_id "u<n>", timestamp; each user's clicks in time order."""
    for n, (lo, hi) in enumerate(sw.user_chunks(w.counts)):
        rng = np.random.default_rng([seed, 1, n])
        user, item, _ = sw.pick_items(w, rng, lo, hi)
        seen[item] = True
        stamp = sw.timestamps(w, rng, user)
        order = np.lexsort((stamp, user))
        yield pa.table({"item_id": _ids("i", item[order]), "user_id": _ids("u", user[order]),
                        "timestamp": pa.array(stamp[order])})


def _ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    """Prefixed string ids ("u12"), built in arrow rather than Python."""
    return pc.binary_join_element_wise(prefix, pa.array(numbers).cast(pa.string()), "")


def _item_info(w: sw.World, rng: np.random.Generator) -> pd.DataFrame:
    """item_info.csv: ids, engagement counts following popularity, title, comma-separated tags, description."""
    n = len(w.items)
    views = np.round(w.popularity * w.counts.sum() * rng.lognormal(3.0, 0.5, n)).astype(np.int64)
    info = {"item_id": ("i" + np.arange(n).astype(str).astype(object))}
    for name, share in (("view", 1.0), ("comment", 0.01), ("thumbup", 0.05), ("share", 0.005), ("coin", 0.01),
                        ("favorite", 0.02), ("barrage", 0.03)):
        info[f"{name}_number"] = np.round(views * share * rng.lognormal(0.0, 0.5, n)).astype(np.int64)
    tags = sw.genre_strings(w, ",")
    info["title"] = sw.titles(rng, n)
    info["tag"] = tags
    info["description"] = "A short video, tagged " + tags
    return pd.DataFrame(info)


def _save_covers(task: tuple[Path, int, np.ndarray]) -> int:
    """Worker: encode one batch of covers as images/i<n>.jpg."""
    from PIL import Image

    folder, lo, pixels = task
    for j, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        (folder / f"i{lo + j}.jpg").write_bytes(buffer.getvalue())
    return len(pixels)


def _write_covers(w: sw.World, seed: int, folder: Path, size: int) -> int:
    """All covers, batches computed here and encoded by two worker processes."""
    folder.mkdir()
    n = len(w.items)
    batches = ((lo, min(lo + IMAGE_BATCH, n)) for lo in range(0, n, IMAGE_BATCH))
    tasks = ((folder, lo, sw.cover_pixels(w, seed, lo, hi, size)) for lo, hi in batches)  # computed as consumed
    with get_context("fork").Pool(2) as pool:  # fork: no re-import; the workers touch only PIL
        return sum(pool.imap_unordered(_save_covers, tasks))


def write_pixelrec(folder: str | Path, fraction: float, seed: int, image_size: int = 16) -> dict:
    """Write a PixelRec-layout folder (PixelRec.csv, item_info.csv, images/) at `fraction` of the real size."""
    if not (isinstance(image_size, int) and 4 <= image_size <= 512):
        raise ValueError(f"image_size: got {image_size!r}; allowed a whole number of pixels in 4..512")
    params = {"shape": sw.PIXELREC.name, "fraction": fraction, "seed": seed, "image_size": image_size,
              "version": VERSION}
    return _write(Path(folder), params, lambda tmp, clock: _fill_pixelrec(tmp, fraction, seed, image_size, clock))


def _fill_pixelrec(tmp: Path, fraction: float, seed: int, image_size: int, clock: dict) -> dict:
    """The PixelRec files in `tmp` (covers first, before arrow starts threads); returns the counts."""
    w = sw.build_world(sw.PIXELREC, fraction, seed)
    images = _write_covers(w, seed, tmp / "images", image_size)
    clock["images"] = time.perf_counter()
    _item_info(w, np.random.default_rng([seed, 4])).to_csv(tmp / "item_info.csv", index=False, lineterminator="\n")
    seen = np.zeros(len(w.items), dtype=bool)
    rows = write_rows(tmp / "PixelRec.csv", "item_id,user_id,timestamp", _pixel_tables(w, seed, seen))
    clock["rows"] = time.perf_counter()
    return {"rows": rows, "target_rows": sw.sizes(sw.PIXELREC, fraction)[2], "users": len(w.users),
            "items": len(w.items), "items_rated": int(seen.sum()), "images": images}


# ------------------------------------------------------------------------------------------------ files
def write_rows(path: Path, header: str, tables) -> int:
    """A header line, then each pyarrow table unquoted (ids and numbers: nothing to quote); returns the rows."""
    rows, options = 0, pacsv.WriteOptions(include_header=False, quoting_style="none")
    with open(path, "wb") as stream:
        stream.write((header + "\n").encode())
        for table in tables:
            pacsv.write_csv(table, stream, options)
            rows += table.num_rows
    return rows


def _write(folder: Path, params: dict, fill) -> dict:
    """Cached record if `folder` holds these params; else fill `folder.tmp-<pid>`, record it, rename into place."""
    _check(params)
    if (cached := _cached(folder, params)) is not None:
        return {**cached, "folder": str(folder), "cached": True}
    if folder.exists() and any(folder.iterdir()) and not (folder / "synthetic.json").is_file():
        raise FileExistsError(f"folder {folder} is not empty and holds no synthetic.json; choose an empty or new one")
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        clock = {"start": time.perf_counter()}
        counts = fill(tmp, clock)
        spans = {f"{k}_seconds": round(t - clock["start"], 2) for k, t in clock.items() if k != "start"}
        record = {**params, **counts, "seconds": round(time.perf_counter() - clock["start"], 2), **spans,
                  **_disk(tmp), "generator": _generator(params["shape"])}
        (tmp / "synthetic.json").write_text(json.dumps(record, indent=1) + "\n")
        if folder.exists():
            folder.rename(old)  # an older synthetic folder (checked above): replaced
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return {**record, "folder": str(folder), "cached": False}


def _check(params: dict) -> None:
    """Validate fraction and seed, naming the value and what is allowed."""
    fraction, seed = params["fraction"], params["seed"]
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"fraction: got {fraction!r}; allowed a number in (0, 1] (1.0 = the real size)")
    if not (isinstance(seed, int) and seed >= 0):
        raise ValueError(f"seed: got {seed!r}; allowed a whole number >= 0")


def _cached(folder: Path, params: dict) -> dict | None:
    """The record in folder/synthetic.json when it was written with exactly `params`."""
    try:
        record = json.loads((folder / "synthetic.json").read_text())
    except (OSError, ValueError):
        return None
    return record if all(record.get(k) == v for k, v in params.items()) else None


def _disk(root: Path) -> dict:
    """Bytes of the files under `root` (sizes) and bytes allocated on disk (blocks; tiny JPEGs take a block each)."""
    size = blocks = 0
    for path in root.rglob("*"):
        if path.is_file():
            stat = path.stat()
            size, blocks = size + stat.st_size, blocks + stat.st_blocks * 512
    return {"bytes": size, "disk_bytes": blocks}


def _generator(name: str) -> dict:
    """The generator's parameters, for the record."""
    shape = sw.ML_LATEST if name == sw.ML_LATEST.name else sw.PIXELREC
    return {**asdict(shape), "dim": sw.DIM, "genres": len(sw.GENRES), "chunk_rows": sw.CHUNK_ROWS,
            "min_users": sw.MIN_USERS, "min_items": sw.MIN_ITEMS}


def main(argv: list[str] | None = None) -> dict:
    """CLI: write one shape and print its record."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", choices=[sw.ML_LATEST.name, sw.PIXELREC.name], help="which dataset's layout and size")
    parser.add_argument("out", type=Path, help="folder to write (created; replaced if it holds another synthetic run)")
    parser.add_argument("--fraction", type=float, default=1 / 64, help="share of the real size, in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (>= 0)")
    parser.add_argument("--image-size", type=int, default=16, help="pixelrec cover side, pixels")
    args = parser.parse_args(argv)
    if args.shape == sw.ML_LATEST.name:
        record = write_ml_latest(args.out, args.fraction, args.seed)
    else:
        record = write_pixelrec(args.out, args.fraction, args.seed, args.image_size)
    print(json.dumps({k: v for k, v in record.items() if k != "generator"}, indent=1))
    return record


if __name__ == "__main__":
    main()
