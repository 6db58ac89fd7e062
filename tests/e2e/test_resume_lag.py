"""Resuming on a server whose stream reader is behind the client's position (found by the chaos suite,
tests/chaos): the server's path to Redis is slowed by the chaos suite's fault proxy, so its reader hands over
live events seconds late, while a client resumes there with ``since`` = an event it already has."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.chaos.proxy import ProxyLoop, Shape
from tests.conftest import TIMEOUT, RedisServer, own_redis
from tests.e2e.serverkit import Opener, Stack, running_stack, until

pytestmark = pytest.mark.e2e

LAG = 1.0  # seconds the proxy adds to every chunk between the server and Redis, each way


@pytest.fixture
def redis_own(tmp_path: Path) -> Iterator[RedisServer]:
    with own_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def proxies() -> Iterator[ProxyLoop]:
    loop = ProxyLoop(seed=1)
    yield loop
    loop.close()


@pytest.fixture
def slow_stack(redis_own: RedisServer, proxies: ProxyLoop, tmp_path: Path) -> Iterator[Stack]:
    link = proxies.link("server>redis", ("127.0.0.1", redis_own.port))
    via = RedisServer(f"redis://127.0.0.1:{link.port}/0", link.port, redis_own.process)
    env = {"REALTIME_RETRY_SECONDS": "30", "REALTIME_REDIS_TIMEOUT": "10"}
    with running_stack(via, tmp_path, "lag", servers=1, watcher=False, server_env=env) as st:
        yield st


def publish(st: Stack, n: int, rooms: list[str]) -> str:
    """An event as the watcher writes it: to the global stream and to each room's history."""
    event_id = f"{int(time.time() * 1000)}-{n}"
    raw = orjson.dumps({"id": event_id, "type": "post:created", "rooms": rooms, "ts": int(time.time() * 1000),
                        "data": {"id": f"p{n}", "authorId": "a1", "text": "hello"}})
    tag = "{" + st.prefix + "}"
    with st.r.pipeline(transaction=True) as pipe:
        pipe.xadd(f"{tag}:events", {"e": raw}, id=event_id)
        for room in rooms:
            pipe.xadd(f"{tag}:room:{room}", {"e": raw}, id=event_id)
        pipe.execute()
    return event_id


async def test_resuming_on_a_lagging_server_gives_nothing_at_or_before_since(
        slow_stack: Stack, proxies: ProxyLoop, clients: Opener) -> None:
    """Regression: a client resuming with since=X on a server whose reader had not reached X yet got X again."""
    server = slow_stack.servers[0]
    watching = await clients(server, "u1", rooms=["public"])  # the room has a member: live events are fanned out
    proxies.shape("server>redis", Shape(delay=LAG))
    seen = publish(slow_stack, 1, ["public"])  # the resuming client had it from another server
    resuming = await clients(server, "u2")
    # (subscribed comes once history is read: several round trips through the slowed path)
    reply = await resuming.reply(await resuming.send(op="subscribe", rooms=["public"], since=seen), TIMEOUT * 3)
    assert reply["op"] == "subscribed", reply
    await until(lambda: any(f["op"] == "synced" for f in resuming.frames), "synced", TIMEOUT * 3, resuming)
    later = publish(slow_stack, 2, ["public"])
    await until(lambda: later in {f["id"] for f in resuming.events()}, "the next event", TIMEOUT * 3, resuming)
    await until(lambda: later in {f["id"] for f in watching.events()}, "the next event", TIMEOUT * 3, watching)
    assert [f["id"] for f in resuming.events()] == [later]
