"""Group advantages: each (user, item) pair is sampled K times; a sample's advantage is its reward standardised
within its group (Flow-GRPO / DDPO's per-prompt tracker), with a per-key running tracker as the fallback.

    group_advantages(rewards [N], keys [N]) -> (advantages [N], stats)

- a group with ≥ `min_group` samples and std > eps: (r − mean_group) / std_group (or the global batch std when
  `global_std`);
- a smaller group: standardised by the key's running stats when the tracker has ≥ `min_count` past rewards for it,
  else by the whole batch's mean/std (ddpo-pytorch's fallback);
- a group whose rewards are all equal (std ≤ eps) has no signal: advantage 0, counted in `zero_variance_fraction`.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np


class PerKeyStatTracker:
    """Recent rewards per key (a bounded buffer, like ddpo-pytorch's), for keys whose group is too small alone.

    At most `max_keys` keys are kept, the least recently updated dropped first: a log of millions of (user, item)
    pairs would otherwise grow the tracker, and every checkpoint it is written into, without bound. A dropped key
    that comes back starts a new buffer (its groups fall back to the batch's stats until it has `min_count`)."""

    def __init__(self, buffer_size: int = 32, min_count: int = 16, max_keys: int = 65536):
        if max_keys < 1:
            raise ValueError(f"PerKeyStatTracker: max_keys={max_keys}; it must be > 0 (train.tracker_max_keys)")
        self.buffer_size, self.min_count, self.max_keys = buffer_size, min_count, max_keys
        self.buffers: OrderedDict[str, deque] = OrderedDict()  # least recently updated first

    def update(self, keys: np.ndarray, rewards: np.ndarray) -> None:
        for key, reward in zip(keys, rewards):
            key = str(key)
            if key in self.buffers:
                self.buffers.move_to_end(key)
            else:
                self.buffers[key] = deque(maxlen=self.buffer_size)
            self.buffers[key].append(float(reward))
        self._evict()

    def _evict(self) -> None:
        while len(self.buffers) > self.max_keys:
            self.buffers.popitem(last=False)  # the least recently updated key

    def stats(self, key: str) -> tuple[float, float] | None:
        values = self.buffers.get(str(key))  # reading does not count as an update
        if values is None or len(values) < self.min_count:
            return None
        return float(np.mean(values)), float(np.std(values))

    def state_dict(self) -> dict:
        """The buffers in update order, least recent first (a JSON object keeps its keys' order)."""
        return {"buffer_size": self.buffer_size, "min_count": self.min_count,
                "buffers": {k: list(v) for k, v in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        """A saved state, trimmed to this tracker's `max_keys` (the run's config, not the saved run's): the last
        `max_keys` keys of its order are kept. States saved before the cap hold their keys in the order first seen,
        so of those the keys first seen last are kept."""
        self.buffer_size, self.min_count = state["buffer_size"], state["min_count"]
        kept = list(state["buffers"].items())[-self.max_keys:]  # least recent first: the newest max_keys
        self.buffers = OrderedDict((key, deque(values, maxlen=self.buffer_size)) for key, values in kept)


def group_advantages(rewards: np.ndarray, keys: np.ndarray, tracker: PerKeyStatTracker | None = None,
                     min_group: int = 2, global_std: bool = False, eps: float = 1e-6) -> tuple[np.ndarray, dict]:
    """rewards [N] float, keys [N] str -> advantages [N] float32 and {'zero_variance_fraction', 'fallback_fraction'}."""
    rewards = np.asarray(rewards, dtype=np.float64)
    keys = np.asarray(keys).astype(str)
    if rewards.shape != keys.shape or rewards.ndim != 1:
        raise ValueError(f"rewards {rewards.shape} and keys {keys.shape} must be matching 1-D arrays")
    batch_mean, batch_std = rewards.mean(), rewards.std()
    advantages = np.zeros_like(rewards)
    zero_var = fallback = groups = 0
    for key in np.unique(keys):
        rows = keys == key  # (N,) mask of this group
        group = rewards[rows]
        groups += 1
        if len(group) >= min_group:
            std = batch_std if global_std else group.std()
            if group.std() <= eps:
                zero_var += 1
                continue  # advantages stay 0: no preference inside the group
            advantages[rows] = (group - group.mean()) / (std + eps)
            continue
        fallback += 1
        known = tracker.stats(key) if tracker is not None else None
        mean, std = known if known is not None else (batch_mean, batch_std)
        advantages[rows] = (group - mean) / (std + eps)
    if tracker is not None:
        tracker.update(keys, rewards)
    return advantages.astype(np.float32), {"zero_variance_fraction": zero_var / groups,
                                           "fallback_fraction": fallback / groups}
