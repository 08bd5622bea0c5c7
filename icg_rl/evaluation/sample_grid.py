"""The personalization grid (a run's `samples.png`): one row per held-out item — its reference cover, the covers the
policy made of it for several users, then the cover with the user zeroed — each cell upscaled so a person can see it
and captioned with who it was made for and, where an oracle knows it (CoverWorld), the true P(click).

Pure drawing: arrays and labels in, a uint8 image out (evaluation/showcase.py produces the inputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL_PX = 128  # side of one cover in the grid: 32-px covers are unreadable at 1:1
GAP_PX = 4  # white space between cells
TITLE_PX = 18  # the optional line above everything
HEADER_PX = 18  # the column names
CAPTION_PX = 30  # two lines under each cover: who it is for, its P(click)
FONT_PX = 11


def cell_origin(row: int, column: int, cell: int = CELL_PX, titled: bool = False) -> tuple[int, int]:
    """(y, x) of the top-left pixel of the cover in `row`, `column`: the one place the layout is defined."""
    top = (TITLE_PX if titled else 0) + HEADER_PX
    return top + row * (cell + CAPTION_PX + GAP_PX), GAP_PX + column * (cell + GAP_PX)


def grid_size(items: int, users: int, cell: int = CELL_PX, titled: bool = False) -> tuple[int, int]:
    """(height, width) of the grid of `items` rows and reference + `users` + zeroed columns."""
    bottom, right = cell_origin(items, users + 2, cell, titled)
    return bottom, right


def personalization_grid(reference: np.ndarray, personalized: np.ndarray, zeroed: np.ndarray,
                         user_labels: Sequence[str], item_labels: Sequence[str],
                         click_prob: dict[str, np.ndarray] | None = None, cell: int = CELL_PX,
                         title: str | None = None) -> np.ndarray:
    """Covers -> the grid, uint8 (H, W, 3) (size: `grid_size`).

    reference (I, h, w, 3), personalized (I, U, h', w', 3), zeroed (I, h', w', 3): uint8; row i is item i, column
    1 + u is user u (the same users in every row). `click_prob` (optional): {"reference", "personalized", "zeroed"}
    -> (I, U) P(click) of that cover for each of the row's users; the reference and zeroed cells, shared by the
    users, show the mean over them.
    """
    items, users = personalized.shape[:2]
    _check_inputs(reference, personalized, zeroed, user_labels, item_labels, click_prob)
    height, width = grid_size(items, users, cell, title is not None)
    canvas = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(canvas), _font()
    if title is not None:
        draw.text((GAP_PX, 3), _fit(draw, font, title, width - 2 * GAP_PX), fill="black", font=font)
    names = ["reference"] + [f"user {label}" for label in user_labels] + ["user zeroed"]
    for column, name in enumerate(names):
        y, x = cell_origin(0, column, cell, title is not None)
        draw.text((x, y - HEADER_PX + 3), _fit(draw, font, name, cell), fill="black", font=font)
    for i in range(items):
        cells = [(reference[i], str(item_labels[i]), _mean_p(click_prob, "reference", i))]
        cells += [(personalized[i, u], str(user_labels[u]), _p(click_prob, "personalized", i, u))
                  for u in range(users)]
        cells.append((zeroed[i], "no user", _mean_p(click_prob, "zeroed", i)))
        for column, (image, who, p) in enumerate(cells):
            y, x = cell_origin(i, column, cell, title is not None)
            canvas.paste(Image.fromarray(np.asarray(image, np.uint8)).resize((cell, cell), Image.NEAREST), (x, y))
            draw.text((x, y + cell + 2), _fit(draw, font, who, cell), fill="black", font=font)
            if p:
                draw.text((x, y + cell + 2 + FONT_PX + 2), p, fill="black", font=font)
    return np.asarray(canvas)


def _check_inputs(reference, personalized, zeroed, user_labels, item_labels, click_prob) -> None:
    if personalized.ndim != 5 or personalized.shape[-1] != 3:
        raise ValueError(f"personalized: got shape {personalized.shape}; expected (items, users, H, W, 3)")
    items, users = personalized.shape[:2]
    for name, array in (("reference", reference), ("zeroed", zeroed)):
        if array.ndim != 4 or len(array) != items:
            raise ValueError(f"{name}: got shape {array.shape}; expected ({items}, H, W, 3), one per item")
    if len(user_labels) != users or len(item_labels) != items:
        raise ValueError(f"user_labels / item_labels: got {len(user_labels)} / {len(item_labels)}; expected "
                         f"{users} / {items} (one per column of users / per row)")
    for key, value in (click_prob or {}).items():
        if key not in ("reference", "personalized", "zeroed") or np.shape(value) != (items, users):
            raise ValueError(f"click_prob[{key!r}]: got shape {np.shape(value)}; allowed keys 'reference', "
                             f"'personalized', 'zeroed', each ({items}, {users})")


def _p(click_prob, key: str, i: int, u: int) -> str:
    return f"p={click_prob[key][i, u]:.3f}" if click_prob and key in click_prob else ""


def _mean_p(click_prob, key: str, i: int) -> str:
    return f"mean p={np.mean(click_prob[key][i]):.3f}" if click_prob and key in click_prob else ""


def _font() -> ImageFont.ImageFont:
    """DejaVu Sans, which matplotlib (a dependency) ships: Pillow's own font draws titles' dashes and accents as
    boxes. Pillow's fonts where that one cannot be read."""
    from pathlib import Path

    import matplotlib

    try:
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), FONT_PX)
    except (OSError, ImportError):  # no FreeType or no file
        pass
    try:
        return ImageFont.load_default(size=FONT_PX)
    except (TypeError, OSError, ImportError):  # older Pillow or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, font, text: str, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels (titles can be long)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."
