"""A/B splits: which arm (policy) of an experiment a request gets.

The arm is a pure function of (experiment, user): a SHA-256 of the two, read as a number in [0, 1), falls into one
arm's share of the cumulative weights (in the order the config lists the arms). The same user therefore always sees
the same arm on every replica and after restarts, different experiments split users independently, and a cold-start
request without a user id is assigned by its seed (so a replayed request lands on the same arm too).
"""

from __future__ import annotations

import hashlib


def split_key(user_id: str | None, seed: int) -> str:
    """What the split hashes: the user id when the request has one, else its seed."""
    return f"user:{user_id}" if user_id is not None else f"seed:{seed}"


def unit_hash(experiment: str, key: str) -> float:
    """A stable, uniform number in [0, 1) for (experiment, key)."""
    digest = hashlib.sha256(f"{experiment}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def choose_arm(experiment: str, arms: dict[str, float], key: str) -> str:
    """The arm whose share of the total weight holds unit_hash(experiment, key)."""
    point = unit_hash(experiment, key) * sum(arms.values())
    cumulative = 0.0
    for arm, weight in arms.items():
        cumulative += weight
        if point < cumulative:
            return arm
    return next(reversed(arms))  # point == total only through float rounding
