"""Bounded retries of the calls a client's request makes to Redis (and, for deep replays, MongoDB).

A request either succeeds, after retries within ``seconds``, or raises :class:`Unavailable`, which the
transports answer with the documented transient error ``unavailable`` (the client retries with backoff).
A hang counts like an error: every Redis command fails after REALTIME_REDIS_TIMEOUT (the client's socket
timeout), a replay from the oplog after REALTIME_DEEP_REPLAY_SECONDS; a call without a deadline of its own
can be given one per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

log = logging.getLogger("realtime.server")

T = TypeVar("T")

# What a request may meet while Redis or MongoDB is away, stopped, restarting or out of memory.
TRANSIENT: tuple[type[BaseException], ...] = (RedisError, OSError, PyMongoError, TimeoutError)


class Unavailable(Exception):
    """The store did not answer within the request's retry deadline."""


def backoff(first: float = 0.05, factor: float = 2.0, cap: float = 1.0) -> Iterator[float]:
    """The delays between attempts: ``first``, then ``factor`` times more each time, at most ``cap``."""
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)


async def retrying(call: Callable[[], Awaitable[T]], seconds: float, what: str, *,
                   attempt_timeout: float | None = None, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> T:
    """``await call()``, again after a transient failure, until ``seconds`` have passed; then
    :class:`Unavailable` (from the last failure). With ``attempt_timeout``, an attempt that takes longer
    fails as a timeout."""
    deadline = clock() + seconds
    delays = backoff()
    attempts = 0
    while True:
        attempts += 1
        try:
            async with asyncio.timeout(attempt_timeout):
                return await call()
        except TRANSIENT as exc:
            failure: BaseException = exc
        left = deadline - clock()
        if left <= 0:
            log.warning("%s failed %d times in %.1fs (%s: %s); answering unavailable", what, attempts, seconds,
                        type(failure).__name__, failure)
            raise Unavailable(f"{what}: {type(failure).__name__}") from failure
        await sleep(min(next(delays), left))
