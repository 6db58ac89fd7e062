"""The Python client (``realtime.client``) and ``realtime tail`` against real servers.

Stacks (the stand-in, a watcher and two servers on a Redis key prefix of their own; see
:mod:`tests.e2e.serverkit`):

* ``failover`` (per test): the client is given both servers' URLs and rotates through them; the one it is
  connected to is SIGKILLed while a producer writes, and it resumes on the other.
* ``shared``: the fallback to long-polling, token refresh, a terminal close, and ``realtime tail``.

How the fallback test makes the WebSocket fail: the client's WebSocket URL is the port of a third server that
is not started yet (connections are refused there), and its ``http_url`` is a live server, so it long-polls;
then the third server is started on that port and the client must go back to the WebSocket.

What the client should have received is read back from Redis (``{rt}:events``), filtered by its rooms: the
same events, once each, in id order (``check_frames``).
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from realtime.client import Client, ClientClosed, ClientEvent, Item
from tests.conftest import TIMEOUT, RedisServer
from tests.e2e.serverkit import ServerProcess, Stack, check_frames, of_rooms, running_stack, token, until
from tests.processes import ROOT

pytestmark = [pytest.mark.e2e]

FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.5, "connect_timeout": TIMEOUT}


@pytest.fixture
def failover(redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path, "cfail") as st:
        yield st


@pytest.fixture(scope="module")
def shared(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("client"), "client") as st:
        yield st


class Reader:
    """Iterates a client in a task, keeping every item."""

    def __init__(self, client: Client) -> None:
        self.items: list[Item] = []
        self.task = asyncio.get_running_loop().create_task(self._read(client))

    async def _read(self, client: Client) -> None:
        async for item in client:
            self.items.append(item)

    def events(self) -> list[ClientEvent]:
        return [i for i in self.items if isinstance(i, ClientEvent)]

    def frames(self) -> list[dict[str, Any]]:
        return [{"op": "event", "id": e.id, "type": e.type, "room": e.room, "data": e.data, "ts": e.ts}
                for e in self.events()]

    async def has(self, event_id: str, what: str) -> None:
        def seen() -> bool:
            if self.task.done():
                raise AssertionError(f"the client stopped: {self.task.exception()!r}")
            return any(e.id == event_id for e in self.events())
        await until(seen, what, TIMEOUT * 3)


def write_round(db: Any, tag: str, i: int) -> None:
    """A like and a comment on the followed post, a post by the followed author, and a like elsewhere."""
    db.likes.insert_one({"_id": f"{tag}l{i}", "postId": f"{tag}p", "userId": f"{tag}f{i % 3}"})
    db.comments.insert_one({"_id": f"{tag}c{i}", "postId": f"{tag}p", "userId": f"{tag}f{i % 4}", "text": f"c {i}"})
    if i % 4 == 0:
        db.posts.insert_one({"_id": f"{tag}q{i}", "authorId": f"{tag}u", "text": f"q {i}", "hashtags": ["x"]})
    db.likes.insert_one({"_id": f"{tag}o{i}", "postId": f"{tag}other", "userId": f"{tag}f{i % 2}"})


def finish(st: Stack, start: str, rooms: list[str]) -> tuple[list[dict[str, Any]], str]:
    """Write a sentinel post (in ``public``) and wait for it: the stored events of ``rooms`` since ``start``,
    and the sentinel's event id (the last of them)."""
    sentinel = st.sentinel()
    expected = of_rooms(st.published(sentinel), set(rooms), start)
    last = expected[-1]
    assert last["type"] == "post:created" and last["data"]["id"] == sentinel, last
    return expected, last["id"]


def rooms_of(tag: str) -> list[str]:
    return [f"post:{tag}p", f"author:{tag}u", "public"]


# -- 1. failover --------------------------------------------------------------------------------------------------

async def test_resumes_on_the_other_server_after_a_kill(failover: Stack) -> None:
    a, b = failover.servers
    tag = "k" + uuid.uuid4().hex[:6]
    rooms = rooms_of(tag)
    start = failover.last_id()
    written = 0
    rounds = 60

    def produce() -> None:
        nonlocal written
        failover.db.posts.insert_one({"_id": f"{tag}p", "authorId": f"{tag}u", "text": "followed"})
        for i in range(rounds):
            write_round(failover.db, tag, i)
            written = i + 1
            time.sleep(0.02)

    async with Client([a.url, b.url], token=token("reader"), rooms=rooms, since=start, **FAST) as client:
        reader = Reader(client)
        await until(lambda: client.state == "connected", "the client to connect", TIMEOUT)
        assert client.url == a.url and client.transport == "websocket"
        writer = asyncio.ensure_future(asyncio.to_thread(produce))
        await until(lambda: len(reader.events()) >= 10, "the first events, live from A", TIMEOUT * 3)
        await asyncio.to_thread(a.kill)
        killed_at = written
        await writer
        expected, last = await asyncio.to_thread(finish, failover, start, rooms)
        await reader.has(last, "every event, the last one included")
        assert client.url == b.url and client.connections == 2 and client.state == "connected"
        check_frames(reader.frames(), expected, rooms, "the client")
        assert client.last_id == last == client.position
    assert killed_at < rounds, "A was killed while the producer was still writing"
    assert len(expected) > rounds * 2


# -- 2. fallback to long-polling and back -----------------------------------------------------------------------

async def test_falls_back_to_polling_and_returns_to_the_websocket(shared: Stack, redis_server: RedisServer,
                                                                tmp_path: Path) -> None:
    a, _ = shared.servers
    tag = "f" + uuid.uuid4().hex[:6]
    rooms = rooms_of(tag)
    start = shared.last_id()
    spare = ServerProcess(redis_server.url, tmp_path, "client-spare", shared.prefix)  # not started: refuses
    polls = a.metric("realtime_polls_total")
    tokens: list[str] = []

    def new_token() -> str:
        tokens.append(token("reader"))
        return tokens[-1]

    client = Client(spare.url, http_url=a.http, token=new_token, rooms=rooms, since=start, fallback_after=3,
                    ws_retry=0.5, poll_wait=1.0, **FAST)
    try:
        async with client:
            reader = Reader(client)
            await until(lambda: client.transport == "polling", "the client to fall back to polling", TIMEOUT)
            assert client.state == "polling"

            def first() -> tuple[list[dict[str, Any]], str]:
                shared.db.posts.insert_one({"_id": f"{tag}p", "authorId": f"{tag}u", "text": "followed"})
                for i in range(20):
                    write_round(shared.db, tag, i)
                return finish(shared, start, rooms)

            _, last = await asyncio.to_thread(first)
            await reader.has(last, "the events, by long-polling")
            assert client.transport == "polling" and a.metric("realtime_polls_total") > polls

            def more(first_round: int) -> None:
                for i in range(first_round, first_round + 20):
                    write_round(shared.db, tag, i)
                    time.sleep(0.02)

            writer = asyncio.ensure_future(asyncio.to_thread(more, 20))  # while the client switches back
            spare.start()
            await until(lambda: client.transport == "websocket" and client.state == "connected",
                        "the client to return to the WebSocket", TIMEOUT * 3)
            assert client.url == spare.url and client.connections == 1
            await writer
            await asyncio.to_thread(more, 40)
            expected, last = await asyncio.to_thread(finish, shared, start, rooms)
            await reader.has(last, "the events after the return to the WebSocket")
            assert client.transport == "websocket"
            check_frames(reader.frames(), expected, rooms, "the client")
            assert len(expected) > 60 * 2
            assert len(tokens) == 1, "a token of 10 minutes is not refreshed"
    finally:
        spare.stop()


# -- token refresh, terminal closes ------------------------------------------------------------------------------

async def test_a_token_callable_keeps_the_session_past_exp(shared: Stack) -> None:
    a, _ = shared.servers
    tag = "r" + uuid.uuid4().hex[:6]
    rooms = rooms_of(tag)
    issued: list[float] = []

    async def short_token() -> str:  # async providers work too
        issued.append(time.time())
        return token("refresher", ttl=3)

    async with Client(a.url, token=short_token, rooms=rooms, since=shared.last_id(), **FAST) as client:
        reader = Reader(client)
        await until(lambda: client.state == "connected", "the client to connect", TIMEOUT)
        await asyncio.sleep(4.5)  # past the first token's exp: the server would close with 4003 without a refresh
        assert client.connections == 1 and client.state == "connected", "refreshed in band, no reconnect"
        assert len(issued) >= 3, issued
        _, last = await asyncio.to_thread(finish, shared, shared.last_id(), rooms)
        await reader.has(last, "an event after the refreshes")
        assert client.connections == 1


@pytest.mark.parametrize("bad", ["malformed", "forged"])
async def test_a_terminal_close_stops_the_client(shared: Stack, bad: str) -> None:
    a, _ = shared.servers
    bearer = "not-a-jwt" if bad == "malformed" else token("u1", secret="another-secret-of-at-least-32-bytes-abcdef")
    async with Client(a.url, token=bearer, rooms=["public"], **FAST) as client:
        with pytest.raises(ClientClosed) as stopped:
            async with asyncio.timeout(TIMEOUT):
                async for _ in client:
                    pass
    assert stopped.value.code == 4001 and client.connections == 0


# -- 3. realtime tail ---------------------------------------------------------------------------------------------

def read_lines(proc: subprocess.Popen[bytes], until_id: str, timeout: float) -> list[dict[str, Any]]:
    """JSON lines from the process's stdout until the event ``until_id`` (bounded by ``timeout``)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    lines: list[dict[str, Any]] = []
    while not any(line.get("id") == until_id for line in lines):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no event {until_id} within {timeout}s; {len(lines)} lines so far")
        if select.select([fd], [], [], remaining)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"realtime tail exited with {proc.wait(timeout=TIMEOUT)}")
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines += [orjson.loads(line) for line in complete]
    return lines


def start_tail(args: list[str], stderr_path: Path, **env: str) -> subprocess.Popen[bytes]:
    with stderr_path.open("wb") as stderr:
        return subprocess.Popen([sys.executable, "-m", "realtime", "tail", *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT, env=dict(os.environ, **env))


async def test_tail_prints_json_lines_and_exits_on_sigint(shared: Stack, tmp_path: Path) -> None:
    a, _ = shared.servers
    tag = "t" + uuid.uuid4().hex[:6]
    rooms = rooms_of(tag)
    start = shared.last_id()
    stderr_path = tmp_path / "tail.stderr"
    args = ["--url", a.url, "--token-env", "RT_TOKEN", "--since", start]
    for room in rooms:
        args += ["--room", room]
    proc = start_tail(args, stderr_path, RT_TOKEN=token("tailer"))
    try:
        def produce() -> tuple[list[dict[str, Any]], str]:
            shared.db.posts.insert_one({"_id": f"{tag}p", "authorId": f"{tag}u", "text": "followed"})
            for i in range(10):
                write_round(shared.db, tag, i)
            return finish(shared, start, rooms)

        expected, last = await asyncio.to_thread(produce)
        lines = await asyncio.to_thread(read_lines, proc, last, TIMEOUT * 3)
        assert {line["op"] for line in lines} <= {"event", "presence", "reset"}, lines
        check_frames([line for line in lines if line["op"] == "event"], expected, rooms, "realtime tail")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 0, stderr_path.read_text()
        assert "Traceback" not in stderr_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()
