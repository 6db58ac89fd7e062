"""realtime.client: its pure parts (backoff, ids, close codes, URLs, tokens, HTTP parsing), then the client's
loop against small in-process fakes (a WebSocket server, a /poll server) with an injected sleep and clock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve

from realtime.client import (
    Client,
    ClientClosed,
    ClientEvent,
    Cursor,
    Presence,
    Reset,
    backoff,
    http_base,
    poll_url,
    read_response,
    token_expiry,
    transient,
)
from realtime.errors import CLOSE_CODES
from tests.conftest import TIMEOUT, free_port

# -- backoff ----------------------------------------------------------------------------------------------------

def take(gen: Iterator[float], n: int) -> list[float]:
    return [next(gen) for _ in range(n)]


def test_backoff_doubles_up_to_the_cap() -> None:
    assert take(backoff(0.5, 4.0, lambda: 0.999999), 6) == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0, 4.0], rel=1e-5)
    assert take(backoff(0.5, 4.0, lambda: 0.0), 6) == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_backoff_is_jittered() -> None:
    values = iter([0.0, 0.5, 0.25, 0.75])
    assert take(backoff(1.0, 100.0, lambda: next(values)), 4) == [0.5, 1.5, 2.5, 7.0]
    assert len(set(take(backoff(1.0, 1.0), 20))) > 1, "random.random by default: delays differ"


@given(st.floats(0.001, 10), st.floats(1, 1000), st.lists(st.floats(0, 1, exclude_max=True), min_size=1,
                                                              max_size=80))
def test_backoff_bounds(base: float, factor: float, draws: list[float]) -> None:
    cap = base * factor
    it = iter(draws)
    for n, delay in enumerate(take(backoff(base, cap, lambda: next(it)), len(draws))):
        ceiling = min(cap, base * 2.0**n)
        assert ceiling / 2 <= delay <= ceiling <= cap


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_backoff_refuses_bad_bounds(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        next(backoff(base, cap))


# -- ids ----------------------------------------------------------------------------------------------------------

def test_cursor_compares_ids_as_pairs_of_integers() -> None:
    c = Cursor("9-5")
    assert not c.advance("9-5"), "the same id again is a duplicate"
    assert not c.advance("9-4") and not c.advance("1-99"), "older ids are duplicates"
    assert c.advance("9-10"), "9-10 > 9-5 (not as strings)"
    assert c.advance("10-0"), "10-0 > 9-10 (not as strings)"
    assert c.id == "10-0" and c.key == (10, 0)
    assert not c.advance("9-99")
    c.jump("3-0")
    assert c.id == "3-0" and c.advance("3-1")


def test_cursor_without_since_takes_the_first_id() -> None:
    c = Cursor()
    assert c.id is None and c.advance("0-1") and c.id == "0-1"


@pytest.mark.parametrize("bad", ["", "12", "a-1", "1-b", "-1-2", "1.0-2", "99999999999999999999999-0"])
def test_cursor_refuses_malformed_ids(bad: str) -> None:
    with pytest.raises(ValueError):
        Cursor(bad)
    with pytest.raises(ValueError):
        Cursor().advance(bad)


# -- close codes ------------------------------------------------------------------------------------------------

def test_close_codes_follow_the_table() -> None:
    for c in CLOSE_CODES.values():
        assert transient(c.code) is c.transient, c.name
    assert not transient(4001) and not transient(4002) and not transient(1000)
    assert transient(1001) and transient(4003) and transient(4008) and transient(1011)
    assert transient(1006) and transient(1012), "outside the table (a lost connection, a restart): retry"


# -- URLs -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("ws", "http"), [
    ("ws://127.0.0.1:8000/ws", "http://127.0.0.1:8000"),
    ("wss://rt.example.com/ws", "https://rt.example.com"),
    ("wss://example.com/realtime/ws", "https://example.com/realtime"),
    ("ws://h:1/", "http://h:1"),
])
def test_http_base(ws: str, http: str) -> None:
    assert http_base(ws) == http


def test_poll_url() -> None:
    url = poll_url("http://127.0.0.1:8000", ["post:p1", "hashtag:café", "user:a@b"], "123-4", 25)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "127.0.0.1:8000", "/poll")
    assert "rooms=post:p1,hashtag:caf%C3%A9,user:a@b" in parts.query
    assert parse_qs(parts.query) == {"rooms": ["post:p1,hashtag:café,user:a@b"], "since": ["123-4"], "wait": ["25"]}
    url = poll_url("https://h/base/", ["public"], None, 0.25)
    assert url == "https://h/base/poll?rooms=public&wait=0.25", "no since: from now"
    assert parse_qs(urlsplit(poll_url("http://h", ["public"], None, 1 / 3)).query)["wait"] == ["0.333"]


def test_client_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="ws://"):
        Client("http://h/ws", rooms=["public"])
    with pytest.raises(ValueError, match="http_url"):
        Client("ws://h/ws", rooms=["public"], http_url="ftp://h")
    with pytest.raises(ValueError, match="rooms"):
        Client("ws://h/ws", rooms=["nope"])
    with pytest.raises(ValueError, match="rooms"):
        Client("ws://h/ws", rooms=[])
    with pytest.raises(ValueError):
        Client("ws://h/ws", rooms=["public"], since="yesterday")
    client = Client(["ws://a:1/ws", "wss://b/x/ws"], rooms=["public", "public"])
    assert client.http_urls == ["http://a:1", "https://b/x"] and client.rooms == ["public"]
    assert (client.transport, client.state, client.position) == ("websocket", "connecting", None)


# -- tokens and HTTP ------------------------------------------------------------------------------------------------

def test_token_expiry() -> None:
    exp = int(time.time()) + 100
    assert token_expiry(jwt.encode({"sub": "u1", "exp": exp}, "k" * 32, algorithm="HS256")) == exp
    assert token_expiry(jwt.encode({"sub": "u1"}, "k" * 32, algorithm="HS256")) is None
    for junk in ("", "abc", "a.b.c", "a.!!!.c", "a." + "e30" + ".c"):
        assert token_expiry(junk) is None, junk


async def parse(data: bytes) -> tuple[int, bytes]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await read_response(reader)


async def test_read_response() -> None:
    assert await parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello, and more") == (200, b"hello")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=1\r\n, world\r\n0\r\n\r\n"
    assert await parse(chunked) == (200, b"hello, world")
    assert await parse(b"HTTP/1.0 503 Busy\r\n\r\nuntil the end") == (503, b"until the end")
    with pytest.raises(ValueError):
        await parse(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(asyncio.IncompleteReadError):
        await parse(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort")


# -- the client's loop against fakes -----------------------------------------------------------------------------

class FakeTime:
    """An injected clock and sleep: sleeping moves the clock, and yields to the loop."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def event(i: int, room: str = "public") -> dict[str, Any]:
    return {"op": "event", "id": f"{i}-0", "type": "post:created", "room": room, "data": {"id": f"p{i}"}, "ts": i}


@contextlib.asynccontextmanager
async def ws_server(handler: Callable[[ServerConnection], Any]) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


async def collect(client: Client, n: int) -> list[Any]:
    got = []
    async with asyncio.timeout(TIMEOUT):
        async for item in client:
            got.append(item)
            if len(got) == n:
                break
    return got


async def test_resumes_after_a_transient_close_and_stops_after_a_terminal_one() -> None:
    subscribes: list[dict[str, Any]] = []
    headers: list[str | None] = []

    async def handler(ws: ServerConnection) -> None:
        headers.append(ws.request.headers.get("Authorization") if ws.request else None)
        sub = orjson.loads(await ws.recv())
        subscribes.append(sub)
        await ws.send(orjson.dumps({"op": "subscribed", "ref": sub["ref"], "rooms": sub["rooms"]}).decode())
        if len(subscribes) == 1:
            for i in (1, 2):
                await ws.send(orjson.dumps(event(i)).decode())
            await ws.send(orjson.dumps({"op": "presence", "type": "user:online", "room": "post:p1",
                                        "data": {"userId": "u2"}, "ts": 5}).decode())
            await ws.close(1011, "oops")
        else:
            for i in (1, 2, 3):  # a replay from an older position: 1 and 2 are duplicates
                await ws.send(orjson.dumps(event(i)).decode())
            await ws.send(orjson.dumps({"op": "reset", "rooms": ["post:p1"], "reason": "history_trimmed"}).decode())
            await ws.close(4001, "unauthorized")

    fake = FakeTime()
    async with ws_server(handler) as url:
        client = Client(url, token="t0k", rooms=["public", "post:p1"], since="0-5", sleep=fake.sleep,
                        clock=fake.clock, rng=lambda: 0.0)
        async with client:
            got = await collect(client, 5)
            with pytest.raises(ClientClosed) as stopped:
                await collect(client, 1)
    assert stopped.value.code == 4001
    assert [type(x) for x in got] == [ClientEvent, ClientEvent, Presence, ClientEvent, Reset]
    assert [x.id for x in got if isinstance(x, ClientEvent)] == ["1-0", "2-0", "3-0"]
    assert got[2] == Presence("user:online", "post:p1", "u2")
    assert got[4] == Reset(("post:p1",), "history_trimmed")
    assert orjson.loads(got[0].raw) == event(1)
    assert [s.get("since") for s in subscribes] == ["0-5", "2-0"]
    assert headers == ["Bearer t0k", "Bearer t0k"]
    assert fake.slept == [0.25], "one backoff delay before the reconnect"
    assert client.last_id == "3-0" and client.connections == 2 and client.state == "closed"


async def test_a_refused_subscription_stops_the_client() -> None:
    async def handler(ws: ServerConnection) -> None:
        sub = orjson.loads(await ws.recv())
        await ws.send(orjson.dumps({"op": "error", "ref": sub["ref"], "code": "forbidden_room",
                                    "message": "not allowed to read user:x"}).decode())
        await ws.wait_closed()

    async with ws_server(handler) as url, Client(url, rooms=["user:x"]) as client:
        with pytest.raises(ClientClosed) as stopped:
            await collect(client, 1)
    assert stopped.value.code == "forbidden_room"


async def test_token_callable_is_refreshed_in_band_before_exp() -> None:
    fake = FakeTime()
    issued: list[str] = []

    async def new_token() -> str:  # a coroutine: async providers are awaited
        issued.append(jwt.encode({"sub": "u1", "exp": int(fake.now) + 100}, "k" * 32, algorithm="HS256"))
        return issued[-1]

    frames: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            frames.append(orjson.loads(message))
            if frames[-1]["op"] == "subscribe":
                reply = {"op": "subscribed", "ref": frames[-1]["ref"], "rooms": ["public"]}
                await ws.send(orjson.dumps(reply).decode())
            if len([f for f in frames if f["op"] == "auth"]) == 2:
                done.set()

    async with ws_server(handler) as url, Client(url, token=new_token, rooms=["public"], refresh_before=30,
                                                   sleep=fake.sleep, clock=fake.clock):
        await asyncio.wait_for(done.wait(), TIMEOUT)
    assert [f["token"] for f in frames if f["op"] == "auth"][:2] == issued[1:3]
    assert fake.slept[:2] == [70.0, 70.0], "each token refreshed 30 s before its exp"


async def test_falls_back_to_polling_then_returns_to_the_websocket() -> None:
    """WebSockets refused on a port; /poll served by a fake that answers in scripted steps; then a WebSocket
    server starts on that port and the client goes back to it, from its position."""
    polls: list[dict[str, list[str]]] = []
    requests: list[bytes] = []
    slept_at_poll: list[int] = []

    def answer(q: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        since = q.get("since", [None])[0]
        rooms = q["rooms"][0].split(",")
        if since is None:
            return 200, {"events": [], "resets": [], "next": "10-0"}
        if since == "10-0":  # public is fine, post:p1's history is gone
            return 200, {"events": [event(11)], "resets": [{"rooms": ["post:p1"], "reason": "history_trimmed"}],
                         "next": "11-0"}
        if since == "11-0" and rooms == ["public"]:  # the catch-up of the rooms not reset
            return 200, {"events": [event(12)], "resets": [], "next": "12-0"}
        if since == "14-0":
            return 503, {"error": {"code": "unavailable", "message": "retry"}}
        return 200, {"events": [event(13), event(14)], "resets": [], "next": "14-0"}

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        requests.append(request)
        slept_at_poll.append(len(fake.slept))
        q = parse_qs(urlsplit(request.split(b" ")[1].decode()).query)
        polls.append(q)
        status, body = answer(q)
        data = orjson.dumps(body)
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(data), data))
        await writer.drain()
        writer.close()

    fake = FakeTime()
    ws_port = free_port()
    subscribes: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        sub = orjson.loads(await ws.recv())
        subscribes.append(sub)
        await ws.send(orjson.dumps({"op": "subscribed", "ref": sub["ref"], "rooms": sub["rooms"]}).decode())
        await ws.send(orjson.dumps(event(14)).decode())  # a duplicate
        await ws.send(orjson.dumps(event(15)).decode())
        await ws.wait_closed()

    poll_server = await asyncio.start_server(http, "127.0.0.1", 0)
    http_url = f"http://127.0.0.1:{poll_server.sockets[0].getsockname()[1]}"
    client = Client(f"ws://127.0.0.1:{ws_port}/ws", http_url=http_url, token="t0k", rooms=["public", "post:p1"],
                    fallback_after=2, ws_retry=5, poll_wait=3, sleep=fake.sleep, clock=fake.clock, rng=lambda: 0.0)
    try:
        async with poll_server, client:
            got = await collect(client, 5)
            assert client.transport == client.state == "polling"
            async with serve(handler, "127.0.0.1", ws_port):
                got += await collect(client, 1)
                assert (client.transport, client.state) == ("websocket", "connected")
    finally:
        await client.aclose()
    assert [type(x).__name__ for x in got] == ["Reset", "ClientEvent", "ClientEvent", "ClientEvent", "ClientEvent",
                                               "ClientEvent"]
    assert [x.id for x in got if isinstance(x, ClientEvent)] == ["11-0", "12-0", "13-0", "14-0", "15-0"]
    assert polls[0] == {"rooms": ["public,post:p1"], "wait": ["3"]}, "the first poll: from now"
    assert polls[2] == {"rooms": ["post:p1"], "wait": ["0"]}, "after the reset: the server's position for post:p1"
    assert polls[3] == {"rooms": ["public"], "since": ["11-0"], "wait": ["0"]}, "and a catch-up of the others"
    assert polls[4]["since"] == ["12-0"], "then on from the later of the two"
    assert [s.get("since") for s in subscribes] == ["14-0"], "back on the WebSocket from the polled position"
    assert all(r.startswith(b"GET /poll?") and b"\r\nAuthorization: Bearer t0k\r\n" in r for r in requests)
    assert slept_at_poll[0] == 1 and fake.slept[0] == 0.25, "one backoff between the WebSocket failures, then polls"
