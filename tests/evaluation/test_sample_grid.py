"""The personalization grid (`samples.png`): rows = items, columns = reference + users + user zeroed, every cover
upscaled into its cell and every cell captioned. Pure drawing on hand-made covers."""

from __future__ import annotations

import numpy as np
import pytest

from icg_rl.evaluation.sample_grid import CAPTION_PX, HEADER_PX, TITLE_PX, cell_origin, grid_size, personalization_grid

ITEMS, USERS, SIDE, CELL = 3, 4, 32, 128


def covers(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, SIDE, SIDE, 3), dtype=np.uint8)


def grid(click_prob: bool = True, title: str | None = "rows: items"):
    reference, personalized, zeroed = covers(0, ITEMS), covers(1, ITEMS, USERS), covers(2, ITEMS)
    prob = {k: np.full((ITEMS, USERS), 0.25) for k in ("reference", "personalized", "zeroed")} if click_prob else None
    image = personalization_grid(reference, personalized, zeroed, [f"u{u}" for u in range(USERS)],
                                 [f"item {i}: a title" for i in range(ITEMS)], prob, cell=CELL, title=title)
    return image, reference, personalized, zeroed


def cell(image: np.ndarray, row: int, column: int, titled: bool = True) -> np.ndarray:
    y, x = cell_origin(row, column, CELL, titled)
    return image[y:y + CELL, x:x + CELL]


def caption(image: np.ndarray, row: int, column: int, titled: bool = True) -> np.ndarray:
    y, x = cell_origin(row, column, CELL, titled)
    return image[y + CELL:y + CELL + CAPTION_PX, x:x + CELL]


def test_rows_are_items_and_columns_reference_users_zeroed_each_upscaled():
    image, reference, personalized, zeroed = grid()
    assert image.dtype == np.uint8 and image.shape == (*grid_size(ITEMS, USERS, CELL, titled=True), 3)
    assert image.shape[1] >= (USERS + 2) * CELL and image.shape[0] >= ITEMS * CELL  # ≥ 128 px a cover
    factor = CELL // SIDE  # nearest-neighbour: each source pixel a factor × factor block
    for i in range(ITEMS):
        expected = [reference[i], *personalized[i], zeroed[i]]
        for column, source in enumerate(expected):
            np.testing.assert_array_equal(cell(image, i, column), source.repeat(factor, 0).repeat(factor, 1),
                                          err_msg=f"item {i}, column {column}")


def test_every_cell_the_header_and_the_title_carry_text():
    image, *_ = grid()
    for i in range(ITEMS):
        for column in range(USERS + 2):
            strip = caption(image, i, column)
            assert (strip < 128).any(), f"caption of item {i}, column {column} is blank"
            assert (strip[CAPTION_PX // 2:] < 128).any(), f"no P(click) line under item {i}, column {column}"
    y, _ = cell_origin(0, 0, CELL, titled=True)
    assert (image[y - HEADER_PX:y] < 128).any() and (image[:TITLE_PX] < 128).any()


def test_without_an_oracle_the_cells_name_the_user_only():
    image, *_ = grid(click_prob=False, title=None)
    assert image.shape[:2] == grid_size(ITEMS, USERS, CELL, titled=False)
    for column in range(USERS + 2):
        strip = caption(image, 0, column, titled=False)
        assert (strip[:CAPTION_PX // 2] < 128).any() and not (strip[CAPTION_PX // 2 + 2:] < 128).any()


def test_mismatched_inputs_name_the_argument():
    reference, personalized, zeroed = covers(0, ITEMS), covers(1, ITEMS, USERS), covers(2, ITEMS)
    with pytest.raises(ValueError, match=r"zeroed: got shape \(2, 32, 32, 3\); expected \(3, H, W, 3\)"):
        personalization_grid(reference, personalized, zeroed[:2], ["u"] * USERS, ["i"] * ITEMS)
    with pytest.raises(ValueError, match="user_labels / item_labels: got 3 / 3; expected 4 / 3"):
        personalization_grid(reference, personalized, zeroed, ["u"] * 3, ["i"] * ITEMS)
    with pytest.raises(ValueError, match=r"click_prob\['icg'\]"):
        personalization_grid(reference, personalized, zeroed, ["u"] * USERS, ["i"] * ITEMS,
                             {"icg": np.zeros((ITEMS, USERS))})
