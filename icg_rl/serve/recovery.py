"""Surviving generator replicas that die or wedge (settings: `recovery`, icg_rl/config/serve.py).

Death. Serve's router retries a request only while it is being placed (a replica that refuses it or is gone before
taking it); once a replica has taken a request and its process dies (SIGKILL, OOM, a lost node), the caller's
`await handle.generate.remote(job)` raises `ray.exceptions.ActorDiedError` (a RayActorError) and Serve sends nothing
again. The ingress resends it itself (`with_retries`): the job already carries its seed and every image draws its
noise from (seed, image index), so the resend gives the response an undisturbed request would have. The router has
already dropped the dead replica when the error arrives, so the resend goes to a live one (or waits for the one
Serve starts in its place). Only replica loss is resent: a request the generator refuses fails as before, and a
client's mistakes are answered 4xx before any generator call.

Wedging. Serve replaces a replica whose `check_health` raises (or does not answer within `health_check_timeout_s`)
REPLICA_HEALTH_CHECK_UNHEALTHY_THRESHOLD (3) times in a row. The pipeline runs in a worker thread, so a hung
pipeline call leaves the replica's event loop — and a plain health check — answering; `BatchWatch` lets the check
see it: a call running past `max_batch_s`, or `max_failed_batches` calls failing in a row, fail the check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ray.exceptions import RayActorError
from ray.serve.exceptions import ReplicaUnavailableError

from icg_rl.config.serve import Recovery

log = logging.getLogger("icg_rl.serve")
T = TypeVar("T")

# what a replica that died or vanished under a request raises at the caller: ActorDiedError (process gone),
# ActorUnavailableError (unreachable, may or may not have run the task), both RayActorErrors; and Serve's own
# ReplicaUnavailableError (the chosen replica left before the request reached it)
REPLICA_LOST = (RayActorError, ReplicaUnavailableError)


class ReplicaLost(Exception):
    """Every attempt hit a replica that died: the ingress answers 503 with this message."""

    def __init__(self, attempts: int, error: BaseException, max_retries: int):
        super().__init__(f"generator: the replica generating this request died ({type(error).__name__}) on each of "
                         f"{attempts} attempt{'s' if attempts > 1 else ''} (recovery.max_retries={max_retries}); "
                         f"try again shortly")
        self.attempts = attempts


async def with_retries(send: Callable[[], Awaitable[T]], recovery: Recovery, what: str) -> tuple[T, int]:
    """-> (send()'s result, attempts made). `send` must be safe to repeat (the same job, seed included);
    `what` names the request in the log."""
    attempt = 1
    while True:
        try:
            return await send(), attempt
        except REPLICA_LOST as error:
            if attempt > recovery.max_retries:
                log.error("%s: generator replica died on attempt %d; no retries left (recovery.max_retries=%d)",
                          what, attempt, recovery.max_retries)
                raise ReplicaLost(attempt, error, recovery.max_retries) from error
            wait = recovery.retry_backoff_s * 2 ** (attempt - 1)
            log.warning("%s: generator replica died on attempt %d (%s); resending in %.2f s (retry %d of %d)",
                        what, attempt, type(error).__name__, wait, attempt, recovery.max_retries)
            await asyncio.sleep(wait)
            attempt += 1


class BatchWatch:
    """A generator replica's record of its own pipeline calls, for its health check. Written by the worker thread
    running the call, read by the event loop's health check: single attribute writes, so no lock (the replica's
    lock is held for the whole call and would block the check behind the very call it should report)."""

    def __init__(self, recovery: Recovery, clock: Callable[[], float] = time.monotonic):
        self.recovery, self.clock = recovery, clock
        self.started: float | None = None  # when the running call began; None between calls
        self.failed_in_a_row = 0
        self.last_error = ""

    @contextmanager
    def batch(self) -> Iterator[None]:
        self.started = self.clock()
        try:
            yield
        except Exception as error:
            self.failed_in_a_row += 1
            self.last_error = f"{type(error).__name__}: {error}"[:300]
            raise
        else:
            self.failed_in_a_row = 0
        finally:
            self.started = None

    def problem(self) -> str | None:
        """Why this replica should be replaced, or None."""
        started = self.started  # read once: the worker thread may clear it meanwhile
        if started is not None and (running := self.clock() - started) > self.recovery.max_batch_s:
            return (f"wedged: a pipeline call has run for {running:.0f} s (recovery.max_batch_s="
                    f"{self.recovery.max_batch_s:g})")
        if self.failed_in_a_row >= self.recovery.max_failed_batches:
            return (f"{self.failed_in_a_row} pipeline calls failed in a row (recovery.max_failed_batches="
                    f"{self.recovery.max_failed_batches}); the last: {self.last_error}")
        return None
