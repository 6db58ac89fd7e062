"""Running watcher processes in tests, the faults they meet (a redis-server to kill, freeze and restart, a
proxy that refuses or hangs), and the reference each test holds the Redis stream to."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import redis
from pymongo import MongoClient

from realtime import events as ev
from tests.conftest import TIMEOUT, free_port
from tests.processes import Service
from watchers import mapping
from watchers.config import MappingConfig

COLLECTIONS = ("posts", "likes", "comments")


class WatcherProcess(Service):
    """``python -m watchers`` with a test's environment; stdout and stderr go to a log file."""

    argv = ("watchers",)

    def __init__(self, mongo_uri: str, redis_url: str, log_dir: Path, name: str, **env: str) -> None:
        port = free_port()
        super().__init__(log_dir, name, dict(
            os.environ, MONGODB_URI=mongo_uri, REDIS_URL=redis_url, REALTIME_WATCHER_NAME=name,
            REALTIME_WATCHER_HTTP=f"127.0.0.1:{port}", REALTIME_LEASE_SECONDS="1",
            REALTIME_CHECKPOINT_INTERVAL="0.2", REALTIME_MAX_AWAIT_MS="100") | env, port)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig not in (signal.SIGSTOP, signal.SIGCONT):
                self.proc.wait(timeout=TIMEOUT)


class RedisProcess:
    """A redis-server of the test's own on a fixed loopback port, which the test kills (SIGKILL), freezes
    (SIGSTOP) and starts again on the same port, with its data (append-only file, fsync every second, as in
    compose.yaml) or without it (``wipe``)."""

    def __init__(self, workdir: Path, *, appendonly: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait: bool = True) -> RedisProcess:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            wait_for(self.answers, f"redis-server to answer on port {self.port}")
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown save; what the append-only file holds survives, up to its last fsync."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(sig)

    def wipe(self) -> None:
        """Delete the data files: the next start is a Redis that lost its data."""
        assert self.proc is None or self.proc.poll() is not None, "wipe a stopped redis-server"
        for path in self.dir.iterdir():
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Proxy:
    """A TCP proxy on loopback, in front of a server, for one process under test: it forwards, refuses (closes
    its port and every connection, as a stopped server does) or hangs (keeps every connection open and
    forwards nothing, as a frozen server or a partition does), on command from the test's thread."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=TIMEOUT)

    def start(self) -> Proxy:
        self._thread.start()
        self.forward()
        return self

    def forward(self) -> None:
        async def go() -> None:
            self._flowing.set()
            if self._server is None:
                self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self._call(go())

    def hang(self) -> None:
        async def go() -> None:
            self._flowing.clear()
        self._call(go())

    def refuse(self) -> None:
        async def go() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            self._drop()
        self._call(go())

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.refuse()

        async def cancel() -> None:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.sleep(0.05)  # aborted transports close their sockets on a later turn of the loop
        self._call(cancel())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=TIMEOUT)
        self._loop.close()

    def _drop(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        pumps = [asyncio.create_task(self._pump(reader, up_writer)), asyncio.create_task(self._pump(up_reader, writer))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            for w in (writer, up_writer):
                w.transport.abort()
                self._writers.discard(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()


def alive(w: WatcherProcess) -> bool:
    return w.proc is not None and w.proc.poll() is None


def wait_for(condition: Any, what: str, timeout: float = TIMEOUT, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def start_time(client: MongoClient[dict[str, Any]]) -> Any:
    return client.admin.command("ping")["operationTime"]


def check_stream(r: redis.Redis, client: MongoClient[dict[str, Any]], start: Any) -> list[Any]:
    """Every change since ``start`` is in the global stream once, in order, with its own ids; the changes."""
    changes = list(reference(client, "app", start))
    expected = expected_events(changes)
    wait_for(lambda: len(published(stream(r))) >= len(expected), "the watcher to publish every change",
             timeout=TIMEOUT * 6)
    got = published(stream(r))
    assert len({e[0] for e in got}) == len(got), "no event id appears twice"
    assert got == expected
    return changes


def check_counts(r: redis.Redis, client: MongoClient[dict[str, Any]]) -> None:
    """Every post's like count in Redis is the number of its likes in MongoDB."""
    counts = {k.decode(): int(v) for k, v in r.hgetall("{rt}:likes").items()}
    truth = {row["_id"]: row["n"] for row in client.app.likes.aggregate(
        [{"$group": {"_id": "$postId", "n": {"$sum": 1}}}])}
    for post, n in truth.items():
        assert counts.get(post) == n, f"like count of {post}"
    assert all(n == 0 for post, n in counts.items() if post not in truth)


def leading(w: WatcherProcess, r: redis.Redis) -> WatcherProcess:
    """``w`` once it holds the lease and its stream is open."""
    wait_for(lambda: leader(r) == w.name and streaming(w), f"{w.name} to lead")
    return w


def streaming(w: WatcherProcess) -> bool:
    status, body = w.get("/readyz")
    return status == 200 and bool(orjson.loads(body).get("streaming"))


def leader(r: redis.Redis) -> str | None:
    value = r.get("{rt}:leader")
    return value.decode().rsplit(":", 1)[0] if value else None


def stream(r: redis.Redis, key: str = "{rt}:events") -> list[dict[str, Any]]:
    """The stored events of a stream, in order, each with the token it was published with."""
    out = []
    for entry_id, fields in r.xrange(key):
        envelope = orjson.loads(fields[b"e"])
        assert envelope["id"] == entry_id.decode(), "the entry id is the event id"
        envelope["token"] = fields.get(b"t", b"").decode()
        out.append(envelope)
    return out


def client_for(standin: Any, pre_images: bool) -> MongoClient[dict[str, Any]]:
    """A client of ``standin`` with the watched collections of ``app`` made, pre-images on or off."""
    client: MongoClient[dict[str, Any]] = MongoClient(standin.uri)
    for name in COLLECTIONS:
        client.app.create_collection(name, changeStreamPreAndPostImages={"enabled": pre_images})
    return client


def lead(r: redis.Redis, w: WatcherProcess) -> None:
    """Start the watcher ``w`` and wait until it leads and streams."""
    w.start()
    wait_for(lambda: leader(r) == "w" and streaming(w), "the watcher to lead")


def settle(r: redis.Redis, client: MongoClient[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Insert a public post and wait for its event: every change before it is then published."""
    client.app.posts.insert_one({"_id": name, "authorId": "sentinel", "text": "the end"})

    def seen() -> list[dict[str, Any]] | None:
        events = stream(r)
        return events if any(e["type"] == ev.POST_CREATED and e["data"]["id"] == name for e in events) else None

    events: list[dict[str, Any]] = wait_for(seen, f"the watcher to publish {name}")
    return events


def setup_collections(client: MongoClient[dict[str, Any]], db: str) -> None:
    for name in COLLECTIONS:
        client[db].create_collection(name, changeStreamPreAndPostImages={"enabled": True})


def reference(client: MongoClient[dict[str, Any]], db: str, start: Any) -> Iterator[dict[str, Any]]:
    """Every change of the watched collections from ``start`` (a cluster time), read after the fact."""
    pipeline = [{"$match": {"ns.coll": {"$in": list(COLLECTIONS)}}}]
    with client[db].watch(pipeline, start_at_operation_time=start, full_document_before_change="whenAvailable",
                          max_await_time_ms=100) as changes:
        while True:
            change = changes.try_next()
            if change is None:
                return
            yield change


def expected_events(changes: list[dict[str, Any]]) -> list[tuple[str, str, tuple[str, ...], int | None]]:
    """What the global stream must hold for these changes: (id, type, rooms, like count), in order.

    Computed with the watcher's own pure mapping, but with like counts and post routing derived here from
    the changes alone, so a counting or ordering fault in the watcher cannot hide."""
    cfg = MappingConfig()
    posts: dict[str, mapping.PostInfo] = {}
    likes: dict[str, int] = {}
    out = []
    last_time, position = -1, -1
    for change in changes:
        ct = change["clusterTime"]
        time_part = ev.time_part(ct.time, ct.inc)
        position = position + 1 if time_part == last_time else 0
        last_time = time_part
        coll = change["ns"]["coll"]
        info = None
        if coll == "posts":
            doc = change.get("fullDocument") or change.get("fullDocumentBeforeChange")
            key = str(change["documentKey"]["_id"])
            if doc is not None:
                posts[key] = mapping.post_info(doc, cfg)  # type: ignore[assignment]
            info = posts.get(key)
        else:
            sub = mapping.subject(change, cfg)
            if sub is not None and sub.post_id is not None:
                info = posts.get(sub.post_id)
        mapped = mapping.map_change(change, position, cfg, info)
        for e in mapped.events:
            count = None
            if e.counter is not None:
                likes[e.counter.post_id] = likes.get(e.counter.post_id, 0) + e.counter.delta
                count = likes[e.counter.post_id]
            out.append((e.id, e.type, e.rooms, count))
    return out


def published(events: list[dict[str, Any]]) -> list[tuple[str, str, tuple[str, ...], int | None]]:
    return [(e["id"], e["type"], tuple(e["rooms"]), e["data"].get("likes") if e["type"] in (
        ev.POST_LIKED, ev.POST_UNLIKED) else None) for e in events if e["type"] != ev.RESET]
