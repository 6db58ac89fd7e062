"""Running watcher processes in tests, and the reference each test holds the Redis stream to."""

from __future__ import annotations

import os
import signal
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
            REALTIME_CHECKPOINT_INTERVAL="0.2", REALTIME_MAX_AWAIT_MS="100", **env), port)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig not in (signal.SIGSTOP, signal.SIGCONT):
                self.proc.wait(timeout=TIMEOUT)


def wait_for(condition: Any, what: str, timeout: float = TIMEOUT, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


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
