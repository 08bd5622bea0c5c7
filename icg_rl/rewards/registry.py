"""The reward registry: every built-in reward by the name configs use (`reward.weights`, `reward.floors`).

An explicit table: the reward modules do not register themselves, so importing one never imports the others and
`rewards/base.py` stays a leaf. A factory takes `(reward_cfg, world_dir)` and returns a `RewardModel`.
`register_reward` adds a reward of your own under a new name (a taken name raises).
"""

from __future__ import annotations

from collections.abc import Callable

from icg_rl.rewards.aesthetic import build_aesthetic
from icg_rl.rewards.base import RewardModel
from icg_rl.rewards.preference import build_preference, build_preference_lift
from icg_rl.rewards.relevance import build_clip_i, build_clip_t, build_pickscore

RewardFactory = Callable[..., RewardModel]

REWARDS: dict[str, RewardFactory] = {
    "aesthetic": build_aesthetic,
    "clip_t": build_clip_t,
    "clip_i": build_clip_i,
    "pickscore": build_pickscore,
    "preference": build_preference,
    "preference_lift": build_preference_lift,
}


def register_reward(name: str, factory: RewardFactory) -> RewardFactory:
    """Add `factory` under `name` (a reward of your own; the process that builds it must have registered it)."""
    if name in REWARDS:
        raise ValueError(f"reward {name!r} is already registered")
    REWARDS[name] = factory
    return factory


def build_reward(name: str, reward_cfg, world_dir) -> RewardModel:
    if name not in REWARDS:
        raise ValueError(f"reward.weights: unknown reward {name!r}; registered rewards: {', '.join(sorted(REWARDS))}")
    return REWARDS[name](reward_cfg, world_dir)
