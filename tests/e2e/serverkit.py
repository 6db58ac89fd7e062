"""The end-to-end harness of ``realtime serve``: server processes, stacks, tokens and WebSocket clients.

A stack is the stand-in (optionally), a watcher (optionally) and server processes on a fresh Redis key
prefix, so stacks share the session's redis-server without seeing each other's keys. Everything started is
stopped on the way out; every wait is bounded by a multiple of ``TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import orjson
import redis
from cryptography.hazmat.primitives.asymmetric import rsa
from pymongo import MongoClient
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from realtime.standin import StandIn
from tests.conftest import TIMEOUT, RedisServer, free_port
from tests.integration.watcherkit import WatcherProcess, setup_collections, stream, streaming, wait_for
from tests.processes import Service

SECRET = "e2e-shared-secret-for-hs256-tokens-0123456789"
DB = "app"


# -- processes ----------------------------------------------------------------------------------------------

class ServerProcess(Service):
    """``python -m realtime serve`` on a free port; stdout and stderr go to a log file."""

    argv = ("realtime", "serve")

    def __init__(self, redis_url: str, log_dir: Path, name: str, prefix: str, **env: str) -> None:
        port = free_port()
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("REALTIME_") and k not in ("REDIS_URL", "MONGODB_URI", "MONGODB_DB")}
        super().__init__(log_dir, name, dict(base, REDIS_URL=redis_url, REALTIME_LISTEN=f"127.0.0.1:{port}",
                                             REALTIME_JWT_SECRET=SECRET, REALTIME_REDIS_PREFIX=prefix, **env), port)
        self.killed = False  # by the test (SIGKILL): no clean exit to expect

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: the process dies at once, leaving whatever it had in Redis behind."""
        assert self.proc is not None
        self.killed = True
        self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
        return self.get("/readyz")[0] == 200


@dataclass
class Stack:
    prefix: str
    r: redis.Redis
    servers: list[ServerProcess]
    mongo: MongoClient[dict[str, Any]] | None = None
    standin: StandIn | None = None
    watcher: WatcherProcess | None = None
    serial: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def events_key(self) -> str:
        return "{" + self.prefix + "}:events"

    @property
    def db(self) -> Any:
        assert self.mongo is not None
        return self.mongo[DB]

    def events(self) -> list[dict[str, Any]]:
        return stream(self.r, self.events_key)

    def last_id(self) -> str:
        newest = self.r.xrevrange(self.events_key, count=1)
        return newest[0][0].decode() if newest else "0-0"

    def sentinel(self) -> str:
        """A public post written after everything else: once its event is in the stream, all before it is."""
        self.serial += 1
        post_id = f"sentinel{self.serial}"
        self.db.posts.insert_one({"_id": post_id, "authorId": "sentinel", "text": "the end"})
        return post_id

    def published(self, post_id: str, timeout: float = TIMEOUT * 3) -> list[dict[str, Any]]:
        """Wait until the watcher has published ``post_id``'s creation; the whole stream then."""
        def found() -> list[dict[str, Any]] | None:
            for _, fields in self.r.xrevrange(self.events_key, count=20):
                e = orjson.loads(fields[b"e"])
                if e["type"] == "post:created" and e["data"]["id"] == post_id:
                    return self.events()
            return None
        events: list[dict[str, Any]] = wait_for(found, f"the watcher to publish {post_id}", timeout=timeout)
        return events

    def received(self) -> list[float]:
        return [s.metric("realtime_events_received_total") for s in self.servers]


@contextlib.contextmanager
def running_stack(redis_server: RedisServer, log_dir: Path, name: str, *, servers: int = 2, watcher: bool = True,
                  watcher_env: dict[str, str] | None = None, server_env: dict[str, str] | None = None,
                  deep: bool = False) -> Iterator[Stack]:
    """Start a stack; everything started is stopped on the way out, whatever happens in between. With
    ``deep``, the servers are given the stand-in's URI, so they replay what Redis trimmed from its oplog."""
    prefix = f"{name}-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        r = redis.Redis.from_url(redis_server.url)
        stack.callback(r.close)
        st = Stack(prefix, r, [])
        if watcher:
            standin = StandIn(noop_interval=0.5)
            standin.start()
            stack.callback(standin.stop)
            mongo: MongoClient[dict[str, Any]] = MongoClient(standin.uri, serverSelectionTimeoutMS=int(TIMEOUT * 1000))
            stack.callback(mongo.close)
            setup_collections(mongo, DB)
            w = WatcherProcess(standin.uri, redis_server.url, log_dir, f"{name}-watcher", MONGODB_DB=DB,
                               REALTIME_REDIS_PREFIX=prefix, **(watcher_env or {}))
            stack.callback(w.stop)
            w.start()
            st.standin, st.mongo, st.watcher = standin, mongo, w
        env = dict(server_env or {})
        if deep:
            assert st.standin is not None, "deep replay needs the stand-in"
            env.update(MONGODB_URI=st.standin.uri, MONGODB_DB=DB)
        for i in range(servers):
            s = ServerProcess(redis_server.url, log_dir, f"{name}-server{i}", prefix, **env)
            stack.callback(s.stop)
            s.start()
            st.servers.append(s)
        for s in st.servers:
            wait_for(s.ready, f"{s.name} /readyz = 200", timeout=TIMEOUT * 3)
        if st.watcher is not None:
            w = st.watcher
            wait_for(lambda: streaming(w), "the watcher to stream changes", timeout=TIMEOUT * 3)
        yield st
        for s in st.servers:  # each server stops cleanly on SIGTERM (but those the test killed)
            code = s.stop()
            assert s.killed or code == 0, (code, s.log())


# -- tokens ---------------------------------------------------------------------------------------------------

def token(user: str, ttl: float = 600.0, secret: str = SECRET) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + ttl)}, secret, algorithm="HS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(user: str) -> str:
    """``alg: none``: no signature at all."""
    claims = {"sub": user, "exp": int(time.time() + 600)}
    return f"{_b64(orjson.dumps({'alg': 'none', 'typ': 'JWT'}))}.{_b64(orjson.dumps(claims))}."


def rs256_token(user: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode({"sub": user, "exp": int(time.time() + 600)}, key, algorithm="RS256")


# -- clients --------------------------------------------------------------------------------------------------

class Client:
    """A ``websockets`` connection whose frames a background task collects, parsed, in order (and, for
    ``frames``, as the very bytes of each text frame's payload, in ``raw``)."""

    def __init__(self, ws: ClientConnection, user: str | None) -> None:
        self.ws = ws
        self.user = user
        self.frames: list[dict[str, Any]] = []
        self.raw: list[bytes] = []  # the payload of each of ``frames``, undecoded
        self.presence: list[dict[str, Any]] = []  # ephemeral presence and typing frames, kept apart
        self.presence_at: list[float] = []  # when each of ``presence`` arrived (time.monotonic())
        self.ended = False
        self.refs = 0
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                message = await self.ws.recv(decode=False)
                msg = orjson.loads(message)
                if msg.get("op") == "presence" and "type" in msg:
                    self.presence.append(msg)
                    self.presence_at.append(time.monotonic())
                else:
                    self.frames.append(msg)
                    self.raw.append(message)
        except ConnectionClosed:
            pass
        finally:
            self.ended = True

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def send(self, **msg: Any) -> str:
        self.refs += 1
        ref = f"r{self.refs}"
        await self.ws.send(orjson.dumps({**msg, "ref": ref}).decode())
        return ref

    async def reply(self, ref: str, within: float = TIMEOUT) -> dict[str, Any]:
        """The first frame echoing ``ref``."""
        def find() -> dict[str, Any] | None:
            return next((f for f in self.frames if f.get("ref") == ref), None)
        found: dict[str, Any] = await until(find, f"a reply to {ref}", within, self)
        return found

    async def request(self, **msg: Any) -> dict[str, Any]:
        return await self.reply(await self.send(**msg))

    async def subscribe(self, rooms: list[str], since: str | None = None) -> dict[str, Any]:
        reply = await self.request(op="subscribe", rooms=rooms, **({"since": since} if since else {}))
        assert reply["op"] == "subscribed" and reply["rooms"] == rooms, reply
        return reply

    async def barrier(self) -> int:
        """Ping, and wait for the pong: everything the server sent before it has arrived. Its index."""
        ref = await self.send(op="ping")
        pong = await self.reply(ref)
        assert pong["op"] == "pong", pong
        return self.frames.index(pong)

    def events(self, start: int = 0, end: int | None = None) -> list[dict[str, Any]]:
        return [f for f in self.frames[start:end] if f["op"] == "event"]

    def raw_events(self, start: int = 0, end: int | None = None) -> list[bytes]:
        """The payloads of the event frames, as sent."""
        return [r for f, r in zip(self.frames[start:end], self.raw[start:end], strict=True) if f["op"] == "event"]

    async def closed(self, within: float = TIMEOUT) -> int | None:
        await until(lambda: self.ended, "the server to close the connection", within)
        return self.close_code

    async def got_events(self, n: int, what: str, within: float = TIMEOUT * 3, start: int = 0) -> None:
        await until(lambda: len(self.events(start)) >= n, what, within, self)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), TIMEOUT)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, TIMEOUT)


async def until(condition: Callable[[], Any], what: str, within: float = TIMEOUT, client: Client | None = None
                ) -> Any:
    """Poll ``condition`` until it is true; fail after ``within`` seconds (or as soon as ``client`` closes)."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if client is not None and client.ended:
            raise AssertionError(f"connection closed ({client.close_code}) while waiting for {what}; "
                                 f"last frames: {client.frames[-3:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


Opener = Callable[..., Awaitable[Client]]


def after(events: list[dict[str, Any]], point: str) -> list[dict[str, Any]]:
    """The stored events (resets included) after ``point``."""
    return [e for e in events if key_of(e["id"]) > key_of(point)]


def of_rooms(events: list[dict[str, Any]], rooms: set[str], after: str = "0-0") -> list[dict[str, Any]]:
    """The stored events a connection subscribed to ``rooms`` gets, after ``after``, once each, in order."""
    point = key_of(after)
    return [e for e in events if e["type"] != "reset" and key_of(e["id"]) > point and rooms & set(e["rooms"])]


def key_of(event_id: str) -> tuple[int, int]:
    head, _, tail = event_id.partition("-")
    return int(head), int(tail)


def check_frames(got: list[dict[str, Any]], expected: list[dict[str, Any]], rooms: list[str], who: str) -> None:
    """Event frames are the expected envelopes, in order, each once, labelled with a room of the client's."""
    ids = [f["id"] for f in got]
    assert len(set(ids)) == len(ids), f"{who}: an event arrived twice"
    extra = [f for f in got if f["id"] not in {e["id"] for e in expected}]
    assert not extra, f"{who} got {len(extra)} events of rooms it did not join, e.g. {extra[:2]}"
    assert ids == [e["id"] for e in expected], f"{who}: missing or out of order events"
    for f, e in zip(got, expected, strict=True):
        assert (f["type"], f["data"], f["ts"]) == (e["type"], e["data"], e["ts"]), who
        assert f["room"] in rooms and f["room"] in e["rooms"], (who, f, e)


async def settled(st: Stack, baseline: list[float], count: int) -> None:
    """Every server has read ``count`` more events from the stream than at ``baseline``."""
    await until(lambda: all(n >= b + count for n, b in zip(st.received(), baseline, strict=True)),
                f"the servers to read {count} new events", TIMEOUT * 3)

