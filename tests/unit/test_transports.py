"""The long-poll and SSE clients of realtime/server/transports.py, fed as the hub feeds them, writing to an
in-memory transport: the queue bounds, token expiry, the final events, and what is kept for a poll."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import orjson
import pytest

from realtime.metrics import Registry
from realtime.server.transports import Collected, PollWait, SseStream


class Transport:
    """What an asyncio transport does that the stream uses: bytes written pile up until ``drain``."""

    def __init__(self, sends: int = 0) -> None:
        self.sent = b""  # what the peer got
        self.buffer = b""  # unsent
        self.sends = sends  # bytes the peer still takes at once (the kernel's buffers)
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "a write after close"
        self.buffer += data
        taken, self.sends = min(self.sends, len(self.buffer)), self.sends - min(self.sends, len(self.buffer))
        self.sent, self.buffer = self.sent + self.buffer[:taken], self.buffer[taken:]

    def get_write_buffer_size(self) -> int:
        return len(self.buffer)

    def drain(self, room: int = 0) -> None:
        """The peer reads all that is queued, and then ``room`` bytes more at once."""
        self.sent, self.buffer = self.sent + self.buffer, b""
        self.sends = room

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class Hub:
    def __init__(self) -> None:
        self.later: list[Any] = []
        registry = Registry()
        self.metrics = type("M", (), {"closes": registry.counter("c", ""), "slow": registry.counter("s", "")})()

    def abort_later(self, t: Any) -> None:
        self.later.append(t)


def chunks(data: bytes) -> tuple[list[bytes], bool]:
    """The chunked transfer coding undone: the chunks, and whether the last (empty) one came."""
    out = []
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n", rest
            return out, True
        out.append(rest[:size])
        assert rest[size:size + 2] == b"\r\n"
        data = rest[size + 2:]
    return out, False


def payload(i: int, size: int = 10) -> bytes:
    return orjson.dumps({"op": "event", "id": f"{i}-0", "data": "x" * size})


def stream(max_bytes: int = 10_000, max_messages: int = 100, expires: float = math.inf,
           sends: int = 0) -> tuple[SseStream, Transport, Hub]:
    hub = Hub()
    s = SseStream(("public",), hub, max_bytes, max_messages, expires)
    t = Transport(sends)
    s.attach(t, chunked=True)
    return s, t, hub


def test_live_events_are_written_at_once_as_chunks() -> None:
    s, t, _ = stream(sends=1 << 20)
    s.live()
    s.feed((1, 0), "public", payload(1))
    s.feed((1, 0), "post:p1", payload(1))  # the same event through another room: once
    s.reset((2, 0), "history_reset")
    got, ended = chunks(t.sent)
    assert got == [b"id: 1-0\ndata: " + payload(1) + b"\n\n",
                   b'event: reset\ndata: {"op":"reset","rooms":["public"],"reason":"history_reset"}\n\n']
    assert not ended and not s.ended


def test_a_slow_reader_is_closed_past_the_byte_bound_with_a_final_event_behind_what_is_queued() -> None:
    """Pins: an SSE stream's unsent data had no byte bound (600 events of 60 KB held +139 MB)."""
    s, t, hub = stream(max_bytes=1000, sends=300)
    s.live()
    i = 0
    while not s.ended:
        i += 1
        s.feed((i, 0), "public", payload(i, 100))
        assert i < 20
    assert s.ended == "slow" and s.done.is_set()
    assert t.closed and hub.later == [t]
    assert hub.metrics.slow.value() == 1 and hub.metrics.closes.value(reason="slow") == 1
    s.feed((i + 1, 0), "public", payload(i + 1))  # nothing more
    t.drain()
    got, ended = chunks(t.sent)
    assert ended and got[-1] == b'event: close\ndata: {"op":"close","code":4008,"reason":"slow"}\n\n'
    assert len(got) == i + 1  # the events, the one that passed the bound included, then the final event


def test_a_slow_reader_is_closed_past_the_message_bound() -> None:
    s, t, _ = stream(max_bytes=1 << 20, max_messages=5)
    s.live()
    for i in range(1, 7):
        s.feed((i, 0), "public", payload(i))
    assert s.ended == "slow" and t.get_write_buffer_size() < 1000
    s2, t2, _ = stream(max_bytes=1 << 20, max_messages=5)
    s2.live()
    for i in range(1, 30):  # a reader that keeps up: the count starts again whenever all was sent
        s2.feed((i, 0), "public", payload(i))
        if i % 5 == 0:
            t2.drain(room=100)
    assert not s2.ended


def test_live_events_kept_aside_during_the_replay_are_bounded_and_merged_after_it() -> None:
    s, t, _ = stream(sends=1 << 20)
    s.feed((2, 0), "public", payload(2))  # live during the replay
    s.feed((3, 0), "public", payload(3))
    assert t.sent == b""
    got = Collected(events=[((1, 0), "public", payload(1)), ((2, 0), "public", payload(2))])
    s.replayed(got)
    s.feed((4, 0), "public", payload(4))
    assert chunks(t.sent)[0][0].count(b"id: ") == 2  # the replay in one chunk
    texts = b"".join(chunks(t.sent)[0])
    assert [line for line in texts.split(b"\n") if line.startswith(b"id:")] == [
        b"id: 1-0", b"id: 2-0", b"id: 3-0", b"id: 4-0"]

    s2, _, _ = stream(max_bytes=100_000, max_messages=3)
    for i in range(1, 6):
        s2.feed((i, 0), "public", payload(i))
    assert s2.held is not None and len(s2.held) == 3, "what is kept aside is bounded too"
    assert s2.spilled == (4, 0) and not s2.ended  # from the first not kept, read from history again


def test_past_the_bounds_the_replay_is_read_again_from_the_first_live_event_not_kept() -> None:
    """Pins: an SSE stream whose live events kept aside during a replay passed the bounds was closed as slow
    (4008) where a WebSocket reads history again."""
    s, t, _ = stream(max_messages=3, sends=1 << 20)
    for i in range(3, 9):  # live during the replay: 3, 4, 5 kept, 6 on not
        s.feed((i, 0), "public", payload(i))
    again = s.replayed(Collected(events=[((1, 0), "public", payload(1)), ((2, 0), "public", payload(2))],
                                 head=(2, 0)))
    assert again == (6, 0) and not s.ended
    s.feed((9, 0), "public", payload(9))  # live during the read again: kept
    assert s.replayed(Collected(events=[((i, 0), "public", payload(i)) for i in (6, 7, 8)], head=(8, 0))) is None
    s.feed((10, 0), "public", payload(10))  # live
    texts = b"".join(chunks(t.sent)[0])
    assert [line for line in texts.split(b"\n") if line.startswith(b"id:")] == [
        b"id: %d-0" % i for i in range(1, 11)]
    assert not s.ended


def test_a_reader_behind_the_replay_does_not_send_again_what_the_replay_covered() -> None:
    """Regression (chaos seed 30): a server's stream reader in reconnect backoff handed over, after the replay
    had ended, events the replay had sent (or that were at or before the client's position): they went out
    twice. The replay covers everything up to the stream's head when it began; live events start after it."""
    s, t, _ = stream(sends=1 << 20)
    got = Collected(events=[((2, 0), "public", payload(2)), ((3, 0), "public", payload(3))], head=(5, 0))
    s.replayed(got)
    for i in (1, 2, 3, 4, 5, 6):  # the reader catching up from before the client's position
        s.feed((i, 0), "public", payload(i))
    texts = b"".join(chunks(t.sent)[0])
    assert [line for line in texts.split(b"\n") if line.startswith(b"id:")] == [b"id: 2-0", b"id: 3-0", b"id: 6-0"]


def test_nothing_is_written_after_the_token_expires() -> None:
    """Pins: an SSE stream opened with a 3 s token delivered a user:{id} event 7 s later."""
    s, t, hub = stream(expires=time.time() + 0.05, sends=1 << 20)
    s.live()
    s.feed((1, 0), "public", payload(1))
    time.sleep(0.06)
    s.feed((2, 0), "public", payload(2))
    got, ended = chunks(t.sent)
    assert got == [b"id: 1-0\ndata: " + payload(1) + b"\n\n",
                   b'event: close\ndata: {"op":"close","code":4003,"reason":"token_expired"}\n\n']
    assert ended and s.ended == "token_expired" and hub.metrics.closes.value(reason="token_expired") == 1
    assert s.expiring()


def test_going_away_before_the_response_started_is_written_once_it_starts() -> None:
    hub = Hub()
    s = SseStream(("public",), hub, 1000, 10, math.inf)
    s.going_away()
    assert s.ended == "going_away" and s.done.is_set()
    t = Transport(1 << 20)
    s.attach(t, chunked=True)
    got, ended = chunks(t.sent)
    assert ended and len(got) == 1 and t.closed
    retry, event = got[0].split(b"\n", 1)
    assert retry.startswith(b"retry: ") and 1000 <= int(retry[7:]) <= 5000
    assert event == b'event: close\ndata: {"op":"close","code":1001,"reason":"going_away"}\n\n'


def test_a_client_that_left_ends_the_stream_quietly() -> None:
    s, t, _ = stream()
    s.live()
    t.closed = True
    s.feed((1, 0), "public", payload(1))
    assert s.ended == "gone" and t.sent == b""


async def test_a_poll_keeps_what_comes_after_its_position_within_the_bounds() -> None:
    w = PollWait(("public", "post:p1"), (5, 0), max_bytes=200, max_messages=3)
    w.feed((4, 0), "public", payload(4))  # before the position (this server's reader is behind)
    assert not w.woke.is_set() and w.events == []
    w.feed((6, 0), "public", payload(6))
    w.feed((6, 0), "post:p1", payload(6))
    w.feed((7, 0), "post:p1", payload(7))
    assert w.woke.is_set() and [k for k, _, _ in w.kept().events] == [(6, 0), (7, 0)]
    w.feed((8, 0), "public", payload(8, 200))  # past the byte bound: what is kept stops there
    w.feed((9, 0), "public", payload(9))
    assert w.full and [k for k, _, _ in w.kept().events] == [(6, 0), (7, 0)]
    w2 = PollWait(("public",), (0, 0), 10_000, 10)
    w2.feed((1, 0), "public", payload(1))
    w2.reset((2, 0), "history_reset")
    w2.feed((3, 0), "public", payload(3))
    assert [k for k, _, _ in w2.kept().events] == [(1, 0)], "nothing after a reset"
    w2.woke.clear()
    w2.going_away()
    assert w2.stopping and w2.woke.is_set()
    await asyncio.sleep(0)


@pytest.mark.parametrize("chunked", [True, False])
def test_the_final_event_ends_the_response(chunked: bool) -> None:
    hub = Hub()
    s = SseStream(("public",), hub, 1000, 10, math.inf)
    t = Transport(1 << 20)
    s.attach(t, chunked=chunked)
    s.live()
    s.fail("unavailable", "history is unreachable; retry")
    final = b'event: error\ndata: {"op":"error","code":"unavailable","message":"history is unreachable; retry"}\n\n'
    assert t.sent == (b"%x\r\n%b\r\n0\r\n\r\n" % (len(final), final) if chunked else final)
    assert s.ended == "error" and t.closed


def test_cors_echoes_the_origin_that_is_allowed_and_varies_on_it() -> None:
    """With two allowed origins, each gets its own back; another gets no Allow-Origin; * allows any."""
    from realtime.server.transports import cors_headers

    allowed = ("http://localhost:3000", "http://127.0.0.1:3000")
    for origin in allowed:
        headers = cors_headers(allowed, origin)
        assert headers["Access-Control-Allow-Origin"] == origin
        assert headers["Vary"] == "Origin"
    assert cors_headers(allowed, "http://evil.test") == {"Vary": "Origin"}
    assert cors_headers(allowed, None) == {"Vary": "Origin"}
    assert cors_headers(("*",), "http://any.test")["Access-Control-Allow-Origin"] == "*"
    assert cors_headers((), "http://localhost:3000") == {}
