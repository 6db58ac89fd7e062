"""A long-poll client after a reset (found by the chaos suite, tests/chaos): a client whose position is older than
a reset marker the watcher published (it lost history: a MongoDB that lost its oplog, Redis that lost its data)
follows the docs, polling on with the ``next`` each answer gives."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import TIMEOUT, RedisServer
from tests.e2e.httpkit import open_sse
from tests.e2e.serverkit import ServerProcess, Stack, key_of, running_stack, token, until

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path, "pollreset", servers=1, watcher=False) as st:
        yield st


class Writer:
    """Entries as the watcher writes them: events to the global stream and their rooms' history; a reset marker to
    the global stream and the resets stream."""

    def __init__(self, st: Stack) -> None:
        self.st = st
        self.tag = "{" + st.prefix + "}"
        self.ms = int(time.time() * 1000)
        self.n = 0

    def _next_id(self) -> str:
        self.n += 1
        return f"{self.ms}-{self.n}"

    def event(self, room: str) -> str:
        event_id = self._next_id()
        raw = orjson.dumps({"id": event_id, "type": "post:created", "rooms": [room], "ts": self.ms,
                            "data": {"id": f"p{self.n}", "authorId": "a1"}})
        with self.st.r.pipeline(transaction=True) as pipe:
            pipe.xadd(f"{self.tag}:events", {"e": raw}, id=event_id)
            pipe.xadd(f"{self.tag}:room:{room}", {"e": raw}, id=event_id)
            pipe.execute()
        return event_id

    def reset(self) -> str:
        marker = self._next_id()
        raw = orjson.dumps({"id": marker, "type": "reset", "rooms": ["*"], "ts": self.ms,
                            "data": {"reason": "history_lost", "code": 286}})
        with self.st.r.pipeline(transaction=True) as pipe:
            pipe.xadd(f"{self.tag}:events", {"e": raw, "t": ""}, id=marker)
            pipe.xadd(f"{self.tag}:resets", {"e": raw}, id=marker)
            pipe.execute()
        return marker


def poll(server: ServerProcess, rooms: str, since: str) -> dict[str, Any]:
    query = urllib.parse.urlencode({"rooms": rooms, "since": since, "wait": 0})
    request = urllib.request.Request(f"{server.http}/poll?{query}", headers={"Authorization": f"Bearer {token('u1')}"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
        body: dict[str, Any] = json.loads(reply.read())
        return body


def test_a_long_poll_client_goes_on_after_a_reset(stack: Stack) -> None:
    """Regression: after a reset marker, a long-poll client following `next` got the same reset forever."""
    feed = Writer(stack)
    server = stack.servers[0]
    position = feed.event("public")
    feed.reset()
    first = poll(server, "public", position)
    assert first["resets"] == [{"rooms": ["public"], "reason": "history_reset"}], first
    later = feed.event("public")  # after the reset: the client must get it
    since, got = first["next"], []
    for _ in range(5):
        reply = poll(server, "public", since)
        got += [e["id"] for e in reply["events"]]
        since = reply["next"]
        if later in got:
            break
    assert later in got, f"five polls after the reset, still {reply}"


async def test_an_sse_client_goes_on_after_a_reset(stack: Stack) -> None:
    """Regression (as for polls): after the reset of a replay, EventSource's Last-Event-ID stayed before it, so
    each reconnect was told the same reset again; an id without data now moves it past the reset."""
    feed = Writer(stack)
    server = stack.servers[0]
    position = feed.event("public")
    marker = feed.reset()
    stream = await open_sse(server, "u1", ["public"], last_event_id=position)
    try:
        await until(lambda: stream.of_type("reset"), "the reset")
        await until(lambda: stream.last_event_id is not None, "an id past the reset")
        assert stream.last_event_id is not None and key_of(stream.last_event_id) >= key_of(marker)
        later = feed.event("public")
        await stream.got(1, "the event after the reset")
        assert [m.id for m in stream.events()] == [later]
    finally:
        await stream.aclose()
    again = await open_sse(server, "u1", ["public"], last_event_id=stream.last_event_id)
    try:
        await asyncio.sleep(0.5)
        assert not again.of_type("reset"), "the reconnect was told the same reset again"
    finally:
        await again.aclose()
