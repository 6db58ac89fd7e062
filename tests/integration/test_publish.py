"""The publish script against a real Redis: refused duplicates, and refused publishing on top of a Redis that
does not hold the last change the caller published (it came back from older data)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from realtime import events as ev
from realtime.events import Event
from tests.conftest import RedisServer
from watchers.keys import Keys
from watchers.publish import Diverged, Outcome, Publisher

pytestmark = [pytest.mark.integration]


@pytest.fixture
async def publisher(redis_server: RedisServer) -> AsyncIterator[Publisher]:
    redis = Redis.from_url(redis_server.url)
    await redis.flushall()
    yield Publisher(redis, Keys("pub"), global_maxlen=1000, room_maxlen=1000)
    await redis.aclose()


def token(seconds: int) -> str:
    """A resume token's _data for the change at (seconds, 1): they order like the changes."""
    return f"82{seconds:08X}000000012B0429"


async def publish(publisher: Publisher, seconds: int, previous: str) -> Outcome:
    event = Event(f"{ev.time_part(seconds, 1)}-0", ev.POST_CREATED, ("public",), {"id": str(seconds)}, 0)
    return await publisher.publish(lease="", token={"_data": token(seconds)}, previous=previous,
                                   at=f"{ev.time_part(seconds, 1)}:0", events=[event])


async def test_a_duplicate_is_refused_and_says_what_redis_holds(publisher: Publisher) -> None:
    assert (await publish(publisher, 100, previous="")).published
    assert (await publish(publisher, 200, previous=token(100))).published
    assert await publish(publisher, 100, previous="") == Outcome(False, last=token(200))
    assert len(await publisher.redis.xrange(publisher.keys.events)) == 2


async def test_publishing_on_top_of_another_last_token_is_refused(publisher: Publisher) -> None:
    """Redis came back from a snapshot without the change at 200: the change at 300 must not follow 100."""
    assert (await publish(publisher, 100, previous="")).published
    for expected in (token(200), ""):
        with pytest.raises(Diverged):
            await publish(publisher, 300, previous=expected)
    assert [entry_id for entry_id, _ in await publisher.redis.xrange(publisher.keys.events)] == \
        [f"{ev.time_part(100, 1)}-0".encode()]
    assert (await publisher.state())["token"] == token(100)


async def test_each_entry_of_the_global_stream_carries_the_time_redis_appended_it(publisher: Publisher) -> None:
    """The servers measure an event's wait for them (stage redis_to_server) from the entry's field ``w``: Redis's
    own clock at the append, in microseconds, between its clock before and after the publish."""
    def micros(time: tuple[int, int]) -> int:
        return time[0] * 1_000_000 + time[1]

    before = micros(await publisher.redis.time())
    assert (await publish(publisher, 100, previous="")).published
    after = micros(await publisher.redis.time())
    [(_, fields)] = await publisher.redis.xrange(publisher.keys.events)
    assert before <= int(fields[b"w"]) <= after
    [(_, room_fields)] = await publisher.redis.xrange(publisher.keys.room("public"))
    assert set(room_fields) == {b"e"}  # the room histories, replayed to clients, do without it
