"""Long-polls and SSE streams get the WebSocket's protections, end to end on real server processes: token
expiry, the per-stream queue bounds, the per-user and per-address connection limits (counted together with
WebSocket connections), a clean end on SIGTERM, and the per-process budget of memory held by replays.

Stacks (no watcher: each test appends its envelopes to the stack's Redis streams itself, see :func:`publish`):

* ``limits``: a server allowing 2 connections per user and 3 per address, behind a trusted proxy (the clients
  send ``X-Forwarded-For`` from 127.0.0.1, each test from addresses of its own).
* ``bounds``: a server with a 64 KiB queue bound and a 16 KiB send buffer.
* ``budget``: a server with a 1 MiB replay memory budget.
* ``plain`` (per test, for SIGTERM): a server with the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.conftest import TIMEOUT, RedisServer
from tests.e2e.httpkit import SSE, Reply, SSEOpener, bearer, check_error, get, poll, poll_events, query
from tests.e2e.serverkit import Opener, Stack, running_stack, token, until

pytestmark = [pytest.mark.e2e]

SLACK = 1.5  # seconds on top of a documented moment, for scheduling
QUEUE_BYTES = 65536  # REALTIME_QUEUE_BYTES of the bounds stack
REPLAY_MEMORY = 1 << 20  # REALTIME_REPLAY_MEMORY of the bounds stack


@pytest.fixture(scope="module")
def limits(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"REALTIME_MAX_CONNECTIONS_PER_USER": "2", "REALTIME_MAX_CONNECTIONS_PER_ADDRESS": "3",
           "REALTIME_TRUSTED_PROXIES": "127.0.0.1"}
    with running_stack(redis_server, tmp_path_factory.mktemp("limits"), "hlimits", servers=1, watcher=False,
                       server_env=env) as st:
        yield st


@pytest.fixture(scope="module")
def bounds(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"REALTIME_QUEUE_BYTES": str(QUEUE_BYTES), "REALTIME_SEND_BUFFER": "16384"}
    with running_stack(redis_server, tmp_path_factory.mktemp("bounds"), "hbounds", servers=1, watcher=False,
                       server_env=env) as st:
        yield st


@pytest.fixture(scope="module")
def budget(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"REALTIME_REPLAY_MEMORY": str(REPLAY_MEMORY)}
    with running_stack(redis_server, tmp_path_factory.mktemp("budget"), "hbudget", servers=1, watcher=False,
                       server_env=env) as st:
        yield st


@pytest.fixture
def plain(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("plain"), "hplain", servers=1, watcher=False) as st:
        yield st


def publish(st: Stack, room: str, n: int, size: int = 100) -> list[str]:
    """``n`` events of ``room``, with about ``size`` bytes of text each, appended to the room's history and to
    the global stream as the watcher would; their ids."""
    last = st.r.xrevrange(st.events_key, count=1)
    ms = max(int(time.time() * 1000), int(last[0][0].decode().split("-")[0]) + 1 if last else 0)
    ids = [f"{ms}-{i}" for i in range(n)]
    with st.r.pipeline(transaction=False) as pipe:
        for i, eid in enumerate(ids):
            envelope = {"id": eid, "type": "post:created", "rooms": [room], "ts": ms,
                        "data": {"id": f"p{uuid.uuid4().hex[:8]}", "authorId": "a", "text": "x" * size, "n": i}}
            raw = orjson.dumps(envelope)
            pipe.xadd("{" + st.prefix + "}:room:" + room, {"e": raw}, id=eid)
            pipe.xadd(st.events_key, {"e": raw}, id=eid)
        pipe.execute()
    return ids


def via(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def expiry(jwt_text: str) -> float:
    """The token's ``exp``."""
    return float(jwt.decode(jwt_text, options={"verify_signature": False})["exp"])


def close_events(stream: SSE) -> list[dict[str, Any]]:
    return [orjson.loads(m.data) for m in stream.of_type("close")]


# -- token expiry -----------------------------------------------------------------------------------------------

async def test_sse_stream_ends_at_token_expiry_and_sends_nothing_after(bounds: Stack, streams: SSEOpener) -> None:
    """Pins: an SSE stream opened with a short token went on delivering user:{id} events after its exp."""
    server = bounds.servers[0]
    user = f"x{uuid.uuid4().hex[:6]}"
    room = f"user:{user}"
    short = token(user, ttl=3)
    exp = expiry(short)
    stream = await streams(server, user, [room], bearer=short, token_in_query=True)
    before = publish(bounds, room, 1)
    await stream.got(1, "an event before the token expires")
    assert stream.events()[0].id == before[0]

    await until(lambda: stream.of_type("close"), "the stream's final event at exp", exp - time.time() + SLACK * 2)
    ended_at = time.time()
    assert ended_at >= exp - 0.05, "ended before the token expired"
    assert close_events(stream) == [{"op": "close", "code": 4003, "reason": "token_expired"}]
    await stream.ended_by_server("the end of the stream")
    assert stream.terminated, "the response ends properly (last chunk), not with a cut connection"
    publish(bounds, room, 1)
    await asyncio.sleep(0.5)
    assert len(stream.events()) == 1, "nothing is delivered after exp"
    assert server.metric("realtime_closes_total", reason="token_expired") >= 1


async def test_long_poll_answers_401_when_its_token_expires_while_it_waits(bounds: Stack) -> None:
    """Pins: a long-poll kept waiting (and would have delivered) past its token's exp."""
    server = bounds.servers[0]
    user = f"x{uuid.uuid4().hex[:6]}"
    short = token(user, ttl=2)
    exp = expiry(short)
    since = bounds.last_id()
    started = time.time()
    reply = await get(server, query("/poll", rooms=f"user:{user}", since=since, wait=30),
                      {"Authorization": f"Bearer {short}"}, within=exp - started + TIMEOUT)
    answered = time.time()
    check_error(reply, "token_expired", "a poll past its token's exp")
    assert exp - 0.05 <= answered <= exp + SLACK, (answered - exp, "answers at exp, not before, not at the end")


# -- connection limits ------------------------------------------------------------------------------------------

async def test_http_streams_count_with_websockets_against_the_connection_limits(
        limits: Stack, clients: Opener, streams: SSEOpener) -> None:
    """Pins: 250 SSE streams of one user from one address were all accepted (the WebSocket allows 20 and 200)."""
    server = limits.servers[0]
    tag = uuid.uuid4().hex[:4]
    net = f"198.51.{int(tag, 16) % 200}"

    def refused(reply: Reply, what: str) -> None:
        check_error(reply, "too_many_connections", what)

    # a user with as many WebSockets as allowed can open no SSE stream and no long-poll
    u1 = f"u1{tag}"
    ws = [await clients(server, u1, rooms=["public"], headers=via(f"{net}.{i}")) for i in (1, 2)]
    refused(await get(server, query("/sse", rooms="public"), {**bearer(u1), **via(f"{net}.3")}), "SSE past the limit")
    refused(await get(server, query("/poll", rooms="public", wait=0), {**bearer(u1), **via(f"{net}.3")}),
            "poll past the limit")
    assert server.metric("realtime_refused_connections_total", reason="user") >= 2
    for c in ws:
        await c.barrier()

    # SSE streams count for the WebSocket, too
    u2 = f"u2{tag}"
    for i in (4, 5):
        await streams(server, u2, ["public"], headers=via(f"{net}.{i}"))
    late = await clients(server, u2, headers=via(f"{net}.6"))
    assert await late.closed() == 4010

    # a long-poll counts while it waits, and no longer once it has answered
    u3 = f"u3{tag}"
    room = f"post:lp{tag}"
    await clients(server, u3, rooms=["public"], headers=via(f"{net}.7"))
    waiting = asyncio.ensure_future(poll(server, u3, [room], since=limits.last_id(), wait=30,
                                         within=TIMEOUT * 3, headers=via(f"{net}.8")))
    await until(lambda: server.metric("realtime_http_listeners") >= 3, "the long-poll to wait")
    third = await clients(server, u3, headers=via(f"{net}.9"))
    assert await third.closed() == 4010
    publish(limits, room, 1)
    assert len(poll_events(await waiting)[0]) == 1
    fourth = await clients(server, u3, rooms=["public"], headers=via(f"{net}.10"))
    await fourth.barrier()

    # per address, whoever the users: SSE streams and WebSockets together
    addr = f"{net}.11"
    opened = [await streams(server, f"a{i}{tag}", ["public"], headers=via(addr)) for i in range(3)]
    refused(await get(server, query("/sse", rooms="public"), {**bearer(f"a3{tag}"), **via(addr)}),
            "SSE past the address limit")
    over = await clients(server, f"a4{tag}", headers=via(addr))
    assert await over.closed() == 4010
    assert server.metric("realtime_refused_connections_total", reason="address") >= 2
    # a place frees up when a stream goes
    await opened[0].aclose()
    await until(lambda: server.metric("realtime_http_listeners") == 4, "the closed stream to be gone")
    again = await streams(server, f"a5{tag}", ["public"], headers=via(addr))
    assert not again.ended


# -- slow SSE readers -------------------------------------------------------------------------------------------

async def test_slow_sse_reader_is_closed_at_the_queue_bound(bounds: Stack, streams: SSEOpener) -> None:
    """Pins: a stalled SSE reader was never closed and pinned server memory (its only bound: 10,000 events)."""
    server = bounds.servers[0]
    room = f"hashtag:slow{uuid.uuid4().hex[:6]}"
    healthy = await streams(server, "reader", [room])
    baseline = server.metric("realtime_slow_closes_total")

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(f"GET {query('/sse', rooms=room)} HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {token('stalled')}\r\n\r\n".encode())
        head = b""
        while b"retry:" not in head:
            head += sock.recv(1024)
        assert head.startswith(b"HTTP/1.1 200"), head
        await until(lambda: server.metric("realtime_http_listeners") == 2, "both streams listening")

        count, size, window = 400, 8000, 4  # about 3.2 MB, fifty times the bound, a few events at a time
        ids: list[str] = []
        while len(ids) < count:  # at the pace of the healthy reader, which must never pass its bound
            ids += publish(bounds, room, window, size)
            await healthy.got(len(ids), "the healthy stream's events")
        assert [m.id for m in healthy.events()] == ids
        await until(lambda: server.metric("realtime_slow_closes_total") > baseline, "the slow stream's close")
        assert server.metric("realtime_closes_total", reason="slow") >= 1
        await until(lambda: server.metric("realtime_http_listeners") == 1, "the slow stream to be gone")

        # what the stalled client finds when it reads at last: some events, then the end (and the final
        # event when it got through before the connection was cut)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := await asyncio.to_thread(sock.recv, 65536):
                data += chunk
        assert len(data) < count * size // 2, "cut well before the end"
        if b"event: close" in data:
            tail = data[data.index(b"event: close"):]
            assert b'data: {"op":"close","code":4008,"reason":"slow"}' in tail, tail[:200]
        assert not healthy.ended and not healthy.of_type("close")
    finally:
        sock.close()


# -- shutdown ---------------------------------------------------------------------------------------------------

async def test_sigterm_answers_long_polls_and_ends_sse_streams(plain: Stack, streams: SSEOpener,
                                                                clients: Opener) -> None:
    """Pins: on SIGTERM a long-poll got EOF, SSE was cut with no final event, and tasks were left pending; and
    (found by an outside audit) the WebSockets open beside them were closed with 1000, which clients take for
    the end of the session, instead of 1001."""
    server = plain.servers[0]
    publish(plain, "public", 3)
    since = plain.last_id()
    ws = await clients(server, "w1", rooms=["public"])
    stream = await streams(server, "s1", ["public"])
    waiting = asyncio.ensure_future(poll(server, "p1", ["public", "post:q1"], since=since, wait=30,
                                         within=TIMEOUT * 2))
    await until(lambda: server.metric("realtime_http_listeners") == 2, "the poll and the stream to wait")

    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    reply = await waiting
    assert reply.json() == {"events": [], "resets": [], "next": since}, reply.body
    await stream.ended_by_server("the SSE stream to end")
    assert close_events(stream) == [{"op": "close", "code": 1001, "reason": "going_away"}], stream.messages
    assert len(stream.retries) == 2, "a retry hint comes with the end"
    assert 1000 <= stream.retries[1] <= 10_000, stream.retries
    assert stream.error is None and stream.terminated
    assert await ws.closed() == 1001
    code = await asyncio.to_thread(server.proc.wait, TIMEOUT)
    assert code == 0, server.log()
    log = server.log()
    for bad in ("Task was destroyed", "never retrieved", "Traceback"):
        assert bad not in log, log


# -- replay memory ----------------------------------------------------------------------------------------------

async def test_concurrent_replays_hold_no_more_than_the_replay_memory_budget(budget: Stack,
                                                                             streams: SSEOpener) -> None:
    """Pins: concurrent replays of a large room held memory without bound (20 of 30 MB: +121 MB)."""
    server = budget.servers[0]
    tag = uuid.uuid4().hex[:6]
    room = f"post:big{tag}"
    start = budget.last_id()
    ids = publish(budget, room, 48, 6000)  # about 300 KB: a third of the budget
    huge = f"post:huge{tag}"
    publish(budget, huge, 220, 6000)  # about 1.3 MB: more than the whole budget

    async def by_poll(i: int) -> list[str]:
        for _ in range(200):
            reply = await get(server, query("/poll", rooms=room, since=start, wait=0), bearer(f"r{i}"))
            if reply.status == 503:
                check_error(reply, "unavailable", "a replay past the budget")
                await asyncio.sleep(0.05)
                continue
            items, parsed = poll_events(reply)
            assert parsed["resets"] == [], parsed["resets"]
            return [orjson.loads(x)["id"] for x in items]
        raise AssertionError("no replay got through")

    async def by_websocket(i: int) -> list[str]:
        for _ in range(200):
            async with connect(server.url, additional_headers=bearer(f"w{i}"), open_timeout=TIMEOUT) as ws:
                await ws.send(orjson.dumps({"op": "subscribe", "rooms": [room], "since": start}).decode())
                got: list[str] = []
                while True:
                    frame = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                    if frame["op"] == "event":
                        got.append(frame["id"])
                    elif frame["op"] == "error":
                        assert frame["code"] == "unavailable", frame
                        break
                    elif frame["op"] == "synced":
                        return got
            await asyncio.sleep(0.05)
        raise AssertionError("no replay got through")

    async def by_sse(i: int) -> list[str]:
        for _ in range(200):
            stream = await streams(server, f"s{i}", [room], last_event_id=start)

            def over(stream: SSE = stream) -> bool:
                return len(stream.events()) == len(ids) or bool(stream.of_type("error")) or stream.ended

            await until(over, "the SSE replay", TIMEOUT * 3)
            if len(stream.events()) == len(ids):
                return [m.id or "" for m in stream.events()]
            assert [orjson.loads(m.data)["code"] for m in stream.of_type("error")] == ["unavailable"]
            await asyncio.sleep(0.05)
        raise AssertionError("no replay got through")

    results = await asyncio.gather(*(by_poll(i) for i in range(12)), *(by_websocket(i) for i in range(6)),
                                   *(by_sse(i) for i in range(6)))
    for got in results:
        assert got == ids, "every replay, once through, is whole and in order"
    peak = server.metric("realtime_replay_memory_peak_bytes")
    assert 0 < peak <= REPLAY_MEMORY, peak
    await until(lambda: server.metric("realtime_replay_memory_bytes") == 0, "every replay to let go of its memory")

    # a replay larger than the whole budget can never fit: a reset, as past REALTIME_REPLAY_LIMIT
    _, parsed = poll_events(await poll(server, "big", [huge, room], since=start))
    assert parsed["resets"] == [{"rooms": sorted([huge, room]), "reason": "too_far_behind"}], parsed
    # next is the stream's head: after refetching, the client goes on from now (not into the same reset)
    assert parsed["events"] == [] and parsed["next"] == budget.last_id(), parsed
    assert server.metric("realtime_replay_memory_peak_bytes") <= REPLAY_MEMORY
    assert server.metric("realtime_replay_memory_bytes") == 0
