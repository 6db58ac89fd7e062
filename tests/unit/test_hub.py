"""realtime.server.hub: a replay's hold on a connection is always released, and what it keeps is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import socket
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from websockets.protocol import State

from realtime.events import parse_id
from realtime.protocol import Session, SessionConfig
from realtime.resume import RoomHistory, StreamState
from realtime.server.budget import ReplayMemory
from realtime.server.hub import Conn, Hub


def split_frames(data: bytes) -> list[bytes]:
    """The unmasked frames of one write (the fan-out writes several events' frames at once)."""
    out, i = [], 0
    while i < len(data):
        n, head = data[i + 1] & 0x7F, 2
        if n == 126:
            n, head = int.from_bytes(data[i + 2:i + 4], "big"), 4
        elif n == 127:
            n, head = int.from_bytes(data[i + 2:i + 10], "big"), 10
        out.append(data[i:i + head + n])
        i += head + n
    return out


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []  # what each write() got
        self.written: list[bytes] = []  # the frames of those writes, one by one
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.written.extend(split_frames(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> Any:
        return None

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.closed = True


def connection(hub: Hub, rooms: list[str], transport: FakeTransport | None = None) -> tuple[Conn, FakeTransport]:
    transport = transport or FakeTransport()
    ws = SimpleNamespace(ws_proto=SimpleNamespace(state=State.OPEN), io_proto=SimpleNamespace(transport=transport))
    session = Session(SessionConfig(allow_anonymous=True), None, time.time)
    session.rooms.update(rooms)
    conn = Conn(hub, ws, session, "127.0.0.1")
    hub.add(conn)
    hub.join(conn, rooms)
    return conn, transport


def entry(n: int, rooms: list[str], size: int = 10) -> tuple[bytes, list[bytes]]:
    envelope = {"id": f"1-{n}", "type": "post:created", "rooms": rooms, "data": {"text": "x" * size}, "ts": 1}
    return f"1-{n}".encode(), [b"e", orjson.dumps(envelope)]


def ids(transport: FakeTransport) -> list[str]:
    out = []
    for data in transport.written:
        start = data.index(b"{")
        msg = orjson.loads(data[start:])
        if msg.get("op") == "event":
            out.append(msg["id"])
    return out


async def test_events_kept_during_a_hold_are_handed_back_in_order() -> None:
    hub = Hub(queue_bytes=1 << 20, queue_messages=100)
    conn, transport = connection(hub, ["public"])
    with hub.holding(conn) as hold:
        hub.on_entries([entry(1, ["public"]), entry(2, ["public"])])
        assert ids(transport) == []  # kept, not written
        kept = hold.release()
        assert [k for k, *_ in kept] == [(1, 1), (1, 2)]
        assert [rooms for *_, rooms in kept] == [["public"], ["public"]]
    hub.on_entries([entry(3, ["public"])])
    assert ids(transport) == ["1-3"]  # live again


async def test_a_hold_is_released_when_the_replay_fails() -> None:
    """Regression: an exception between hold and release (a presence join to a Redis that refused writes) left
    the connection held for good: every later event was kept aside, none delivered."""
    hub = Hub(queue_bytes=1 << 20, queue_messages=100)
    conn, transport = connection(hub, ["public"])
    with pytest.raises(ConnectionError), hub.holding(conn):
        hub.on_entries([entry(1, ["public"])])
        raise ConnectionError("Redis went away")
    assert conn.pending is None
    hub.on_entries([entry(2, ["public"])])
    assert ids(transport) == ["1-2"]  # what was kept during the failed replay is dropped, live goes on


@pytest.mark.parametrize(("queue_bytes", "queue_messages", "size", "fit"),
                         [(1 << 20, 5, 10, 5), (4096, 10_000, 1000, 3)])
async def test_what_a_hold_keeps_is_bounded_like_the_queue(queue_bytes: int, queue_messages: int, size: int,
                                                           fit: int) -> None:
    """Regression: events kept during a hold piled up without bound while the replay waited on Redis. Past the
    bounds the hold keeps no more and says from which event on (for the replay to read them from history): the
    connection is not closed (it was, as slow, although the client read fine)."""
    hub = Hub(queue_bytes=queue_bytes, queue_messages=queue_messages, close_timeout=0.01)
    conn, transport = connection(hub, ["public"])
    _, other_transport = connection(hub, ["public"])
    with hub.holding(conn) as hold:
        hub.on_entries([entry(n, ["public"], size) for n in range(1, 21)])
        assert conn.alive and not transport.closed and transport.written == []
        assert [k for k, *_ in hold.take()] == [(1, n) for n in range(1, fit + 1)]  # the first ones, in order
        assert hold.spilled == (1, fit + 1)  # the first one not kept
        hub.on_entries([entry(21, ["public"], size)])
        assert [k for k, *_ in hold.release()] == [(1, 21)] and hold.spilled is None  # kept again after the take
    assert hub.metrics.slow.value() == 0
    assert len(ids(other_transport)) == 21  # the others get everything


async def test_a_connection_is_held_by_one_replay_at_a_time() -> None:
    hub = Hub(queue_bytes=1 << 20, queue_messages=100)
    conn, _ = connection(hub, ["public"])
    with hub.holding(conn), pytest.raises(RuntimeError), hub.holding(conn):
        pass


async def test_a_failure_nobody_foresaw_closes_the_connection_1011(caplog: pytest.LogCaptureFixture) -> None:
    """Regression: an exception in handling a client message escaped the fast path's message task ("Task
    exception was never retrieved") and left the connection open, deaf to its rooms."""
    from realtime.protocol import Send
    from realtime.server import app

    hub = Hub(queue_bytes=1 << 20, queue_messages=100)
    conn, _ = connection(hub, ["public"])
    closed: list[tuple[int, str]] = []

    async def close(code: int, reason: str) -> None:
        closed.append((code, reason))

    conn.ws.close = close
    state: Any = SimpleNamespace(hub=hub)
    broken = Send(frame=None)  # type: ignore[arg-type]  # makes _apply fail as a bug would
    await app._handle(state, conn, [broken])
    assert closed == [(1011, "internal error")]
    assert not conn.alive and conn not in hub.conns
    assert hub.metrics.closes.value(reason="internal") == 1
    assert "closing its connection with 1011" in caplog.text


async def test_a_client_frame_that_makes_the_session_fail_closes_1011_and_the_worker_ends_clean(
        caplog: pytest.LogCaptureFixture) -> None:
    """Regression: the fast path called ``session.receive`` outside the guard of ``_handle``: an exception there
    ended the message task ("Task exception was never retrieved") and left the connection open, deaf."""
    from realtime.server import app

    class Broken(Session):
        def receive(self, data: str | bytes) -> list[Any]:
            raise RuntimeError("a bug")

    hub = Hub(queue_bytes=1 << 20, queue_messages=100)
    conn, _ = connection(hub, ["public"])
    conn.session = Broken(SessionConfig(allow_anonymous=True), None, time.time)
    closed: list[tuple[int, str]] = []

    async def close(code: int, reason: str) -> None:
        closed.append((code, reason))

    conn.ws.close = close
    state: Any = SimpleNamespace(hub=hub, closing=set(), cfg=SimpleNamespace(
        session=SessionConfig(), queue_bytes=1 << 20, max_frame=1 << 16))
    inbox = app.Inbox(state, conn)
    inbox.receive('{"op": "ping"}')
    worker = inbox.worker
    assert worker is not None
    await asyncio.wait([worker])
    assert worker.exception() is None
    assert closed == [(1011, "internal error")]
    assert not conn.alive and hub.metrics.closes.value(reason="internal") == 1
    assert "RuntimeError: a bug" in caplog.text


@pytest.mark.parametrize(("waiting", "size"), [(10, 10), (4, 1000)], ids=["messages", "bytes"])
async def test_client_frames_waiting_behind_a_slow_one_are_bounded_4009(monkeypatch: pytest.MonkeyPatch,
                                                                         waiting: int, size: int) -> None:
    """Regression: while the fast path handled a slow frame (a replay waiting on Redis or on the replay memory),
    every frame the client sent meanwhile was kept, without bound. Past REALTIME_BURST +
    REALTIME_FLOOD_CLOSE_AFTER frames, or REALTIME_QUEUE_BYTES (at least a frame's size) of them, the connection
    is closed as a flood (4009), and what waited is dropped."""
    from realtime.server import app

    hub = Hub(queue_bytes=4096, queue_messages=100)
    conn, transport = connection(hub, ["public"])
    closed: list[tuple[int, str]] = []

    async def close(code: int, reason: str) -> None:
        closed.append((code, reason))

    conn.ws.close = close
    state: Any = SimpleNamespace(hub=hub, closing=set(), cfg=SimpleNamespace(
        session=SessionConfig(burst=4, flood_close_after=6), queue_bytes=4096, max_frame=1024))
    gate = asyncio.Event()
    real_apply = app._apply
    calls = []

    async def apply(state: Any, conn: Conn, actions: list[Any]) -> None:
        calls.append(actions)
        if len(calls) == 1:
            await gate.wait()  # the first frame is a slow one
        await real_apply(state, conn, actions)

    monkeypatch.setattr(app, "_apply", apply)
    ping = orjson.dumps({"op": "ping", "pad": "x" * (size - 30)}).decode()
    inbox = app.Inbox(state, conn)
    inbox.receive(ping)
    worker = inbox.worker
    assert worker is not None
    await asyncio.sleep(0)  # the worker takes the first frame, and waits
    for _ in range(waiting):
        inbox.receive(ping)
    assert conn.alive and not closed  # as many as the bounds allow: they wait
    inbox.receive(ping)
    closing = [t for t in state.closing if t is not worker]
    assert closing, "one frame over the bounds did not close the connection"
    await asyncio.wait(closing)
    assert closed == [(4009, "flood")]
    assert not conn.alive and inbox.messages is None  # what waited is dropped
    assert hub.metrics.closes.value(reason="flood") == 1
    inbox.receive(ping)
    assert inbox.messages is None  # and so is what comes after
    gate.set()
    await asyncio.wait([worker])
    assert worker.exception() is None
    assert transport.written == []  # not even the slow frame's answer: the connection is closed


async def test_the_frames_of_one_read_are_answered_and_rate_limited_as_a_flood_not_dropped() -> None:
    """Regression: a client's burst that arrived in one read from the socket (400 pings, as a loaded server
    reads them) was past the bound of what may wait before the worker had begun, so the connection was closed
    with nothing answered: no pong for the burst, no rate_limited before the flood close."""
    from realtime.server import app

    hub = Hub(queue_bytes=1 << 20, queue_messages=1000)
    conn, transport = connection(hub, ["public"])
    closed: list[tuple[int, str]] = []

    async def close(code: int, reason: str) -> None:
        closed.append((code, reason))

    conn.ws.close = close
    state: Any = SimpleNamespace(hub=hub, closing=set(), cfg=SimpleNamespace(
        session=SessionConfig(allow_anonymous=True, burst=4, flood_close_after=6), queue_bytes=1 << 20,
        max_frame=1024))
    conn.session = Session(state.cfg.session, None, time.time)
    inbox = app.Inbox(state, conn)
    for i in range(400):  # one read: all before the worker runs
        inbox.receive(orjson.dumps({"op": "ping", "ref": i}).decode())
    assert not closed and inbox.worker is not None
    await asyncio.wait([inbox.worker, *state.closing])
    ops = [f.get("code", f["op"]) for f in frames(transport) if f.get("op") in ("pong", "error")]
    assert ops[:4] == ["pong"] * 4 and "rate_limited" in ops, ops
    assert closed == [(4009, "flood")]


def frames(transport: FakeTransport) -> list[dict[str, Any]]:
    """The server's text frames written, parsed (``written`` holds each write's frames one by one)."""
    return [orjson.loads(f[f.index(b"{"):]) for f in transport.written if f[0] & 0x0F == 0x1]


async def test_a_replay_merges_the_live_events_kept_meanwhile_in_id_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Live events that arrive while a replay is read: those older than its last event are merged into it by
    id (a client's position never goes back), the rest come after `synced`, and none comes twice."""
    from realtime.server import app
    from realtime.server.transports import Collected

    hub = Hub(queue_bytes=1 << 20, queue_messages=100)
    conn, transport = connection(hub, ["public"])

    async def collect(*args: Any, **kwargs: Any) -> Collected:
        # While history is read: 1-3 (public, another room), 1-4 (post:x, also in history), 1-6 (post:x, newer)
        hub.on_entries([entry(3, ["public"]), entry(4, ["post:x"]), entry(6, ["post:x"])])
        got = Collected()
        for n in (2, 4, 5):
            got.events.append(((1, n), "post:x", orjson.dumps({"op": "event", "id": f"1-{n}", "room": "post:x"})))
        got.replayed.add("post:x")
        return got

    monkeypatch.setattr(app, "collect", collect)
    state: Any = SimpleNamespace(hub=hub, history=None, deep=None, presence=None, replays=ReplayMemory(1 << 20, 1.0),
                                 reader=SimpleNamespace(last=b"1-9"),
                                 cfg=SimpleNamespace(replay_limit=100, retry_seconds=1.0, presence_rooms=("post:",),
                                                     heartbeat_timeout=1.0))
    conn.session.rooms.add("post:x")
    await app._replay(state, conn, ("post:x",), "1-1", "r", join=True)
    sent = [(f["op"], f.get("id")) for f in frames(transport)]
    assert sent == [("subscribed", None), ("event", "1-2"), ("event", "1-3"), ("event", "1-4"), ("event", "1-5"),
                    ("synced", None), ("event", "1-6")]
    assert frames(transport)[5]["last"] == "1-5"


class QueuingTransport(FakeTransport):
    """A transport whose client reads ``reads`` bytes each time the loop looks (0: a client that reads
    nothing); what it has not read stays unsent."""

    def __init__(self, reads: int) -> None:
        super().__init__()
        self.reads = reads
        self.taken = 0

    def get_write_buffer_size(self) -> int:
        self.taken = min(self.taken + self.reads, sum(map(len, self.writes)))
        return sum(map(len, self.writes)) - self.taken


async def replay_to(monkeypatch: pytest.MonkeyPatch, transport: FakeTransport, events: int, *,
                    queue_bytes: int = 1 << 20, chunk: int = 1024) -> tuple[Hub, Conn]:
    """A replay of ``events`` events of ``public`` (each about 150 bytes) to a connection on ``transport``,
    with a bound of 50 unsent frames (and ``queue_bytes``) and a stall bound of 0.2 s."""
    from realtime.server import app
    from realtime.server.transports import Collected

    hub = Hub(queue_bytes=queue_bytes, queue_messages=50, close_timeout=0.01)
    conn, _ = connection(hub, [], transport)

    async def collect(*args: Any, **kwargs: Any) -> Collected:
        got = Collected()
        for n in range(2, 2 + events):
            got.events.append(((1, n), "public", orjson.dumps({"op": "event", "id": f"1-{n}", "room": "public",
                                                                "data": {"text": "x" * 100}})))
        got.replayed.add("public")
        return got

    monkeypatch.setattr(app, "collect", collect)
    state: Any = SimpleNamespace(hub=hub, history=None, deep=None, presence=None, replays=ReplayMemory(1 << 20, 1.0),
                                 reader=SimpleNamespace(last=b"1-999"),
                                 cfg=SimpleNamespace(replay_limit=1000, retry_seconds=1.0, presence_rooms=("post:",),
                                                     heartbeat_timeout=0.2))
    conn.session.rooms.add("public")
    monkeypatch.setattr(app, "REPLAY_CHUNK", chunk)
    await app._replay(state, conn, ("public",), "1-1", "r", join=True)
    return hub, conn


def replayed(transport: FakeTransport) -> list[str]:
    return [f["id"] for f in frames(transport) if f["op"] == "event"]


async def test_replayed_frames_go_in_few_writes() -> None:
    """A replay writes its frames many at a time (one system call for many events, not one each), in id order."""
    transport = FakeTransport()
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub, conn = await replay_to(monkeypatch, transport, 40)
    assert replayed(transport) == [f"1-{n}" for n in range(2, 42)]
    assert len(transport.writes) < 10  # subscribed, the replay in chunks of about 1 KiB, synced
    assert conn in hub.conns and not transport.closed


async def test_a_long_replay_goes_at_the_pace_of_a_client_that_reads() -> None:
    """A replay of many more frames than the bound of unsent ones (50) to a client that reads slowly: each
    chunk waits for the client to take the last, so the client gets it whole and is not closed as slow."""
    transport = QueuingTransport(reads=300)
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub, conn = await replay_to(monkeypatch, transport, 400)
    assert replayed(transport) == [f"1-{n}" for n in range(2, 402)]
    assert frames(transport)[-1]["op"] == "synced"
    assert conn in hub.conns and not transport.closed
    assert hub.metrics.slow.value() == 0


async def test_a_replay_part_fits_in_the_bound_of_unsent_bytes() -> None:
    """Regression (CI met it): a replay part larger than REALTIME_QUEUE_BYTES, written when the kernel's buffers
    were full from the last one, was all unsent at once and closed a client that was reading as slow (4008).
    A part is at most half the byte bound."""
    transport = QueuingTransport(reads=300)
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub, conn = await replay_to(monkeypatch, transport, 400, queue_bytes=4096, chunk=64 * 1024)
    assert replayed(transport) == [f"1-{n}" for n in range(2, 402)]
    assert hub.metrics.slow.value() == 0 and conn in hub.conns and not transport.closed
    assert max(map(len, transport.writes)) <= 2048


async def test_a_replay_to_a_client_that_reads_nothing_is_closed_as_slow() -> None:
    """A client that takes nothing of a replay for REALTIME_HEARTBEAT_TIMEOUT is closed as slow (4008): the
    replay stops after the chunk it did not take."""
    transport = QueuingTransport(reads=0)
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub, conn = await replay_to(monkeypatch, transport, 400)
    sent = replayed(transport)
    assert 0 < len(sent) <= 25 and sent == [f"1-{n}" for n in range(2, 2 + len(sent))]
    assert conn not in hub.conns and transport.closed
    assert hub.metrics.slow.value() == 1
    assert transport.written[-1][:2] == bytes([0x88, 0x06]) and int.from_bytes(transport.written[-1][2:4]) == 4008


async def test_a_connection_catching_up_gets_nothing_it_has_and_everything_else() -> None:
    """Regression (found by the chaos suite): a client resuming on a server whose stream reader was behind its
    position got again, live, the events it resumed after."""
    hub = Hub(queue_bytes=1 << 20, queue_messages=100)
    conn, transport = connection(hub, ["public", "post:x"])
    hub.catch_up(conn, (1, 6), ("public",))
    hub.on_entries([entry(4, ["public"]), entry(5, ["post:x"]), entry(6, ["public", "post:x"])])
    assert ids(transport) == ["1-5"]  # what is in public up to 1-6 the client has; post:x alone it has not
    assert conn.catch is not None
    hub.on_entries([entry(7, ["public"]), entry(8, ["public"])])
    assert ids(transport) == ["1-5", "1-7", "1-8"] and conn.catch is None  # past its position: live again


def stamped(n: int, rooms: list[str], stamp: bytes) -> tuple[bytes, list[bytes]]:
    """A stream entry as the publish script writes it: envelope, token, and Redis's clock in microseconds."""
    entry_id, fields = entry(n, rooms)
    return entry_id, [*fields, b"t", b"token", b"w", stamp]


async def test_the_wait_in_redis_is_observed_per_event_from_the_entrys_append_time() -> None:
    hub = Hub(queue_bytes=1 << 20, queue_messages=100)
    connection(hub, ["public"])
    hour_ago = str(int((time.time() - 3600) * 1_000_000)).encode()
    hub.on_entries([stamped(1, ["public"], hour_ago), stamped(2, ["post:nobody"], hour_ago),
                    entry(3, ["public"]),  # a reset marker, or an entry of an older watcher: no time, no sample
                    stamped(4, ["public"], b"garbage")])
    waited = hub.metrics.from_redis
    assert waited.count == 2  # every stamped event, read whether anyone here subscribes to its rooms or not
    assert 2 * 3600 <= waited.sum < 2 * 3600 + 60
    assert hub.metrics.events.value() == 4  # a bad stamp costs the event nothing


async def test_the_time_to_the_sockets_is_observed_once_per_event_and_room_with_subscribers_here() -> None:
    hub = Hub(queue_bytes=1 << 20, queue_messages=100)
    _, a = connection(hub, ["public"])
    _, b = connection(hub, ["public", "post:x"])
    hub.on_entries([entry(1, ["public"]), entry(2, ["public", "post:x", "post:nobody"]), entry(3, ["post:nobody"])])
    assert ids(a) == ["1-1", "1-2"] and ids(b) == ["1-1", "1-2"]
    written = hub.metrics.to_socket
    assert written.count == 3  # 1-1 in public; 1-2 in public and post:x; nothing where nobody listens
    assert written.sum > 0
    text = hub.metrics.registry.render()
    assert 'realtime_stage_latency_seconds_count{stage="server_to_socket"} 3' in text.splitlines()
    assert 'realtime_stage_latency_seconds_count{stage="redis_to_server"} 0' in text.splitlines()


def labelled(transport: FakeTransport) -> list[tuple[str, str]]:
    return [(f["id"], f["room"]) for f in frames(transport) if f["op"] == "event"]


async def test_a_read_of_several_events_goes_to_each_connection_in_one_write_in_id_order() -> None:
    """A server behind the stream catches up: the events of one read reach a connection in one write (they went
    one write per event and connection, so a server behind stayed behind), each once, in id order across its
    rooms."""
    hub = Hub(queue_bytes=1 << 20, queue_messages=100)
    _, a = connection(hub, ["public"])
    _, b = connection(hub, ["public", "post:x"])
    _, c = connection(hub, ["post:x"])
    hub.on_entries([entry(1, ["public"]), entry(2, ["post:x"]), entry(3, ["public", "post:x"]), entry(4, ["public"])])
    assert labelled(a) == [("1-1", "public"), ("1-3", "public"), ("1-4", "public")]
    assert labelled(b) == [("1-1", "public"), ("1-2", "post:x"), ("1-3", "public"), ("1-4", "public")]
    assert labelled(c) == [("1-2", "post:x"), ("1-3", "post:x")]
    assert [len(t.writes) for t in (a, b, c)] == [1, 1, 1]
    assert hub.metrics.deliveries.value() == 9
    assert hub.metrics.to_socket.count == 5  # once per event and room, as when they came one by one


async def test_a_reset_in_a_read_comes_between_the_events_around_it() -> None:
    hub = Hub(queue_bytes=1 << 20, queue_messages=100)
    _, a = connection(hub, ["public"])
    reset = {"id": "1-2", "type": "reset", "rooms": ["*"], "data": {"reason": "history_lost"}, "ts": 1}
    hub.on_entries([entry(1, ["public"]), (b"1-2", [b"e", orjson.dumps(reset)]), entry(3, ["public"])])
    assert [(f["op"], f.get("id")) for f in frames(a)] == [("event", "1-1"), ("reset", "1-2"), ("event", "1-3")]


class SocketTransport(FakeTransport):
    """A transport over one end of a socket pair, as the fast path sees it (its descriptor is written directly)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass


def fast_connection(hub: Hub, rooms: list[str], pairs: list[socket.socket]) -> tuple[Conn, socket.socket]:
    ours, theirs = socket.socketpair()
    pairs += [ours, theirs]
    transport = SocketTransport(ours)
    ws = SimpleNamespace(ws_proto=SimpleNamespace(state=State.OPEN),
                         io_proto=SimpleNamespace(transport=transport, conn=None))
    session = Session(SessionConfig(allow_anonymous=True), None, time.time)
    session.rooms.update(rooms)
    conn = Conn(hub, ws, session, "127.0.0.1")
    hub.add(conn)
    hub.join(conn, rooms)
    return conn, theirs


def received(sock: socket.socket) -> list[tuple[str, str]]:
    sock.setblocking(False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := sock.recv(1 << 16):
            data += chunk
    out = []
    for f in split_frames(data):
        msg = orjson.loads(f[f.index(b"{"):])
        out.append((msg["id"], msg["room"]))
    return out


async def test_the_fast_path_writes_a_read_once_per_connection_in_id_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Descriptors written directly: one write per connection for a read of several events, whether it is in one
    room or several, a replay's hold or not."""
    hub = Hub(queue_bytes=1 << 20, queue_messages=100, fast=True)
    pairs: list[socket.socket] = []
    try:
        alone, alone_peer = fast_connection(hub, ["public"], pairs)
        both, both_peer = fast_connection(hub, ["public", "post:x"], pairs)
        held, held_peer = fast_connection(hub, ["public"], pairs)
        assert alone.fd >= 0 and both.fd >= 0
        writes: Counter[int] = Counter()
        write = os.write

        def counted(fd: int, data: bytes) -> int:
            writes[fd] += 1
            return write(fd, data)

        monkeypatch.setattr(os, "write", counted)
        with hub.holding(held) as hold:
            hub.on_entries([entry(1, ["public"]), entry(2, ["public"])])  # one room: every descriptor at once
            hub.on_entries([entry(3, ["post:x"]), entry(4, ["public", "post:x"]), entry(5, ["public"])])
            kept = hold.release()
        assert received(alone_peer) == [("1-1", "public"), ("1-2", "public"), ("1-4", "public"), ("1-5", "public")]
        assert received(both_peer) == [("1-1", "public"), ("1-2", "public"), ("1-3", "post:x"), ("1-4", "public"),
                                       ("1-5", "public")]
        assert writes[alone.fd] == 2 and writes[both.fd] == 2
        assert [key for key, *_ in kept] == [(1, 1), (1, 2), (1, 4), (1, 5)] and received(held_peer) == []
        assert hub.metrics.deliveries.value() == 9
    finally:
        for sock in pairs:
            sock.close()


async def test_joining_a_second_room_takes_a_connection_off_its_first_rooms_batch() -> None:
    """A connection alone in a room gets that room's frames of a read in one write; once in a second room too,
    its frames of both rooms come in id order (the first room's batch would put them out of order)."""
    hub = Hub(queue_bytes=1 << 20, queue_messages=100, fast=True)
    pairs: list[socket.socket] = []
    try:
        conn, peer = fast_connection(hub, ["public"], pairs)
        fast_connection(hub, ["post:x"], pairs)
        hub.on_entries([entry(1, ["public"]), entry(2, ["post:x"]), entry(3, ["public"])])
        conn.session.rooms.add("post:x")
        hub.join(conn, ["post:x"])
        hub.on_entries([entry(4, ["public"]), entry(5, ["post:x"]), entry(6, ["public"])])
        assert [i for i, _ in received(peer)] == ["1-1", "1-3", "1-4", "1-5", "1-6"]
        conn.session.rooms.discard("public")
        hub.leave(conn, ["public"])
        hub.on_entries([entry(7, ["public"]), entry(8, ["post:x"])])
        assert received(peer) == [("1-8", "post:x")]
    finally:
        for sock in pairs:
            sock.close()


async def test_a_short_direct_write_sends_the_rest_once_through_the_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a connection whose direct write fell short (its transport took the rest and paused: queued)
    was then taken for one written through its transport, and got the read's frames a second time."""
    hub = Hub(queue_bytes=1 << 20, queue_messages=100, fast=True)
    pairs: list[socket.socket] = []
    try:
        conn, peer = fast_connection(hub, ["public"], pairs)
        transport = conn.transport
        assert isinstance(transport, SocketTransport)

        def pausing(data: bytes) -> None:  # as uvloop's transport with both water marks at 0
            FakeTransport.write(transport, data)
            hub.queued(conn)

        monkeypatch.setattr(transport, "write", pausing)
        write = os.write
        monkeypatch.setattr(os, "write", lambda fd, data: write(fd, data[:100]) if fd == conn.fd else write(fd, data))
        hub.on_entries([entry(1, ["public"]), entry(2, ["public"])])
        sock = socket.socket(fileno=os.dup(peer.fileno()))
        pairs.append(sock)
        sock.setblocking(False)
        head = sock.recv(1 << 16)
        assert len(head) == 100
        whole = head + b"".join(transport.writes)
        assert [orjson.loads(f[f.index(b"{"):])["id"] for f in split_frames(whole)] == ["1-1", "1-2"]
        assert hub.metrics.deliveries.value() == 2
    finally:
        for sock in pairs:
            sock.close()


# -- a replay and what the connection's other rooms delivered -------------------------------------------------

class MemoryHistory:
    """The server's history (realtime/server/history.py) over envelopes held in memory: every room's history
    complete, no reset marker; what the real collect() reads."""

    def __init__(self) -> None:
        self.entries: list[tuple[bytes, list[str], bytes]] = []  # (id, rooms, envelope)

    def publish(self, n: int, rooms: list[str]) -> tuple[bytes, list[bytes]]:
        """Event 1-n appended to the stream and to its rooms' histories; its entry, as the reader hands it over."""
        entry_id, fields = entry(n, rooms)
        self.entries.append((entry_id, rooms, fields[1]))
        return entry_id, fields

    async def state(self) -> StreamState:
        last = self.entries[-1][0].decode() if self.entries else None
        return StreamState(parse_id(last) if last else None, None)

    async def room_info(self, rooms: list[str]) -> dict[str, RoomHistory]:
        return {room: RoomHistory() for room in rooms}

    async def pages(self, reads: dict[str, tuple[str, int, int, int]], extra: int
                    ) -> dict[str, tuple[list[tuple[bytes, bytes]], int]]:
        out = {}
        for room, (after, _, count, _) in reads.items():
            found = [(eid, raw) for eid, rooms, raw in self.entries
                     if room in rooms and parse_id(eid.decode()) > parse_id(after)]
            out[room] = (found[:count], 0)
        return out


def server(hub: Hub, history: MemoryHistory, reader: str) -> Any:
    """The app's state around ``hub``, with ``history`` and a stream reader at ``reader``."""
    return SimpleNamespace(hub=hub, history=history, deep=None, presence=None, replays=ReplayMemory(1 << 20, 1.0),
                           reader=SimpleNamespace(last=reader.encode()),
                           cfg=SimpleNamespace(replay_limit=100, retry_seconds=1.0, presence_rooms=("post:",),
                                               heartbeat_timeout=1.0))


def read(state: Any, *entries: tuple[bytes, list[bytes]]) -> None:
    """The stream reader hands ``entries`` over (its position moves to the last)."""
    state.reader.last = entries[-1][0]
    state.hub.on_entries(list(entries))


async def client_says(state: Any, conn: Conn, **msg: Any) -> None:
    """A client frame, handled as the server handles it (the session's actions, carried out)."""
    from realtime.server import app

    await app._handle(state, conn, functools.partial(conn.session.receive, orjson.dumps(msg)))


async def test_a_replay_leaves_out_what_another_room_of_the_connection_delivered() -> None:
    """Regression (chaos seed 42): a subscribe with since, delayed by a partition, reached the server after live
    events of the connection's other rooms went out; its replay sent again those also in the new room."""
    hub, history = Hub(queue_bytes=1 << 20, queue_messages=100), MemoryHistory()
    state = server(hub, history, "1-1")
    conn, transport = connection(hub, [])
    await client_says(state, conn, op="subscribe", rooms=["public"])
    read(state, history.publish(2, ["public", "post:x"]))  # a public post's event: live, through public
    history.publish(3, ["post:x"])
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
    assert ids(transport) == ["1-2", "1-3"]  # 1-2 once: it came live; the replay gives the rest
    assert [f["op"] for f in frames(transport)][-2:] == ["event", "synced"]
    read(state, history.publish(4, ["public", "post:x"]))
    assert ids(transport) == ["1-2", "1-3", "1-4"]


async def test_a_room_joined_after_an_event_does_not_cover_it() -> None:
    """A room joined live covers what is handed over after the join, not before: an event of both rooms from
    before it still comes in the other room's replay."""
    hub, history = Hub(queue_bytes=1 << 20, queue_messages=100), MemoryHistory()
    state = server(hub, history, "1-1")
    conn, transport = connection(hub, [])
    read(state, history.publish(2, ["public", "post:x"]))  # before the connection is in public
    await client_says(state, conn, op="subscribe", rooms=["public"])
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
    assert ids(transport) == ["1-2"]


async def test_a_room_left_covers_nothing_of_what_came_while_away() -> None:
    """Unsubscribed, then subscribed again live: what was handed over in between, in both rooms, comes in the
    other room's replay."""
    hub, history = Hub(queue_bytes=1 << 20, queue_messages=100), MemoryHistory()
    state = server(hub, history, "1-1")
    conn, transport = connection(hub, [])
    await client_says(state, conn, op="subscribe", rooms=["public"])
    await client_says(state, conn, op="unsubscribe", rooms=["public"])
    read(state, history.publish(2, ["public", "post:x"]))
    await client_says(state, conn, op="subscribe", rooms=["public"])
    read(state, history.publish(3, ["public", "post:x"]))
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
    assert ids(transport) == ["1-3", "1-2"]  # 1-3 live through public, 1-2 from post:x's history


async def test_a_room_replayed_covers_what_came_after_its_since() -> None:
    """A room subscribed with since covers its events after that since (replayed, then live), not before."""
    hub, history = Hub(queue_bytes=1 << 20, queue_messages=100), MemoryHistory()
    state = server(hub, history, "1-1")
    conn, transport = connection(hub, [])
    read(state, history.publish(2, ["public", "post:x"]), history.publish(3, ["public", "post:x"]))
    await client_says(state, conn, op="subscribe", rooms=["public"], since="1-2")
    read(state, history.publish(4, ["public", "post:x"]))
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
    assert ids(transport) == ["1-3", "1-4", "1-2"]  # 1-2 is before public's since: the connection never sent it


async def test_a_room_subscribed_again_keeps_what_it_covered() -> None:
    """Regression (found by an outside attack): a room the connection stays in, subscribed again (or synced)
    with a later since, still covers what it sent before that since: another room's replay leaves it out."""
    for again in ({"op": "subscribe", "rooms": ["public"], "since": "1-4"}, {"op": "sync", "since": "1-4"}):
        hub, history = Hub(queue_bytes=1 << 20, queue_messages=100), MemoryHistory()
        state = server(hub, history, "1-1")
        conn, transport = connection(hub, [])
        await client_says(state, conn, op="subscribe", rooms=["public"])
        read(state, history.publish(2, ["public", "post:x"]), history.publish(3, ["public", "post:x"]),
             history.publish(4, ["public"]))
        await client_says(state, conn, **again)
        read(state, history.publish(5, ["post:x"]))
        await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
        assert ids(transport) == ["1-2", "1-3", "1-4", "1-5"], again


async def test_a_sync_replays_every_room_again() -> None:
    """sync asks for every subscribed room again from its since: nothing is left out (the docs: a client that
    resumes from an older id than it processed sees those events again)."""
    hub, history = Hub(queue_bytes=1 << 20, queue_messages=100), MemoryHistory()
    state = server(hub, history, "1-1")
    conn, transport = connection(hub, [])
    await client_says(state, conn, op="subscribe", rooms=["public", "post:x"])
    read(state, history.publish(2, ["public", "post:x"]))
    await client_says(state, conn, op="sync", since="1-1")
    assert ids(transport) == ["1-2", "1-2"]


async def test_a_replay_leaves_out_what_a_replay_on_a_lagging_server_sent() -> None:
    """On a server whose stream reader is behind: what the replay of one room sent (the reader hands it over
    later) is left out of the next room's replay, and not sent again live."""
    hub, history = Hub(queue_bytes=1 << 20, queue_messages=100), MemoryHistory()
    state = server(hub, history, "1-1")
    conn, transport = connection(hub, [])
    lagging = [history.publish(2, ["public", "post:x"]), history.publish(3, ["public"])]
    await client_says(state, conn, op="subscribe", rooms=["public"], since="1-1")
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
    assert ids(transport) == ["1-2", "1-3"]
    read(state, *lagging, history.publish(4, ["public", "post:x"]))
    assert ids(transport) == ["1-2", "1-3", "1-4"]


async def test_catching_up_in_two_rooms_keeps_each_rooms_position() -> None:
    """Regression: a second catch-up (another room's replay on a lagging server) replaced the first, whose room
    then got again, live, what its replay had sent."""
    hub = Hub(queue_bytes=1 << 20, queue_messages=100)
    conn, transport = connection(hub, ["public", "post:x"])
    hub.catch_up(conn, (1, 6), ("public",))
    hub.catch_up(conn, (1, 4), ("post:x",))
    hub.on_entries([entry(4, ["post:x"]), entry(5, ["post:x"]), entry(6, ["public"]), entry(7, ["public"])])
    assert ids(transport) == ["1-5", "1-7"] and conn.catch is None


# -- live events past the hold's bounds during a replay --------------------------------------------------------

class BurstHistory(MemoryHistory):
    """A history during whose reads the stream reader hands events over: at each of the first ``bursts`` reads,
    ``size`` new events (of ``public``, ``post:x``, or both, in turn), published and handed over at once, as by a
    stream reader that catches up with a burst."""

    def __init__(self, state: Any, size: int, bursts: int) -> None:
        super().__init__()
        self.state_, self.size, self.bursts = state, size, bursts
        self.next = 1
        self.trimmed: dict[str, tuple[int, int]] = {}  # room -> the highest id trimmed from its history

    def publish_next(self, rooms: list[str]) -> tuple[bytes, list[bytes]]:
        self.next += 1
        return self.publish(self.next, rooms)

    async def room_info(self, rooms: list[str]) -> dict[str, RoomHistory]:
        return {room: RoomHistory(self.trimmed.get(room, (0, 0))) for room in rooms}

    async def pages(self, reads: dict[str, tuple[str, int, int, int]], extra: int
                    ) -> dict[str, tuple[list[tuple[bytes, bytes]], int]]:
        if self.bursts:
            self.bursts -= 1
            kinds = (["public"], ["post:x"], ["public", "post:x"])
            read(self.state_, *(self.publish_next(kinds[i % 3]) for i in range(self.size)))
        return await super().pages(reads, extra)


def burst_server(size: int, bursts: int, *, queue_messages: int = 100) -> tuple[Any, BurstHistory]:
    hub = Hub(queue_bytes=1 << 20, queue_messages=queue_messages, close_timeout=0.01)
    state = server(hub, MemoryHistory(), "1-1")
    state.history = history = BurstHistory(state, size, bursts)
    state.cfg.replay_limit = 10_000
    return state, history


def wanted(history: MemoryHistory, rooms: set[str], after: int = 1) -> list[str]:
    """The ids of the events of ``rooms`` after 1-``after``, in order."""
    return [eid.decode() for eid, event_rooms, _ in history.entries
            if rooms & set(event_rooms) and parse_id(eid.decode()) > (1, after)]


async def test_live_events_past_the_holds_bounds_during_a_replay_are_read_from_history() -> None:
    """Regression (CI met it): a stream reader catching up with a burst handed a connection more events of its rooms
    during its replay's read of history than the hold keeps (its queue's bounds): the connection was closed as slow
    (4008), resumed, and could be closed again, although the client read fine. Now the replay reads again, from
    history, every room of the connection from the first event not kept: every event comes once, in id order."""
    state, history = burst_server(size=300, bursts=1)
    hub = state.hub
    conn, transport = connection(hub, [])
    await client_says(state, conn, op="subscribe", rooms=["public"])
    read(state, history.publish_next(["public", "post:x"]), history.publish_next(["post:x"]))  # 1-2 live, 1-3 not
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1", ref="r")
    assert conn.alive and not transport.closed and hub.metrics.slow.value() == 0
    assert hub.metrics.rereads.value() == 1
    assert ids(transport) == wanted(history, {"public", "post:x"})  # 1-2 once (it came live), 1-3, then the burst
    ops = [(f["op"], f.get("id")) for f in frames(transport)]
    assert ops.index(("synced", None)) == ops.index(("event", "1-3")) + 1  # after the replayed events
    assert frames(transport)[ops.index(("synced", None))]["last"] == "1-3"
    read(state, history.publish_next(["public"]))
    assert ids(transport)[-1] == f"1-{history.next}" and conn.pending is None  # live again


async def test_a_replay_whose_hold_passes_its_bounds_at_every_read_closes_the_connection_as_slow() -> None:
    """A connection whose rooms publish more, at every read of history again, than its hold keeps reads more slowly
    than they publish: after REREADS reads again it is closed as slow, having got nothing twice and nothing out of
    order."""
    from realtime.server import app

    state, history = burst_server(size=300, bursts=100)
    hub = state.hub
    conn, transport = connection(hub, [])
    await client_says(state, conn, op="subscribe", rooms=["public"])
    read(state, history.publish_next(["public", "post:x"]))
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
    assert hub.metrics.rereads.value() == app.REREADS
    assert not conn.alive and transport.closed and hub.metrics.slow.value() == 1
    assert int.from_bytes(transport.written[-1][2:4], "big") == 4008
    got = ids_of(frames(transport))
    assert got and got == wanted(history, {"public", "post:x"})[:len(got)]  # a gap-free start, in order


async def test_a_read_again_that_finds_history_lost_gives_the_room_a_reset() -> None:
    """A read again after the hold passed its bounds, of a room whose history was trimmed past the first event not
    kept: the client gets a reset for that room (never a silent gap), and the other room's events, in order."""
    state, history = burst_server(size=300, bursts=1)
    hub = state.hub
    conn, transport = connection(hub, [])
    await client_says(state, conn, op="subscribe", rooms=["public"])
    read(state, history.publish_next(["public", "post:x"]))
    real = history.pages

    async def trimmed(reads: dict[str, tuple[str, int, int, int]], extra: int) -> Any:
        got = await real(reads, extra)
        history.trimmed["public"] = (1, 250)  # trimmed while the replay read post:x
        return got

    history.pages = trimmed  # type: ignore[method-assign]
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
    assert conn.alive and hub.metrics.slow.value() == 0
    sent = frames(transport)
    resets = [f for f in sent if f["op"] == "reset"]
    assert resets == [{"op": "reset", "rooms": ["public"], "reason": "history_trimmed"}]
    at = sent.index(resets[0])
    before, after = ids_of(sent[:at]), ids_of(sent[at:])
    assert before == wanted(history, {"public", "post:x"})[:len(before)]  # what was kept, in order
    assert after == [i for i in wanted(history, {"post:x"}) if parse_id(i) > parse_id(before[-1])]  # post:x's rest
    assert sorted(set(before + after), key=parse_id) == before + after


def ids_of(sent: list[dict[str, Any]]) -> list[str]:
    return [f["id"] for f in sent if f["op"] == "event"]


def long_history() -> tuple[Hub, MemoryHistory, Any]:
    """A hub with a bound of 50 unsent frames, and a server whose history holds 400 events of post:x (1-2 to
    1-401), all handed over by its stream reader."""
    hub = Hub(queue_bytes=1 << 20, queue_messages=50, close_timeout=0.01)
    history = MemoryHistory()
    state = server(hub, history, "1-1")
    state.cfg.replay_limit = 1000
    for n in range(2, 402):
        history.publish(n, ["post:x"])
    state.reader.last = b"1-401"
    return hub, history, state


async def test_a_live_event_during_a_paced_replay_comes_after_it() -> None:
    """Regression: a live event handed over while a long replay waited for the client to take a part went out at
    once, before the rest of the replay and before ``synced`` (ids went back)."""
    hub, history, state = long_history()

    class Live(QueuingTransport):
        def write(self, data: bytes) -> None:
            super().write(data)
            if len(self.writes) == 3:  # a part of the replay: the next waits for the client to take it
                asyncio.get_running_loop().call_soon(read, state, history.publish(402, ["post:x"]))

    conn, transport = connection(hub, [], Live(reads=300))
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
    sent = [(f["op"], f.get("id")) for f in frames(transport)]
    assert sent[-2:] == [("synced", None), ("event", "1-402")]
    assert ids(transport) == [f"1-{n}" for n in range(2, 403)]
    assert hub.metrics.slow.value() == 0 and conn.alive


async def lagging_burst(size: int, part: int, reads: int | None = None
                        ) -> tuple[Any, BurstHistory, Conn, FakeTransport, list[tuple[bytes, list[bytes]]]]:
    """A connection in ``public`` that has had one event, and a burst of ``size`` events of public, post:x, both,
    and another room published but not handed over yet: the stream reader hands over ``part`` of it at each
    history read (the first ``reads`` reads; None: all). Returns the server, its history, the connection, its
    transport, and the rest of the burst."""
    state, history = burst_server(size=0, bursts=0)
    conn, transport = connection(state.hub, [])
    await client_says(state, conn, op="subscribe", rooms=["public"])
    read(state, history.publish_next(["public", "post:x"]))
    kinds = (["public"], ["post:x"], ["public", "post:x"], ["hashtag:x"])
    burst = [history.publish_next(kinds[i % 4]) for i in range(size)]
    real = history.pages
    left = [reads]

    async def lagging(reads: dict[str, tuple[str, int, int, int]], extra: int) -> Any:
        if burst and left[0] != 0:
            read(state, *burst[:part])
            del burst[:part]
            if left[0] is not None:
                left[0] -= 1
        return await real(reads, extra)

    history.pages = lagging  # type: ignore[method-assign]
    return state, history, conn, transport, burst


async def test_what_a_read_again_sent_is_not_sent_again_by_a_stream_reader_behind_it() -> None:
    """A read again reaches the head of the stream, which a stream reader behind it hands over later: those events
    came twice, once from history and once live."""
    state, history, conn, transport, burst = await lagging_burst(400, 200, reads=1)  # half, during the first read
    hub = state.hub
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
    assert hub.metrics.rereads.value() == 1
    assert conn.catch is not None  # the reader is behind what the connection has been sent
    read(state, *burst)  # then the other half
    read(state, history.publish_next(["public"]))
    assert ids(transport) == wanted(history, {"public", "post:x"})  # every event once, in order
    assert conn.catch is None and hub.metrics.slow.value() == 0


async def test_a_replay_refused_after_its_hold_passed_its_bounds_closes_the_connection_as_slow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay refused (``unavailable``) after the hold left out live events of the connection's other rooms:
    those cannot go out without a gap, so the connection is closed as slow (it resumes), not told ``unavailable``
    with a hole in its other rooms."""
    from realtime.server import app
    from realtime.server.budget import ReplayBusy

    state, history = burst_server(size=0, bursts=0)
    hub = state.hub
    conn, transport = connection(hub, [])
    await client_says(state, conn, op="subscribe", rooms=["public"])

    async def busy(*args: Any, **kwargs: Any) -> Any:
        read(state, *(history.publish_next(["public"]) for _ in range(150)))
        raise ReplayBusy("too many replays at once")

    monkeypatch.setattr(app, "collect", busy)
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
    assert not conn.alive and hub.metrics.slow.value() == 1
    assert ids_of(frames(transport)) == [] and int.from_bytes(transport.written[-1][2:4], "big") == 4008


async def test_a_paced_replay_holds_its_frames_against_the_replay_memory_until_they_are_written() -> None:
    """Regression: the replay memory was held only while history was read; then the replay's frames waited, uncounted,
    until a slow client took them (40 clients resuming 10 MB each took a server with a 16 MB budget to 640 MB, the
    gauge at 0). Now what is not written yet stays held, given back part by part as it is written."""
    hub, history, state = long_history()
    held: list[int] = []  # what the replay memory held at each write

    class Watched(QueuingTransport):
        def write(self, data: bytes) -> None:
            super().write(data)
            held.append(state.replays.held)

    conn, transport = connection(hub, [], Watched(reads=300))
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
    assert ids(transport) == [f"1-{n}" for n in range(2, 402)] and frames(transport)[-1]["op"] == "synced"
    size = sum(len(raw) for _, _, raw in history.entries)  # about what the 400 events' payloads take
    assert held[0] >= size  # at `subscribed`: the whole replay, read and not written yet
    parts = held[1:]  # (each seen as it is written, before it gives back what it held)
    assert len(parts) > 10 and parts == sorted(parts, reverse=True) and parts[-1] < held[0] // 10  # part by part
    assert state.replays.held == 0 and state.replays.holders == {}


async def test_a_stream_reader_catching_up_during_a_replay_does_not_close_a_client_that_reads() -> None:
    """Regression: a client that read at full speed was closed as slow (4008) after 3 reads again when the stream
    reader, catching up with a burst, handed over during each read again what the last one had already read (late
    copies filled the hold and passed its bounds: each counted as a new read again). Now what a read again has read
    is dropped when the reader hands it over late, and a read again counts against the bound only when it finds no
    less than the last read (the client does not catch up)."""
    state, history, conn, transport, burst = await lagging_burst(1600, 300)  # a part at each read
    hub = state.hub
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
    assert conn.alive and not transport.closed and hub.metrics.slow.value() == 0
    if burst:
        read(state, *burst)
    read(state, history.publish_next(["public"]))
    assert ids(transport) == wanted(history, {"public", "post:x"})  # every event once, in order
    assert conn.catch is None and conn.pending is None


async def test_ids_never_go_back_after_a_replay_on_a_server_whose_reader_is_behind() -> None:
    """Regression: a connection in ``public`` subscribed to ``post:x`` with since while the stream reader was behind
    (its Redis connection lost): the replay read post:x up to the stream's head and sent ``synced``; then the reader
    handed over public's events older than the replay's last, which went out after it (ids went back). Now those
    of the connection's other rooms up to the replay's last are read from history and merged into the replay, and
    the reader's late copies are dropped."""
    hub, history = Hub(queue_bytes=1 << 20, queue_messages=100), MemoryHistory()
    state = server(hub, history, "1-1")
    conn, transport = connection(hub, [])
    await client_says(state, conn, op="subscribe", rooms=["public"])
    read(state, history.publish(2, ["public"]))
    behind = [history.publish(3, ["public"]), history.publish(4, ["post:x"]), history.publish(5, ["public"]),
              history.publish(6, ["post:x", "public"]), history.publish(7, ["post:x"])]  # not handed over yet
    await client_says(state, conn, op="subscribe", rooms=["post:x"], since="1-1")
    read(state, *behind)  # the reader catches up
    read(state, history.publish(8, ["public"]))
    assert ids(transport) == [f"1-{n}" for n in range(2, 9)]  # every event once, ids in order
    ops = [(f["op"], f.get("id")) for f in frames(transport)]
    assert ops.index(("synced", None)) == ops.index(("event", "1-7")) + 1
    assert conn.catch is None and hub.metrics.slow.value() == 0


async def sse_replay(size: int, bursts: int) -> tuple[Any, BurstHistory, Any, Any]:
    """An SSE stream of public and post:x with a bound of 50 unsent events, resuming from 1-1 on a server during
    whose first ``bursts`` history reads the stream reader hands ``size`` events over. Returns the server, its
    history, the stream and its transport."""
    from realtime.server import transports

    state, history = burst_server(size=size, bursts=bursts, queue_messages=50)
    read(state, history.publish_next(["public", "post:x"]))  # (before the stream: its replay's first event)
    stream = transports.SseStream(("public", "post:x"), state.hub, 1 << 20, 50, math.inf)
    transport = QueuingTransport(reads=1 << 30)
    stream.attach(transport, chunked=False)
    state.hub.listen(stream)
    async with state.replays.hold() as hold:
        got = await transports.collect(state.history, stream.rooms, "1-1", state.cfg.replay_limit, memory=hold)
        await transports._replay(state, stream, got, hold)
    return state, history, stream, transport


def sse_ids(transport: Any) -> list[str]:
    return [line[4:].decode() for line in b"".join(transport.writes).split(b"\n") if line.startswith(b"id: ")]


async def test_an_sse_replay_past_its_holds_bounds_reads_history_again() -> None:
    """Pins: live events past the bounds of an SSE stream's hold during its replay closed the stream as slow (4008);
    a client resuming in a busy room could loop (resume, overflow, resume). It reads history again, as a WebSocket
    does: every event once, in order."""
    state, history, stream, transport = await sse_replay(size=200, bursts=1)
    assert not stream.ended
    assert sse_ids(transport) == wanted(history, {"public", "post:x"})
    assert state.hub.metrics.rereads.value() == 1
    read(state, history.publish_next(["public"]))  # live from here on
    assert sse_ids(transport)[-1] == f"1-{history.next}"


async def test_an_sse_replay_whose_client_never_catches_up_is_closed_as_slow() -> None:
    state, history, stream, transport = await sse_replay(size=200, bursts=1000)
    assert stream.ended == "slow"
    assert state.hub.metrics.rereads.value() == transports_rereads()
    got = sse_ids(transport)
    assert len(got) == len(set(got)) and got == sorted(got, key=parse_id)  # nothing twice, nothing out of order
    assert got == wanted(history, {"public", "post:x"})[:len(got)]  # and no hole in what it sent


def transports_rereads() -> int:
    from realtime.server import transports

    return transports.REREADS
