"""Atomic file writes: write to a temporary file beside the target, fsync, then rename over it.

A reader never sees a half-written file, and a crash leaves the previous version intact.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def atomic_write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def atomic_write_png(path: str | Path, image: np.ndarray) -> None:
    atomic_write_bytes(path, png_bytes(image))


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 (H, W, 3)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def resize_images(images: np.ndarray, side: int) -> np.ndarray:
    """uint8 images (N, H, W, 3) -> (N, side, side, 3); a no-op when they already have that size (reference covers are
    loaded at `data.reference_size`, which need not be the generated images' size)."""
    if images.shape[1:3] == (side, side):
        return images
    return np.stack([np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR)) for image in images])


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """uint8 images (N, H, W, 3) -> one (rows·H, columns·W, 3) grid, empty cells black."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for index, image in enumerate(images):
        r, col = divmod(index, columns)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = image
    return grid
