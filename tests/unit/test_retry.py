"""realtime.server.retry: a request's calls to Redis are retried within a deadline, then `unavailable`."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from realtime.server.retry import Unavailable, backoff, retrying


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_backoff_doubles_up_to_its_cap() -> None:
    assert list(itertools.islice(backoff(0.05, 2.0, 0.3), 5)) == [0.05, 0.1, 0.2, 0.3, 0.3]


async def test_a_call_that_recovers_is_answered() -> None:
    clock, calls = Clock(), []

    async def call() -> str:
        calls.append(clock.now)
        if len(calls) < 3:
            raise RedisConnectionError("refused")
        return "ok"

    assert await retrying(call, 2.0, "a test", clock=clock, sleep=clock.sleep) == "ok"
    assert len(calls) == 3 and clock.slept == [0.05, 0.1]


async def test_a_call_that_keeps_failing_ends_unavailable_at_the_deadline() -> None:
    clock = Clock()

    async def call() -> str:
        raise OSError("unreachable")

    with pytest.raises(Unavailable) as info:
        await retrying(call, 1.0, "a test", clock=clock, sleep=clock.sleep)
    assert isinstance(info.value.__cause__, OSError)
    assert clock.now == pytest.approx(1.0)  # the last sleep is cut to the deadline


async def test_a_hanging_call_counts_as_a_failure() -> None:
    """Regression: a replay waited forever on a Redis that was stopped (SIGSTOP): no answer, no error."""
    async def call() -> str:
        await asyncio.sleep(3600)
        return "never"

    with pytest.raises(Unavailable):
        await asyncio.wait_for(retrying(call, 0.2, "a test", attempt_timeout=0.1), 5)


async def test_a_bug_is_not_retried() -> None:
    async def call() -> str:
        raise KeyError("a bug, not an outage")

    with pytest.raises(KeyError):
        await retrying(call, 1.0, "a test")
