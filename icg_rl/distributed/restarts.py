"""Waiting out an actor restart.

A Ray actor that died and is being restarted (`max_restarts`) can answer a call with `ActorUnavailableError`
("temporarily unavailable ... restarting") instead of queueing it, depending on how far its restart has got.
The recovery path after a failure calls such actors on purpose, so it retries that one error until the actor
answers or a deadline passes; any other error (the actor is gone for good, its constructor failed) surfaces.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def until_answering(call: Callable[[], T], what: str, timeout_s: float = 300.0, poll_s: float = 0.5) -> T:
    """Run `call` (which talks to actors) until no actor is mid-restart; raises TimeoutError after `timeout_s`."""
    from ray.exceptions import ActorUnavailableError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except ActorUnavailableError as err:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: an actor was still restarting after {timeout_s:.0f} s ({err})") from err
            log.info("%s: an actor is restarting; asking again in %.1f s", what, poll_s)
            time.sleep(poll_s)
