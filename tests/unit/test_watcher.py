"""watchers.watcher, the parts that need no MongoDB nor Redis: a change's wall time and the stage it measures."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
from types import SimpleNamespace
from typing import Any

import pytest
from bson import Timestamp
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from realtime.events import Counter, Event
from watchers.config import MappingConfig, WatcherConfig
from watchers.likecount import Snapshot
from watchers.mapping import Mapped
from watchers.watcher import COLLECTION, Watcher, WatcherMetrics, wall_seconds


def test_a_naive_wall_time_is_utc_as_pymongo_decodes_it() -> None:
    """PyMongo decodes BSON dates as naive UTC datetimes (unless tz_aware): never as local time."""
    aware = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    assert wall_seconds({"wallTime": aware}) == aware.timestamp()
    assert wall_seconds({"wallTime": aware.replace(tzinfo=None)}) == aware.timestamp()
    assert wall_seconds({"wallTime": aware.astimezone(dt.timezone(dt.timedelta(hours=5)))}) == aware.timestamp()


def test_a_change_without_a_wall_time_has_none() -> None:
    """Before MongoDB 6.0 change events carry no wallTime."""
    assert wall_seconds({}) is None
    assert wall_seconds({"wallTime": "2026-01-02"}) is None


def test_reading_a_change_observes_its_age_since_its_wall_time() -> None:
    metrics = WatcherMetrics(lambda: True, lambda: 0.0)
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    metrics.read({"wallTime": hour_ago.replace(tzinfo=None)})
    metrics.read({"operationType": "insert"})  # no wallTime: nothing to observe
    assert metrics.from_mongodb.count == 1
    assert 3600 <= metrics.from_mongodb.sum < 3600 + 60
    assert metrics.to_redis.count == 0
    text = metrics.registry.render().splitlines()
    assert 'realtime_stage_latency_seconds_count{stage="mongodb_to_watcher"} 1' in text
    assert 'realtime_stage_latency_seconds_count{stage="watcher_to_redis"} 0' in text


class FakeStream:
    """A change stream whose reads (getMores) take a few milliseconds, each a batch (an empty one: nothing new);
    its resume token is that of the last change handed out, as the driver's is: ahead of what was published."""

    def __init__(self, batches: list[list[dict[str, Any]]]) -> None:
        self.batches = batches
        self.buffer: list[dict[str, Any]] = []
        self.alive = True
        self.resume_token: dict[str, Any] | None = None
        self.reading = False  # a getMore is on its way
        self._cursor = SimpleNamespace(_has_next=lambda: bool(self.buffer))

    async def try_next(self) -> dict[str, Any] | None:
        if not self.buffer:
            if not self.batches:
                self.alive = False
                return None
            batch = self.batches.pop(0)
            self.reading = True
            await asyncio.sleep(0.005)
            self.reading = False
            if not batch:
                return None
            self.buffer = batch
        change = self.buffer.pop(0)
        self.resume_token = change["_id"]
        return change


def change(n: int) -> dict[str, Any]:
    return {"_id": {"_data": f"{n:08d}"}, "operationType": "insert", "clusterTime": Timestamp(1_700_000_000, n)}


@pytest.mark.parametrize("read_ahead", [True, False])
async def test_a_read_ahead_never_moves_the_checkpoint_past_what_was_published(read_ahead: bool,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    """While a read is published the next is read (read ahead); the checkpoint still names the last change
    published, never the stream's token, which is then ahead of it (a watcher killed there would resume past
    changes it never published)."""
    cfg = WatcherConfig(redis_url="redis://127.0.0.1:1/0", mongodb_uri="mongodb://127.0.0.1:1", database="app",
                        mapping=MappingConfig(), prefix="t", checkpoint_interval=0.0, read_ahead=read_ahead)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient("mongodb://127.0.0.1:1", connect=False)
    watcher = Watcher(cfg, mongo, Redis(port=1))
    stream = FakeStream([[change(1), change(2)], [change(3)], [], [change(4), change(5), change(6)], []])
    published: list[str] = []
    saved: list[tuple[str, list[str]]] = []
    overlapped: list[bool] = []
    with_posts: list[Any] = []

    async def handle_read(lease: str, changes: list[dict[str, Any]], posts_now: Any = None) -> None:
        await asyncio.sleep(0.001)
        overlapped.append(stream.reading)  # the next read on its way while this one is published
        with_posts.append(posts_now)
        await asyncio.sleep(0.01)
        published.extend(c["_id"]["_data"] for c in changes)

    async def save(checkpoint: Any) -> None:
        saved.append((checkpoint.token["_data"], list(published)))

    async def posts_now(changes: list[dict[str, Any]]) -> dict[str, Any]:
        return {"read with": [c["_id"]["_data"] for c in changes]}

    monkeypatch.setattr(watcher, "_handle_read", handle_read)
    monkeypatch.setattr(watcher.checkpoints, "save", save)
    monkeypatch.setattr(watcher.router, "posts_now", posts_now)
    try:
        await watcher._read("lease", stream)
    finally:
        await mongo.close()
        await watcher.redis.aclose()
    assert published == [f"{n:08d}" for n in range(1, 7)]
    assert saved, "no checkpoint"
    for token, done in saved:
        assert token == done[-1], (token, done)  # the last published, never one read but not published
    assert any(overlapped) is read_ahead
    assert saved[-1][0] == "00000006"  # after the empty reads too
    # a read taken ahead comes with the posts its comment updates need as they are now, read with it
    assert with_posts == ([None, {"read with": ["00000003"]}, None] if read_ahead else [None, None, None])


async def test_the_garbage_collector_waits_until_a_read_is_published(monkeypatch: pytest.MonkeyPatch) -> None:
    """A collection during a read goes through every object the read made and frees none of them (they live until
    the read is published): the collector is off while a read is handled, on again after it, even when the read
    fails; pauses nest, and a collector that was off stays off."""
    cfg = WatcherConfig(redis_url="redis://127.0.0.1:1/0", mongodb_uri="mongodb://127.0.0.1:1", database="app",
                        mapping=MappingConfig(), prefix="t")
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient("mongodb://127.0.0.1:1", connect=False)
    watcher = Watcher(cfg, mongo, Redis(port=1))
    seen: list[bool] = []

    async def publish_read(lease: str, changes: list[dict[str, Any]], posts_now: Any = None) -> None:
        seen.append(gc.isenabled())
        await asyncio.sleep(0)
        with COLLECTION.paused():  # another read, nested
            seen.append(gc.isenabled())
        seen.append(gc.isenabled())
        if changes:
            raise RuntimeError("the read failed")

    monkeypatch.setattr(watcher, "_publish_read", publish_read)
    was = gc.isenabled()
    try:
        gc.enable()
        assert await watcher._handle_read("lease", []) is None
        assert seen == [False, False, False] and gc.isenabled()
        with pytest.raises(RuntimeError):
            await watcher._handle_read("lease", [change(1)])
        assert gc.isenabled()
        gc.disable()
        await watcher._handle_read("lease", [])
        assert not gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()
        await mongo.close()
        await watcher.redis.aclose()


async def test_a_run_is_published_batch_after_batch_while_the_next_is_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The round trips of a run overlap its mapping (which lets the event loop turn every YIELD_EVERY changes):
    the snapshot read of the like counts Redis lacks goes to MongoDB before the first change is mapped, and
    each batch's script runs while the next batch is mapped; the batches still go one at a time, in order, each
    with the seeds of the posts it counts first."""
    cfg = WatcherConfig(redis_url="redis://127.0.0.1:1/0", mongodb_uri="mongodb://127.0.0.1:1", database="app",
                        mapping=MappingConfig(), prefix="t", publish_batch=400)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient("mongodb://127.0.0.1:1", connect=False)
    watcher = Watcher(cfg, mongo, Redis(port=1))
    done: list[str] = []
    published: list[list[str]] = []
    changes = [{"_id": {"_data": f"{n:08d}"}, "operationType": "insert", "clusterTime": Timestamp(1_700_000_000, n),
                "ns": {"db": "app", "coll": "likes"}, "documentKey": {"_id": f"l{n}"},
                "fullDocument": {"_id": f"l{n}", "postId": f"p{n % 7 if n < 900 else 7}", "userId": "u1"}}
               for n in range(1, 1001)]

    async def prefetch(*args: Any) -> None:
        return None

    def map_known(change: dict[str, Any], position: int, at: int) -> Mapped:
        done.append("mapped")
        post = change["fullDocument"]["postId"]
        return Mapped([Event(f"{at}-0", "post:liked", (f"post:{post}",), {"likes": 0}, 0, Counter(post, 1))])

    async def counted(posts: list[str]) -> set[str]:
        return {"p0"}

    async def snapshot(placed: Any, first: dict[str, int], likes: Any = None) -> Snapshot:
        done.append("counts asked")
        await asyncio.sleep(0.001)
        return Snapshot(0, Timestamp(1_700_000_000, 0), frozenset(first), [], {})

    async def seeds(placed: Any, first: dict[str, int], ahead: Snapshot | None = None) -> dict[str, Any]:
        assert ahead is not None and ahead.posts == {f"p{n}" for n in range(1, 8)}
        return {post: f"seed of {post} at {i}" for post, i in first.items()}

    async def publish_batch(lease: str, pending: list[Any], placed: list[Any], seeds: dict[str, Any],
                            read: float | None = None) -> None:
        done.append("publishing")
        await asyncio.sleep(0.005)
        published.append([f"{len(pending)} changes", *sorted(seeds.values())])
        done.append("published")

    monkeypatch.setattr(watcher.router, "prefetch", prefetch)
    monkeypatch.setattr(watcher.router, "map_known", map_known)
    monkeypatch.setattr(watcher.publisher, "counted", counted)
    monkeypatch.setattr(watcher.like_counts, "snapshot", snapshot)
    monkeypatch.setattr(watcher.like_counts, "seeds", seeds)
    monkeypatch.setattr(watcher, "_publish_batch", publish_batch)
    try:
        await watcher._publish_run("lease", changes, 0.0)
    finally:
        await mongo.close()
        await watcher.redis.aclose()
    assert done.count("mapped") == 1000
    assert done.index("counts asked") < done.index("mapped")  # on its way before the first change is mapped
    # one batch at a time, each while the next one is mapped (but the last)
    assert [d for d in done if d != "mapped" and d != "counts asked"] == ["publishing", "published"] * 3
    batches = [i for i, d in enumerate(done) if d == "publishing"]
    assert done[batches[0]:].count("mapped") > 400 and done[batches[1]:].count("mapped") > 0
    assert published == [["400 changes", *sorted(f"seed of p{n} at {n - 1}" for n in range(1, 7))],
                         ["400 changes"], ["200 changes", "seed of p7 at 899"]]
