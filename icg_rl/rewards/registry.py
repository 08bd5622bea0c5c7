"""The reward registry: every built-in reward by the name configs use (`reward.weights`, `reward.floors`).

An explicit table: the reward modules do not register themselves, so importing one never imports the others and
`rewards/base.py` stays a leaf. A factory takes `(reward_cfg, world_dir)` and returns a `RewardModel`.
`register_reward` adds a reward of your own under a new name (a taken name raises).
"""

from __future__ import annotations

from collections.abc import Callable

from icg_rl.config import ConfigError
from icg_rl.rewards.aesthetic import build_aesthetic
from icg_rl.rewards.base import RewardModel
from icg_rl.rewards.genre_hit import build_genre_hit
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
    "genre_hit": build_genre_hit,
}
# Rewards with no useful gradient (a decision, a rule, a service): known before any is built, so a run that would
# backprop through one fails on the driver at once, naming it
NOT_DIFFERENTIABLE: set[str] = {"genre_hit"}
# Rewards that read the user (their id and history): the ones cross-user relabelling (rl/relabel.py) scores again for
# another user; the others score a cover the same for everyone
USER_DEPENDENT: set[str] = {"preference", "preference_lift"}


def register_reward(name: str, factory: RewardFactory, differentiable: bool = True,
                    user_dependent: bool = False) -> RewardFactory:
    """Add `factory` under `name` (a reward of your own; the process that builds it must have registered it).
    `differentiable=False`: its scores carry no gradient (reward backprop refuses it; ddpo, grpo and nft take it).
    `user_dependent=True`: its score of a cover depends on the batch's `user_id`/`history` (a personal model)."""
    if name in REWARDS:
        raise ValueError(f"reward {name!r} is already registered")
    REWARDS[name] = factory
    if not differentiable:
        NOT_DIFFERENTIABLE.add(name)
    if user_dependent:
        USER_DEPENDENT.add(name)
    return factory


def refuse_for_backprop(weights: dict[str, float]) -> None:
    """Reward backprop differentiates every weighted reward: one declared non-differentiable is a config error."""
    bad = sorted(name for name, w in weights.items() if w != 0 and name in NOT_DIFFERENTIABLE)
    if bad:
        raise ConfigError(f"algo.name=backprop differentiates every reward in reward.weights, but {bad} "
                         f"{'is' if len(bad) == 1 else 'are'} not differentiable (no useful gradient); set "
                         f"{'its' if len(bad) == 1 else 'their'} weight to 0 or train with algo.name=nft (or ddpo, "
                         f"grpo), which need only the scores")


def build_reward(name: str, reward_cfg, world_dir) -> RewardModel:
    if name not in REWARDS:
        raise ValueError(f"reward.weights: unknown reward {name!r}; registered rewards: {', '.join(sorted(REWARDS))}")
    return REWARDS[name](reward_cfg, world_dir)
