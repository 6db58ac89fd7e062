"""A replay's reads of history on a real redis-server: History.pages (a Lua script that bounds each read by
bytes) and collect() under a replay memory budget."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from realtime.server.budget import ReplayBusy, ReplayMemory
from realtime.server.history import History
from realtime.server.transports import ENTRY_EXTRA, collect, event_payload
from tests.conftest import RedisServer

pytestmark = [pytest.mark.integration]


@pytest.fixture
async def history(redis_server: RedisServer) -> AsyncIterator[History]:
    redis = Redis.from_url(redis_server.url)
    tag = "{r" + uuid.uuid4().hex[:8] + "}"
    yield History(redis, f"{tag}:events", f"{tag}:resets", f"{tag}:room:")
    await redis.aclose()


async def append(history: History, events: list[dict[str, Any]]) -> None:
    """As the watcher writes them: the global stream, and each of the event's rooms."""
    async with history.redis.pipeline(transaction=False) as pipe:
        for e in events:
            raw = orjson.dumps(e)
            pipe.xadd(history.events_key, {"e": raw}, id=e["id"])
            for room in e["rooms"]:
                pipe.xadd(history.room_prefix + room, {"e": raw}, id=e["id"])
        await pipe.execute()


def make(n: int, seed: int = 3) -> list[dict[str, Any]]:
    """Events of sizes from a few bytes to 200 KB, in post:a, post:b or both (in either order)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rooms = rng.choice([["post:a"], ["post:b"], ["post:a", "post:b"], ["post:b", "post:a"]])
        size = 200_000 if i == n // 2 else rng.choice([5, 300, 3_000, 20_000])
        out.append({"id": f"{1000 + i}-0", "type": "comment:added", "rooms": rooms, "ts": 1,
                    "data": {"i": i, "text": "y" * size}})
    return out


async def test_pages_are_bounded_by_bytes_and_say_what_did_not_fit(history: History) -> None:
    events = make(40)
    await append(history, events)
    in_a = [e for e in events if "post:a" in e["rooms"]]
    sizes = [len(orjson.dumps(e)) + ENTRY_EXTRA for e in in_a]
    after, got = "0-0", []
    rounds = 0
    while True:
        rounds += 1
        (entries, next_size), = (await history.pages({"post:a": (after, 50_000, 1000, 0)}, ENTRY_EXTRA)).values()
        assert sum(len(raw) + ENTRY_EXTRA for _, raw in entries) <= 50_000
        got += entries
        if not next_size:
            break
        if not entries:  # the next entry alone is larger than the bound: it says how large
            assert next_size == sizes[len(got)] and next_size > 50_000
            (entries, _), = (await history.pages({"post:a": (after, next_size, 1000, 0)}, ENTRY_EXTRA)).values()
            assert len(entries) == 1
            got += entries
        after = got[-1][0].decode()
    assert [eid.decode() for eid, _ in got] == [e["id"] for e in in_a]
    assert [orjson.loads(raw) for _, raw in got] == in_a
    assert rounds > 3
    # the count bound, and a room with nothing
    pages = await history.pages({"post:a": ("0-0", 10**9, 5, 300), "post:none": ("0-0", 1000, 5, 0)}, ENTRY_EXTRA)
    assert [len(pages["post:a"][0]), pages["post:a"][1]] == [5, 0] and pages["post:none"] == ([], 0)


async def test_collect_merges_rooms_within_the_budget(history: History) -> None:
    events = make(60)
    await append(history, events)
    memory = ReplayMemory(1 << 20, 1.0)
    rooms = ("post:b", "post:a")
    got = await collect(history, rooms, "1004-0", 10_000, memory=memory)
    expected = [e for e in events if e["id"] > "1004-0"]
    assert [f"{k[0]}-{k[1]}" for k, _, _ in got.events] == [e["id"] for e in expected]
    for (_, room, payload), e in zip(got.events, expected, strict=True):
        label = next(r for r in e["rooms"] if r in rooms)  # as live delivery labels it
        assert room == label and payload == event_payload(e, label)
    assert got.resets == {} and got.replayed == {"post:a", "post:b"}
    assert memory.held == 0 and 0 < memory.peak <= memory.limit

    # past the replay limit, or past the whole budget: a reset
    too_far = {"too_far_behind": ["post:a", "post:b"]}
    got = await collect(history, rooms, "0-0", 20, memory=memory)
    assert got.events == [] and {k: sorted(v) for k, v in got.resets.items()} == too_far
    small = ReplayMemory(150_000, 1.0)  # smaller than the 200 KB event
    got = await collect(history, rooms, "0-0", 10_000, memory=small)
    assert got.events == [] and {k: sorted(v) for k, v in got.resets.items()} == too_far
    assert small.held == 0 and small.peak <= small.limit
    start = next(i for i in range(31, 60) if sum(len(orjson.dumps(e)) for e in events[i:]) < 50_000)
    got = await collect(history, rooms, events[start - 1]["id"], 10_000, memory=small)  # what fits
    assert len(got.events) == 60 - start and small.peak <= small.limit and small.held == 0


async def test_a_replay_given_a_hold_keeps_it_until_the_caller_lets_go(history: History) -> None:
    await append(history, make(30))
    memory = ReplayMemory(1 << 20, 0.05)
    async with memory.hold() as hold:
        got = await collect(history, ("post:a",), "0-0", 10_000, memory=hold)
        kept = sum(len(payload) + ENTRY_EXTRA for _, _, payload in got.events)
        assert hold.size == kept == memory.held
        async with memory.hold() as other:  # a younger replay: the budget is not all there
            await other.grow(memory.limit - kept)
            with pytest.raises(ReplayBusy):
                await collect(history, ("post:b",), "0-0", 10_000, memory=memory)
    assert memory.held == 0


class Interleaving(History):
    """History whose second round of reads lets the watcher publish more before it is answered: what happens
    when rooms are read in rounds while events go on being published."""

    more: list[dict[str, Any]]
    rounds = 0

    async def pages(self, reads: dict[str, tuple[str, int, int, int]], extra: int
                    ) -> dict[str, tuple[list[tuple[bytes, bytes]], int]]:
        self.rounds += 1
        if self.rounds == 2:
            await append(self, self.more)
        return await super().pages(reads, extra)


async def test_a_replay_is_one_moment_for_every_room(history: History) -> None:
    """Regression (found by an outside audit): rooms read in rounds while events went on being published left
    a hole in a quiet room (read to its end in the first round) before the busy room's newer events, and a
    poll then answered with next beyond the hole."""
    busy = [{"id": f"{100 + i}-0", "type": "post:created", "rooms": ["post:busy"], "ts": 1,
             "data": {"i": i, "text": "x" * 20_000}} for i in range(20)]  # rounds of reads
    quiet = [{"id": "150-0", "type": "post:created", "rooms": ["post:quiet"], "ts": 1, "data": {"i": 0}}]
    await append(history, busy + quiet)
    interleaving = Interleaving(history.redis, history.events_key, history.resets_key, history.room_prefix)
    interleaving.more = [{"id": "200-0", "type": "post:created", "rooms": ["post:quiet"], "ts": 1, "data": {}},
                         {"id": "201-0", "type": "post:created", "rooms": ["post:busy"], "ts": 1, "data": {}}]
    got = await collect(interleaving, ("post:busy", "post:quiet"), "0-0", 1000,
                        memory=ReplayMemory(1 << 24, 1.0))
    assert interleaving.rounds >= 2, "the busy room was read in one round: the test proves nothing"
    ids = [f"{k[0]}-{k[1]}" for k, _, _ in got.events]
    assert "201-0" not in ids or "200-0" in ids, f"a hole: 200-0 (post:quiet) is missing before 201-0: {ids}"
    assert ids == [e["id"] for e in sorted(busy + quiet, key=lambda e: int(e["id"].split("-")[0]))], ids
