"""The publish script against a real Redis: refused duplicates, and refused publishing on top of a Redis that
does not hold the last change the caller published (it came back from older data)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis
from redis.asyncio import Redis

from realtime import events as ev
from realtime.events import Counter, Event
from tests.conftest import RedisServer
from watchers.keys import Keys
from watchers.publish import BatchOutcome, Diverged, Fenced, NeedSeed, Outcome, Pending, Publisher, Seed, point

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


def changes(first: int, last: int) -> list[Pending]:
    """Changes at seconds first..last: a post:created each, and a like of post "p" each (a counted event)."""
    out = []
    for seconds in range(first, last + 1):
        t = ev.time_part(seconds, 1)
        out.append(Pending({"_data": token(seconds)}, f"{t}:0", [
            Event(f"{t}-0", ev.POST_CREATED, ("public", f"author:{seconds % 3}"), {"id": str(seconds)}, 0),
            Event(f"{t}-1", ev.POST_LIKED, ("post:p",), {"likes": 0, "id": f"l{seconds}", "postId": "p"}, 0,
                  Counter("p", 1))], index_set=[("like", f"l{seconds}", {"postId": "p", "userId": "u"})],
            posts=[(str(seconds), b'{"authorId":"a"}', 0)]))
    return out


def held(r: redis.Redis, prefix: str) -> dict[str, Any]:
    tag = "{" + prefix + "}"
    keys = sorted(k.decode() for k in r.scan_iter(match=f"{tag}:*"))
    out: dict[str, Any] = {}
    for key in keys:
        kind = r.type(key).decode()
        if kind == "stream":
            out[key[len(tag) + 1:]] = [(i, {k: v for k, v in f.items() if k != b"w"}) for i, f in r.xrange(key)]
        elif kind == "hash":
            out[key[len(tag) + 1:]] = r.hgetall(key)
        else:
            out[key[len(tag) + 1:]] = r.get(key)
    return out


async def test_a_batch_publishes_what_its_changes_publish_one_by_one(publisher: Publisher,
                                                                     redis_server: RedisServer) -> None:
    single = Publisher(publisher.redis, Keys("one"), global_maxlen=1000, room_maxlen=1000)
    seed = {"p": Seed(4, point(ev.time_part(100, 1), 0))}
    previous = ""
    for change in changes(100, 120):
        outcome = await single.publish(lease="", token=change.token, previous=previous, at=change.at,
                                       events=change.events, seeds=seed, index_set=change.index_set,
                                       posts=change.posts)
        assert outcome.published
        previous = change.token["_data"]
    assert await publisher.publish_batch(lease="", previous="", changes=changes(100, 120), seeds=seed) == \
        BatchOutcome(0, 0, token(120))
    r = redis.Redis(port=redis_server.port)
    try:
        batch, one = held(r, "pub"), held(r, "one")
    finally:
        r.close()
    assert batch == one and len(batch["events"]) == 42
    assert batch["likes"] == {b"p": b"25"}


async def test_a_batch_names_every_count_it_lacks_and_publishes_nothing(publisher: Publisher) -> None:
    batch = changes(100, 102)
    batch[2].events[1] = Event(batch[2].events[1].id, ev.POST_LIKED, ("post:q",), {"likes": 0, "postId": "q"}, 0,
                               Counter("q", 1))
    with pytest.raises(NeedSeed) as need:
        await publisher.publish_batch(lease="", previous="", changes=batch)
    assert need.value.post_ids == ["p", "q"]
    assert await publisher.redis.xlen(publisher.keys.events) == 0


async def test_a_batch_sent_again_after_a_lost_answer_publishes_nothing_twice(publisher: Publisher) -> None:
    seed = {"p": Seed(0, point(ev.time_part(100, 1), 0))}
    assert (await publisher.publish_batch(lease="", previous="", changes=changes(100, 104), seeds=seed)).skipped == 0
    again = await publisher.publish_batch(lease="", previous="", changes=changes(100, 104), seeds=seed)
    assert again == BatchOutcome(5, last=token(104))
    overlapping = await publisher.publish_batch(lease="", previous="", changes=changes(102, 107))
    assert overlapping == BatchOutcome(3, 0, token(107))
    entries = await publisher.redis.xrange(publisher.keys.events)
    ids = [entry_id for entry_id, _ in entries]
    assert len(ids) == len(set(ids)) == 16
    assert [orjson.loads(f[b"e"])["data"]["likes"] for _, f in entries if b"post:liked" in f[b"e"]] == \
        list(range(1, 9))
    assert (await publisher.state())["token"] == token(107)


async def test_a_batch_under_a_stale_lease_publishes_nothing(publisher: Publisher) -> None:
    await publisher.redis.set(publisher.keys.leader, "b:2")
    seed = {"p": Seed(0, point(ev.time_part(100, 1), 0))}
    with pytest.raises(Fenced):
        await publisher.publish_batch(lease="a:1", previous="", changes=changes(100, 104), seeds=seed)
    assert await publisher.redis.xlen(publisher.keys.events) == 0
    assert await publisher.state() == {}
    assert (await publisher.publish_batch(lease="b:2", previous="", changes=changes(100, 104), seeds=seed)).skipped == 0
    assert await publisher.redis.xlen(publisher.keys.events) == 10


async def test_a_call_carries_its_envelopes_in_one_argument_and_each_entry_holds_its_own(
        publisher: Publisher) -> None:
    """However many events a batch has, the script gets one argument with all their envelopes, and splits it by
    the byte length of each (a multi-byte character counts its bytes), past the changes it skips as well."""
    calls: list[list[Any]] = []
    script = publisher._publish

    async def spy(keys: list[Any], args: list[Any]) -> Any:
        calls.append(list(args))
        return await script(keys=keys, args=args)

    publisher._publish = spy  # type: ignore[assignment]
    seed = {"p": Seed(0, point(ev.time_part(100, 1), 0))}
    batch = changes(100, 105)
    for i, change in enumerate(batch):
        change.events[0] = Event(change.events[0].id, ev.POST_CREATED, ("public",),
                                 {"id": str(i), "title": "é" * i + "日本" + "\n" * (i % 2)}, i)
    assert (await publisher.publish_batch(lease="", previous="", changes=batch[:3], seeds=seed)).skipped == 0
    assert (await publisher.publish_batch(lease="", previous="", changes=batch)).skipped == 3
    assert [len(args) for args in calls] == [7, 7]
    entries = await publisher.redis.xrange(publisher.keys.events)
    published = [e for change in batch for e in change.events]
    assert [entry_id.decode() for entry_id, _ in entries] == [e.id for e in published]
    likes = 0
    for (_, fields), event in zip(entries, published, strict=True):
        envelope = event.envelope()
        if event.counter is not None:
            likes += 1
            envelope["data"] = {**envelope["data"], "likes": likes}
        assert fields[b"e"] == orjson.dumps(envelope)
