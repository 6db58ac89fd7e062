"""watchers.outage: when an outage of Redis or MongoDB begins and ends, and what readiness says meanwhile."""

from __future__ import annotations

import pytest
from pymongo.errors import AutoReconnect, NetworkTimeout, NotPrimaryError, OperationFailure, ServerSelectionTimeoutError
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from watchers.outage import MONGODB, REDIS, Outages
from watchers.watcher import outage_of, redis_timeout


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_begins_once_and_counts_its_failures() -> None:
    clock = Clock()
    outages = Outages(clock)
    begun = outages.failed(REDIS, "ConnectionError: refused")
    assert begun is not None and begun.since == 100.0 and begun.failures == 1
    clock.now = 103.0
    assert outages.failed(REDIS, "TimeoutError: no answer") is None, "the same outage goes on: no second log line"
    outage = outages.current[REDIS]
    assert (outage.failures, outage.last, outage.reason) == (2, 103.0, "TimeoutError: no answer")


def test_a_success_ends_the_outage_and_only_once() -> None:
    clock = Clock()
    outages = Outages(clock)
    assert outages.succeeded(REDIS) is None, "no outage under way: nothing to log"
    outages.failed(REDIS, "refused")
    clock.now = 112.5
    ended = outages.succeeded(REDIS)
    assert ended is not None and clock.now - ended.since == 12.5
    assert outages.succeeded(REDIS) is None
    assert outages.failed(REDIS, "refused") is not None, "a later failure begins a new outage"


def test_dependencies_have_outages_of_their_own() -> None:
    clock = Clock()
    outages = Outages(clock)
    outages.failed(REDIS, "refused")
    assert outages.failed(MONGODB, "no primary") is not None
    outages.succeeded(REDIS)
    assert list(outages.current) == [MONGODB]


def test_problems_say_what_since_when_and_why() -> None:
    clock = Clock()
    outages = Outages(clock)
    assert outages.problems() == []
    outages.failed(REDIS, "ConnectionError: refused")
    outages.failed(MONGODB, "ServerSelectionTimeoutError: no primary")
    clock.now = 130.0
    outages.failed(REDIS, "ConnectionError: refused")
    assert outages.problems() == [
        "mongodb: unavailable for 30s, 1 failed attempts (last: ServerSelectionTimeoutError: no primary)",
        "redis: unavailable for 30s, 2 failed attempts (last: ConnectionError: refused)",
    ]


def test_retrying_tells_a_wait_from_a_stuck_watcher() -> None:
    clock = Clock()
    outages = Outages(clock)
    assert not outages.retrying(within=60), "no outage: nothing to wait for"
    outages.failed(REDIS, "refused")
    clock.now = 150.0
    assert outages.retrying(within=60)
    clock.now = 161.0
    assert not outages.retrying(within=60), "no attempt for a minute: stuck, not waiting"


@pytest.mark.parametrize(("error", "dependency"), [
    (RedisConnectionError("refused"), REDIS),
    (RedisTimeoutError("no answer"), REDIS),
    (BusyLoadingError("loading the dataset"), REDIS),
    (OutOfMemoryError("command not allowed when used memory > 'maxmemory'"), REDIS),
    (ReadOnlyError("You can't write against a read only replica."), REDIS),
    (ServerSelectionTimeoutError("no primary"), MONGODB),
    (AutoReconnect("connection closed"), MONGODB),
    (NetworkTimeout("timed out"), MONGODB),
    (NotPrimaryError("stepping down"), MONGODB),
    (ResponseError("WRONGTYPE"), None),
    (OperationFailure("bad pipeline", 2), None),
])
def test_outages_are_errors_of_reaching_a_dependency(error: Exception, dependency: str | None) -> None:
    """A refused, dropped, silent, loading, full or read-only server is an outage; other errors are not."""
    assert outage_of(error) == dependency


def test_redis_calls_are_bounded_by_about_a_lease_time() -> None:
    assert redis_timeout(1.0) == 1.0
    assert redis_timeout(0.5) == 1.0
    assert redis_timeout(5.0) == 5.0
    assert redis_timeout(600.0) == 5.0
