"""Where every random draw of an RL iteration comes from, so a run is reproducible however it is split.

Each image row of an iteration's batch gets its own generator, seeded from (run seed, iteration, row): the initial
noise and every DDIM step's noise of that row are the same whether one process samples the whole batch or four
rollout actors each sample a slice. The learner's own draws (which timesteps DDPO trains, DRaFT's truncation)
come from one generator per (run seed, iteration), identical on every learner rank.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

ROLLOUT, UPDATE, EVALUATION, GROUP_START, NFT_DRAWS, RELABEL, CRITIC = 0, 1, 2, 3, 4, 5, 6  # independent streams


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (numpy's SeedSequence: nearby keys give unrelated seeds)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def row_generators(seed: int, iteration: int, rows: Iterable[int], stream: int = ROLLOUT) -> list[torch.Generator]:
    """One CPU generator per image row (global row indices of the iteration's batch)."""
    return [torch.Generator().manual_seed(derive_seed(seed, stream, iteration, row)) for row in rows]


def update_generator(seed: int, iteration: int) -> torch.Generator:
    """The learner's generator of an iteration (same on every rank)."""
    return torch.Generator().manual_seed(derive_seed(seed, UPDATE, iteration))


def group_generators(seed: int, iteration: int, group_keys, stream: int = GROUP_START) -> list[torch.Generator]:
    """One CPU generator per row, seeded by the row's *group* ("user|item" key) instead of its position: every
    sample of a group draws the same numbers (GRPO's shared initial noise), wherever its rows land."""
    import zlib

    return [torch.Generator().manual_seed(derive_seed(seed, stream, iteration, zlib.crc32(str(key).encode())))
            for key in group_keys]
