"""Presence against a real Redis: what this instance holds is what Redis holds, and every change of who is in a
room is announced once, whatever the order of joins, leaves and Redis's answers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from redis.asyncio import Redis

from realtime.server.presence import Presence
from realtime.tasks import cancel_all
from tests.conftest import TIMEOUT, RedisServer

ROOM = "post:p1"


class Heard:
    """The user:online / user:offline events an instance delivers to its room's members."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def deliver(self, room: str, data: bytes, _exclude: str | None) -> None:
        msg = orjson.loads(data)
        self.events.append((msg["type"], msg["data"]["userId"]))


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@asynccontextmanager
async def instance(redis_server: RedisServer, prefix: str, name: str, ttl: float = 30.0
                   ) -> AsyncIterator[tuple[Presence, Heard]]:
    r = Redis.from_url(redis_server.url)
    heard = Heard()
    p = Presence(r, prefix, heard.deliver, ttl=ttl, instance=name)
    await p.start()
    try:
        await until(lambda: _ready(p), "the presence channel")
        yield p, heard
    finally:
        await p.stop()
        await r.aclose()


async def _ready(p: Presence) -> bool:
    return p.ready


async def settled(p: Presence) -> bool:
    return not p.dirty and not any(t.done() for t in p._tasks) and p.writing_idle()


class Gate:
    """Holds each of an instance's writes to Redis (``_add`` or ``_remove``) until the test lets it go."""

    def __init__(self, p: Presence, name: str) -> None:
        self.entered, self.open = asyncio.Event(), asyncio.Event()
        original = getattr(p, name)

        async def held(room: str, user: str) -> None:
            self.entered.set()
            await self.open.wait()
            await original(room, user)

        setattr(p, name, held)

    async def wait_entered(self) -> None:
        await asyncio.wait_for(self.entered.wait(), TIMEOUT)
        self.entered.clear()

    def release(self) -> None:
        self.open.set()
        self.open = asyncio.Event()


async def test_a_leave_while_the_join_is_written_is_not_lost(redis_server: RedisServer) -> None:
    """Regression: the writer took a pair off its to-do list after writing it, so a leave that came while the
    join was on its way to Redis was forgotten: the user stayed present (and announced) after leaving."""
    prefix = uuid.uuid4().hex[:8]
    async with instance(redis_server, prefix, "a") as (a, heard):
        gate = Gate(a, "_add")
        for i in range(20):
            user = f"u{i}"
            a.joined(user, [ROOM])
            await gate.wait_entered()  # the join is on its way to Redis
            a.left(user, [ROOM])
            gate.release()
            await until(lambda: settled(a), "the writer to finish")
        assert await a.query(ROOM) == []
        await until(lambda: _count(heard, 40), "the announcements")
        for i in range(20):
            assert [e for e in heard.events if e[1] == f"u{i}"] == [("user:online", f"u{i}"),
                                                                   ("user:offline", f"u{i}")], heard.events


async def _count(heard: Heard, n: int) -> bool:
    return len(heard.events) >= n


async def test_a_rejoin_while_the_leave_is_written_is_not_lost(redis_server: RedisServer) -> None:
    prefix = uuid.uuid4().hex[:8]
    async with instance(redis_server, prefix, "a") as (a, heard):
        a.joined("u1", [ROOM])
        await until(lambda: settled(a), "the join")
        gate = Gate(a, "_remove")
        for _ in range(10):
            a.left("u1", [ROOM])
            await gate.wait_entered()  # the leave is on its way to Redis
            a.joined("u1", [ROOM])
            gate.release()
            await until(lambda: settled(a), "the writer to finish")
            assert await a.query(ROOM) == ["u1"]
        await until(lambda: _count(heard, 21), "the announcements")
        kinds = [kind for kind, _ in heard.events]
        assert kinds == ["user:online"] + ["user:offline", "user:online"] * 10, kinds


async def test_an_entry_left_by_a_try_whose_answer_was_lost_does_not_silence_the_join(
        redis_server: RedisServer) -> None:
    """Regression: when Redis ran a join's write but its answer came after the timeout, the retry found this
    instance's own entry and took the user for present already: nobody was told user:online."""
    prefix = uuid.uuid4().hex[:8]
    async with instance(redis_server, prefix, "a") as (a, heard):
        await a.redis.zadd(a.key(ROOM), {"u1|a": time.time() + 30})  # the earlier try's entry
        a.joined("u1", [ROOM])
        await until(lambda: _count(heard, 1), "user:online")
        assert heard.events == [("user:online", "u1")]


async def test_a_dead_instance_is_swept_after_redis_lost_its_data(redis_server: RedisServer) -> None:
    """Regression: after Redis lost its data, the refresh wrote the entries back but not the list of rooms the
    sweep walks: a server that died afterwards left its users present for ever."""
    prefix = uuid.uuid4().hex[:8]
    async with instance(redis_server, prefix, "b", ttl=1.5) as (_b, heard):
        r = Redis.from_url(redis_server.url)
        heard_a = Heard()
        a = Presence(r, prefix, heard_a.deliver, ttl=1.5, instance="a")
        await a.start()
        try:
            a.joined("u1", [ROOM])
            await until(lambda: _heard(heard, ("user:online", "u1")), "u1 online")
            keys = [k async for k in r.scan_iter(match=f"{{{prefix}}}:*")]
            await r.delete(*keys)  # Redis lost this deployment's data (a restart without persistence)
            await until(lambda: _listed(r, prefix), "the refresh to write the entries back")
        finally:
            await cancel_all(a._tasks)  # killed: nothing taken out of Redis
            await r.aclose()
        await until(lambda: _heard(heard, ("user:offline", "u1")), "u1 offline after the dead instance's ttl")


async def _heard(heard: Heard, event: tuple[str, str]) -> bool:
    return event in heard.events


async def _listed(r: Any, prefix: str) -> bool:
    return bool(await r.zcard(f"{{{prefix}}}:presence:{ROOM}"))
