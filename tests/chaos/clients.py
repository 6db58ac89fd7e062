"""Clients that behave as the docs tell a client to, and record everything they send and receive.

A **session** is one reader of a fixed set of rooms, under one user, over one transport, through a series of
connections (each :class:`Record`): it connects to a server picked at random (through that server's client
link), subscribes with ``since`` = the newest event id it has received, reads, and after a while leaves and
resumes on another server, or reconnects after a close, a reset or a refused request. WebSocket sessions also
subscribe to an extra post room now and then, and leave it. A request is never abandoned by a timer: a client
waits for the server's answer as long as its connection lives (heartbeats end a dead one), so a server that
never answers shows as a frozen client, not as a reconnect.

What each connection saw is kept, in order and with times, for the checker; long-polling sessions keep one
record for their whole chain of polls (each poll continues where the previous one's ``next`` left off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from tests.chaos.model import key_of
from tests.chaos.record import Record
from tests.e2e.serverkit import token

log = logging.getLogger("chaos.clients")

SSE_IDLE = 20.0  # the server sends a heartbeat every 15 s: nothing for this long means the stream is dead
POLL_WAIT = 2  # seconds a long-poll waits
HTTP_TIMEOUT = 15.0  # a poll's whole exchange
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class SessionSpec:
    name: str
    transport: str  # "ws", "sse" or "poll"
    user: str
    rooms: tuple[str, ...]
    extra: tuple[str, ...] = ()  # rooms a WebSocket session may join for a while


class Closed(Exception):
    pass


class Session:
    def __init__(self, spec: SessionSpec, servers: dict[str, int], seed: int, since: str) -> None:
        self.spec = spec
        self.servers = servers  # name -> port of its client link
        self.rng = random.Random(seed)
        self.last = since  # the newest event id received: where the next connection resumes
        self.records: list[Record] = []
        self.settled = False  # set for the final phase: no more voluntary leaving, only what failures force
        self.token = token(spec.user, ttl=3600)
        self._refs = 0
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def _record(self, server: str) -> Record:
        rec = Record(self.spec.name, self.spec.transport, self.spec.user, len(self.records), server,
                     time.monotonic())
        self.records.append(rec)
        return rec

    def _seen(self, frame: dict[str, Any]) -> None:
        if frame.get("op") == "event" and isinstance(frame.get("id"), str):
            with contextlib.suppress(ValueError):
                if key_of(frame["id"]) > key_of(self.last):
                    self.last = frame["id"]

    def _lifetime(self) -> float:
        return self.rng.uniform(3.0, 10.0)

    async def run(self, stop: asyncio.Event) -> None:
        once = {"ws": self._ws_once, "sse": self._sse_once, "poll": self._poll}[self.spec.transport]
        while not stop.is_set():
            try:
                await once(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a client must survive anything the network does to it
                log.info("%s: %s: %s", self.spec.name, type(exc).__name__, exc)
                if self.records:
                    self.records[-1].end(f"{type(exc).__name__}: {exc}")
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.rng.uniform(0.2, 1.0))

    # -- WebSocket ---------------------------------------------------------------------------------------------
    async def _ws_once(self, stop: asyncio.Event) -> None:
        server = self.rng.choice(sorted(self.servers))
        rec = self._record(server)
        try:
            ws = await connect(f"ws://127.0.0.1:{self.servers[server]}/ws", proxy=None, compression=None,
                               additional_headers={"Authorization": f"Bearer {self.token}"},
                               open_timeout=CONNECT_TIMEOUT, ping_interval=2, ping_timeout=5, close_timeout=2,
                               max_size=None, max_queue=None)
        except (OSError, TimeoutError, InvalidHandshake, InvalidStatus) as exc:
            rec.end(f"connect: {type(exc).__name__}: {exc}")
            return
        reader = asyncio.ensure_future(self._ws_read(ws, rec))
        try:
            await self._ws_life(ws, rec, stop)
        except Closed:
            pass
        finally:
            if not reader.done():
                rec.end("stopped", by_client=True)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 3)
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            for fut in self._waiting.values():
                fut.cancel()
            self._waiting.clear()

    async def _ws_read(self, ws: ClientConnection, rec: Record) -> None:
        try:
            async for message in ws:
                frame = orjson.loads(message)
                if frame.get("op") == "presence" and "type" in frame:
                    continue  # ephemeral presence and typing: not checked here
                rec.got(frame)
                self._seen(frame)
                ref = frame.get("ref")
                if ref is not None and frame.get("op") in ("subscribed", "unsubscribed", "error", "pong"):
                    fut = self._waiting.pop(ref, None)
                    if fut is not None and not fut.done():
                        fut.set_result(frame)
            rec.end(f"closed {ws.close_code} {ws.close_reason}")
        except ConnectionClosed as exc:
            rec.end(f"closed {exc.rcvd.code if exc.rcvd else None} ({type(exc).__name__})")
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(Closed())

    async def _request(self, ws: ClientConnection, rec: Record, **frame: Any) -> dict[str, Any]:
        """Send a frame and wait for its answer as long as the connection lives."""
        self._refs += 1
        ref = f"{self.spec.name}-{self._refs}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = fut
        msg = {**frame, "ref": ref}
        rec.out(msg)
        try:
            await ws.send(orjson.dumps(msg).decode())
        except ConnectionClosed as exc:
            raise Closed() from exc
        return await fut

    async def _subscribe(self, ws: ClientConnection, rec: Record, rooms: list[str], stop: asyncio.Event) -> bool:
        since = self.last
        while not stop.is_set():
            reply = await self._request(ws, rec, op="subscribe", rooms=rooms, since=since)
            if reply.get("op") == "subscribed":
                return True
            if reply.get("code") != "unavailable":
                return False
            await asyncio.sleep(self.rng.uniform(0.3, 1.0))  # the docs: again, same since, after a backoff
        return False

    async def _ws_life(self, ws: ClientConnection, rec: Record, stop: asyncio.Event) -> None:
        if not await self._subscribe(ws, rec, list(self.spec.rooms), stop):
            return
        end = time.monotonic() + self._lifetime()
        extra: str | None = None
        while not stop.is_set() and (self.settled or time.monotonic() < end):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.uniform(0.5, 2.0))
            if rec.closed is not None:
                return
            if self.settled or stop.is_set() or not self.spec.extra:
                continue
            if extra is None and self.rng.random() < 0.3:
                extra = self.rng.choice(self.spec.extra)
                if not await self._subscribe(ws, rec, [extra], stop):
                    extra = None
            elif extra is not None and self.rng.random() < 0.4:
                await self._request(ws, rec, op="unsubscribe", rooms=[extra])
                extra = None
        if stop.is_set():
            return
        rec.end("left", by_client=True)  # its time is up: leave, and resume on another server
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 3)

    # -- Server-Sent Events -----------------------------------------------------------------------------------
    async def _sse_once(self, stop: asyncio.Event) -> None:
        server = self.rng.choice(sorted(self.servers))
        rec = self._record(server)
        rooms = ",".join(self.spec.rooms)
        since = self.last
        path = f"/sse?rooms={quote(rooms, safe=',:')}&access_token={self.token}"
        rec.out({"op": "subscribe", "rooms": list(self.spec.rooms), "since": since, "ref": "sse"})
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.servers[server]), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            rec.end(f"connect: {type(exc).__name__}")
            return
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: chaos\r\nAccept: text/event-stream\r\n"
                         f"Last-Event-ID: {since}\r\n\r\n".encode())
            status, headers = await asyncio.wait_for(_head(reader), SSE_IDLE)
            if status != 200:
                body = await asyncio.wait_for(_body(reader, headers), SSE_IDLE)
                rec.got({"op": "error", "ref": "sse", "status": status, "rooms": list(self.spec.rooms),
                         "code": _error_code(body)})
                rec.end(f"status {status}")
                return
            rec.got({"op": "subscribed", "ref": "sse", "rooms": list(self.spec.rooms)})
            chunks = _chunks(reader) if "chunked" in headers.get("transfer-encoding", "") else _raw(reader)
            end = time.monotonic() + self._lifetime() + 2
            buffer = b""
            while not stop.is_set() and (self.settled or time.monotonic() < end):
                try:
                    data = await asyncio.wait_for(anext(chunks), SSE_IDLE)
                except StopAsyncIteration:
                    rec.end("stream ended")
                    return
                except TimeoutError:
                    rec.end(f"nothing for {SSE_IDLE:.0f}s", by_client=True)
                    return
                buffer += data
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self._sse_block(block, rec)
            rec.end("left", by_client=True)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            rec.end(f"{type(exc).__name__}: {exc}")
        finally:
            writer.transport.abort()

    def _sse_block(self, block: bytes, rec: Record) -> None:
        kind, data = "message", []
        for line in block.decode().split("\n"):
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
        if not data:
            return
        payload = orjson.loads("\n".join(data))
        if kind == "message":
            rec.got(payload)
            self._seen(payload)
        elif kind == "reset":
            rec.got({"op": "reset", "rooms": payload.get("rooms"), "reason": payload.get("reason"),
                     **({"id": payload["id"]} if "id" in payload else {})})
        else:  # close, error: the stream ends after it (its rooms are not subscribed any more)
            rec.got({**payload, "op": kind if payload.get("op") is None else payload["op"], "sse_event": kind,
                     "ref": "sse"})

    # -- long-polling -------------------------------------------------------------------------------------------
    async def _poll(self, stop: asyncio.Event) -> None:
        rec = self._record("*")
        rec.out({"op": "subscribe", "rooms": list(self.spec.rooms), "since": self.last, "ref": "poll"})
        subscribed = False
        rooms = quote(",".join(self.spec.rooms), safe=",:")
        while not stop.is_set():
            server = self.rng.choice(sorted(self.servers))
            path = f"/poll?rooms={rooms}&since={self.last}&wait={POLL_WAIT}"
            try:
                status, body = await asyncio.wait_for(self._get(server, path), HTTP_TIMEOUT)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                rec.got({"op": "poll_failed", "server": server, "why": type(exc).__name__})
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))
                continue
            if status != 200:
                rec.got({"op": "poll_failed", "server": server, "status": status, "code": _error_code(body)})
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))
                continue
            reply = orjson.loads(body)
            if not subscribed:
                rec.got({"op": "subscribed", "ref": "poll", "rooms": list(self.spec.rooms)})
                subscribed = True
            for reset in reply.get("resets") or []:
                rec.got({"op": "reset", "rooms": reset.get("rooms"), "reason": reset.get("reason")})
            for event in reply.get("events") or []:
                rec.got(event)
                self._seen(event)
            rec.got({"op": "polled", "server": server, "next": reply.get("next"), "n": len(reply.get("events") or [])})
            if isinstance(reply.get("next"), str):
                if reply["next"] == self.last and reply.get("resets"):
                    # The same position again, with a reset: the docs say to poll on with `next`; a pause first,
                    # so as not to spin on the server while it answers so at once.
                    await asyncio.sleep(self.rng.uniform(0.2, 0.5))
                self.last = reply["next"]
        rec.end("stopped", by_client=True)

    async def _get(self, server: str, path: str) -> tuple[int, bytes]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.servers[server]),
                                                CONNECT_TIMEOUT)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: chaos\r\nAuthorization: Bearer {self.token}\r\n"
                         "Connection: close\r\n\r\n".encode())
            status, headers = await _head(reader)
            return status, await _body(reader, headers)
        finally:
            writer.transport.abort()


# -- HTTP/1.1, the little of it the clients need ---------------------------------------------------------------

async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower() if name.strip().lower() == "transfer-encoding" \
                else value.strip()
    return status, headers


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", ""):
        return b"".join([chunk async for chunk in _chunks(reader)])
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


async def _chunks(reader: asyncio.StreamReader) -> Any:
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            with contextlib.suppress(Exception):
                await reader.readuntil(b"\r\n")
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


async def _raw(reader: asyncio.StreamReader) -> Any:
    while True:
        data = await reader.read(65536)
        if not data:
            return
        yield data


def _error_code(body: bytes) -> str:
    try:
        return str(orjson.loads(body)["error"]["code"])
    except Exception:
        return body[:80].decode("latin-1")


def plan_sessions(rng: random.Random, stable: list[tuple[str, str, bool]]) -> list[SessionSpec]:
    """The readers of a run: every kind of room, every transport, users reading their own private room, and
    readers of post rooms (of public and private posts alike: a private post's room must stay silent).
    ``stable`` is (post id, author, public) of the posts that exist from the start."""
    posts = [f"post:{p}" for p, _, _ in stable]
    specs = [
        SessionSpec("ws-public", "ws", "u1", ("public",)),
        SessionSpec("ws-author", "ws", "u2", ("author:u2", "hashtag:cats"), tuple(posts)),
        SessionSpec("ws-own-u1", "ws", "u1", ("user:u1", posts[0]), tuple(posts[1:])),
        SessionSpec("ws-own-u3", "ws", "u3", ("user:u3", "public"), tuple(posts)),
        SessionSpec("ws-posts", "ws", "u4", tuple(posts[:2]), tuple(posts[2:])),
        SessionSpec("ws-tags", "ws", "u5", ("hashtag:birds", "author:u1", posts[2]), tuple(posts)),
        SessionSpec("sse-own-u2", "sse", "u2", ("user:u2", "public")),
        SessionSpec("sse-posts", "sse", "u5", (posts[1], posts[2], "author:u3")),
        SessionSpec("poll-public", "poll", "u3", ("public", posts[3])),
        SessionSpec("poll-own-u4", "poll", "u4", ("user:u4", "hashtag:dogs")),
    ]
    rng.shuffle(specs)
    return specs


def all_rooms(specs: list[SessionSpec]) -> set[str]:
    return {r for s in specs for r in (*s.rooms, *s.extra)}

