"""The watcher's batches (several changes per read, per MGET, per like-count read and per publish script call)
against one change at a time: the same Redis contents, through watchers running in this process, redis-server
and the stand-in. Each watcher publishes under a prefix of its own, so that two of them can be compared key by
key on one Redis."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis
from pymongo import AsyncMongoClient
from redis.asyncio import Redis as AsyncRedis

from realtime import events as ev
from realtime.standin import StandIn
from tests.conftest import TIMEOUT, RedisServer
from tests.e2e.serverkit import until
from tests.integration.watcherkit import COLLECTIONS
from watchers import config as watcher_config
from watchers.likecount import LikeCounts
from watchers.watcher import Watcher

pytestmark = [pytest.mark.integration]

ONE_BY_ONE = {"REALTIME_READ_BATCH": "1", "REALTIME_PUBLISH_BATCH": "1"}


@pytest.fixture
def r(redis_server: RedisServer) -> Any:
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    yield client
    client.close()


async def mongo_for(standin: StandIn, pre_images: bool) -> AsyncMongoClient[dict[str, Any]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(standin.uri)
    for name in COLLECTIONS:
        await client.app.create_collection(name, changeStreamPreAndPostImages={"enabled": pre_images})
    return client


@contextlib.asynccontextmanager
async def running(standin: StandIn, redis_server: RedisServer, name: str, prefix: str, *, lead: bool = True,
                  **env: str) -> AsyncIterator[Watcher]:
    """A watcher in this process until the block ends (it then releases its lease); ``lead``: wait until it
    leads and streams."""
    cfg = watcher_config.load({"MONGODB_URI": standin.uri, "REDIS_URL": redis_server.url, "REALTIME_WATCHER_NAME": name,
                               "REALTIME_REDIS_PREFIX": prefix, "REALTIME_LEASE_SECONDS": "1",
                               "REALTIME_MAX_AWAIT_MS": "50", "REALTIME_CHECKPOINT_INTERVAL": "0.1", **env})
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(cfg.mongodb_uri)
    redis_client = AsyncRedis.from_url(cfg.redis_url)
    watcher = Watcher(cfg, client, redis_client)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        if lead:
            await until(lambda: watcher.streaming or task.done(), f"{name} to lead", TIMEOUT * 3)
            assert not task.done(), f"{name} ended"
        yield watcher
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)
        await client.close()
        await redis_client.aclose()


async def placed(*watchers: Watcher) -> None:
    """Wait until each watcher has saved a checkpoint: stopped now, it resumes from there, not from a later now."""
    for w in watchers:
        await until(lambda w=w: w.metrics.checkpoints.value() >= 1, f"{w.cfg.name} to save a checkpoint", TIMEOUT)


def published(r: redis.Redis, prefix: str, post_id: str) -> bool:
    """Whether the post:created of ``post_id`` is in the prefix's global stream."""
    return any(orjson.loads(fields[b"e"])["type"] == ev.POST_CREATED
               and orjson.loads(fields[b"e"])["data"]["id"] == post_id
               for _, fields in r.xrevrange("{" + prefix + "}:events", count=50))


async def until_published(r: redis.Redis, post_id: str, *prefixes: str) -> None:
    for prefix in prefixes:
        await until(lambda p=prefix: published(r, p, post_id), f"{prefix} to publish {post_id}", TIMEOUT * 6)


def contents(r: redis.Redis, prefix: str) -> dict[str, Any]:
    """What a prefix holds in Redis that the changes decide: the global stream (each entry's id, event and
    token; not the reset markers, which tell where each watcher first started), every room's history, the like
    counts and the points they were read at, the indexes of likes, comments and posts, and the last change."""
    tag = "{" + prefix + "}"
    events = [(entry_id, fields[b"e"], fields.get(b"t")) for entry_id, fields in r.xrange(f"{tag}:events")
              if orjson.loads(fields[b"e"])["type"] != ev.RESET]
    rooms = sorted(key.decode() for key in r.scan_iter(match=f"{tag}:room:*"))
    posts = sorted(key.decode() for key in r.scan_iter(match=f"{tag}:post:*"))
    meta = r.hgetall(f"{tag}:meta")
    return {
        "events": events,
        "rooms": {key[len(tag):]: r.xrange(key) for key in rooms},
        "likes": r.hgetall(f"{tag}:likes"), "since": r.hgetall(f"{tag}:likes:since"),
        "index": {kind: r.hgetall(f"{tag}:idx:{kind}") for kind in ("like", "comment")},
        "posts": {key[len(tag):]: r.get(key) for key in posts},
        "meta": {k: meta.get(k) for k in (b"token", b"token_json", b"at", b"last_id")},
    }


class Mix:
    """Random writes of a social app, reproducible from a seed: posts (some private, some edited, made private or
    deleted), likes (many on the newest posts: their first likes) and unlikes, comments and their edits and
    deletes, and transactions mixing them (a post and its first likes, likes and unlikes of one post)."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], seed: int) -> None:
        self.db = client.app
        self.client = client
        self.rng = random.Random(seed)
        self.posts: list[str] = []
        self.likes: dict[str, str] = {}  # like id -> post id
        self.comments: list[str] = []
        self.serial = 0

    def _id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def _post(self) -> str:
        return self.rng.choice(self.posts[-3:]) if self.rng.random() < 0.5 else self.rng.choice(self.posts)

    async def before(self) -> None:
        """Posts and likes written before any watcher starts: their counts must come from MongoDB."""
        for i in range(4):
            post_id = f"old{i}"
            await self.db.posts.insert_one({"_id": post_id, "authorId": f"u{i}", "text": post_id, "hashtags": ["a"]})
            self.posts.append(post_id)
            for k in range(i):
                like_id = f"old{i}-{k}"
                await self.db.likes.insert_one({"_id": like_id, "postId": post_id, "userId": f"v{k}"})
                self.likes[like_id] = post_id

    async def op(self, session: Any = None) -> None:
        db, rng = self.db, self.rng
        roll = rng.random()
        if roll < 0.12 or not self.posts:
            post_id = self._id("p")
            doc: dict[str, Any] = {"_id": post_id, "authorId": f"u{rng.randrange(5)}", "text": "hello",
                                   "hashtags": rng.sample(["news", "cats", "dogs"], rng.randrange(3))}
            if rng.random() < 0.2:
                doc["visibility"] = "private"
            await db.posts.insert_one(doc, session=session)
            self.posts.append(post_id)
        elif roll < 0.50:
            like_id, post_id = self._id("l"), self._post()
            await db.likes.insert_one({"_id": like_id, "postId": post_id, "userId": f"u{rng.randrange(8)}"},
                                      session=session)
            self.likes[like_id] = post_id
        elif roll < 0.60 and self.likes:
            like_id = rng.choice(sorted(self.likes))
            await db.likes.delete_one({"_id": like_id}, session=session)
            del self.likes[like_id]
        elif roll < 0.72:
            comment_id = self._id("c")
            await db.comments.insert_one({"_id": comment_id, "postId": self._post(), "userId": f"u{rng.randrange(8)}",
                                          "text": "nice"}, session=session)
            self.comments.append(comment_id)
        elif roll < 0.78 and self.comments:
            await db.comments.update_one({"_id": rng.choice(self.comments)}, {"$set": {"text": "edited"}},
                                         session=session)
        elif roll < 0.80 and self.comments:
            await db.comments.delete_one({"_id": self.comments.pop(rng.randrange(len(self.comments)))},
                                         session=session)
        elif roll < 0.90:
            change = {"text": f"edit {self.serial}"} if rng.random() < 0.7 else \
                {"visibility": rng.choice(["public", "private"])}
            await db.posts.update_one({"_id": self._post()}, {"$set": change}, session=session)
        elif roll < 0.92 and len(self.posts) > 3:
            await db.posts.delete_one({"_id": self.posts.pop(rng.randrange(len(self.posts)))}, session=session)
        else:
            self.serial += 1

    async def write(self, steps: int) -> None:
        for _ in range(steps):
            if self.rng.random() < 0.15:
                async with self.client.start_session() as session, await session.start_transaction():
                    for _ in range(self.rng.randrange(2, 6)):
                        await self.op(session)
            else:
                await self.op()


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("pre_images", [True, False], ids=["pre-images", "no-pre-images"])
@pytest.mark.parametrize("sizes", [("2000", "500"), ("40", "7")], ids=["default-batches", "small-batches"])
async def test_batches_publish_what_one_change_at_a_time_publishes(
        r: redis.Redis, standin: StandIn, redis_server: RedisServer, seed: int, pre_images: bool,
        sizes: tuple[str, str]) -> None:
    """The same ids, events (payloads, like counts), tokens, room histories, counts and indexes, whether the
    changes go one per read and per script call or in batches, for random mixes with transactions and first
    likes; written while both watchers are stopped, so that they meet them as a backlog."""
    mongo = await mongo_for(standin, pre_images)
    batched = {"REALTIME_READ_BATCH": sizes[0], "REALTIME_PUBLISH_BATCH": sizes[1]}
    try:
        mix = Mix(mongo, seed)
        await mix.before()
        async with running(standin, redis_server, "one", "one", **ONE_BY_ONE) as one, \
                running(standin, redis_server, "many", "many", **batched) as many:
            await placed(one, many)
        await mix.write(150)
        await mongo.app.posts.insert_one({"_id": "end", "authorId": "u0", "text": "end"})
        async with running(standin, redis_server, "one", "one", **ONE_BY_ONE) as one, \
                running(standin, redis_server, "many", "many", **batched) as many:
            await until_published(r, "end", "one", "many")
        one_by_one, in_batches = contents(r, "one"), contents(r, "many")
        assert len(one_by_one["events"]) > 150 and one_by_one["likes"]
        assert in_batches == one_by_one
        changes = sum(many.metrics.changes.values.values())
        assert one.metrics.batches.value() == sum(one.metrics.changes.values.values()) > 150
        assert many.metrics.batches.value() < changes / 3, "the changes went in batches"
    finally:
        await mongo.close()


async def test_first_likes_of_one_read_take_one_snapshot_read(r: redis.Redis, standin: StandIn,
                                                              redis_server: RedisServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """41 posts' first likes in one read (some in transactions): their counts come from at most two snapshot
    reads (one counting the likes of all of them), not one per post, and are exact."""
    reads: list[list[dict[str, Any]]] = []
    snapshot = LikeCounts._snapshot

    async def counted(self: LikeCounts, pipeline: list[dict[str, Any]], *args: Any) -> list[dict[str, Any]]:
        reads.append(pipeline)
        return await snapshot(self, pipeline, *args)

    monkeypatch.setattr(LikeCounts, "_snapshot", counted)
    mongo = await mongo_for(standin, True)
    try:
        db = mongo.app
        for i in range(41):
            await db.posts.insert_one({"_id": f"p{i}", "authorId": "a", "text": "t"})
            await db.likes.insert_many([{"_id": f"old{i}-{k}", "postId": f"p{i}", "userId": f"v{k}"}
                                        for k in range(i % 4)] or [{"_id": f"x{i}", "postId": "none", "userId": "v"}])
        async with running(standin, redis_server, "w", "rt") as w:
            await placed(w)
        for i in range(0, 41, 3):
            async with mongo.start_session() as session, await session.start_transaction():
                for j in range(i, min(i + 3, 41)):
                    await db.likes.insert_one({"_id": f"new{j}", "postId": f"p{j}", "userId": "u"}, session=session)
        await db.posts.insert_one({"_id": "end", "authorId": "a", "text": "end"})
        async with running(standin, redis_server, "w", "rt"):
            await until_published(r, "end", "rt")
    finally:
        await mongo.close()
    liked = {e["data"]["postId"]: e["data"]["likes"] for e in
             (orjson.loads(fields[b"e"]) for _, fields in r.xrange("{rt}:events")) if e["type"] == ev.POST_LIKED}
    assert liked == {f"p{i}": i % 4 + 1 for i in range(41)}
    assert 1 <= len(reads) <= 2, reads


async def test_a_handover_between_two_watchers_publishes_what_one_watcher_does(r: redis.Redis, standin: StandIn,
                                                                               redis_server: RedisServer) -> None:
    """Watchers x and y share a prefix: x leads, y stands by, x stops while changes are being written and y takes
    over. Redis then holds what one watcher alone (another prefix) published for the same changes. (Post-images
    as of each change: with updateLookup, an update carries its document as it is when it is read, which a
    watcher that reads it later finds changed.)"""
    mongo = await mongo_for(standin, True)
    images = {"REALTIME_FULL_DOCUMENT": "whenAvailable"}
    try:
        mix = Mix(mongo, 9)
        await mix.before()
        async with contextlib.AsyncExitStack() as outer:
            await outer.enter_async_context(running(standin, redis_server, "alone", "alone", **images))
            async with contextlib.AsyncExitStack() as x_scope:
                await x_scope.enter_async_context(running(standin, redis_server, "x", "pair", **images))
                y = await outer.enter_async_context(running(standin, redis_server, "y", "pair", lead=False, **images))
                await mix.write(60)
                await mongo.app.posts.insert_one({"_id": "half", "authorId": "u0", "text": "half"})
                await until_published(r, "half", "alone", "pair")
                assert not y.streaming
                await mix.write(30)
            # x stopped (releasing its lease) wherever it was: y takes over
            await until(lambda: y.streaming, "y to take over", TIMEOUT * 3)
            await mix.write(30)
            await mongo.app.posts.insert_one({"_id": "end", "authorId": "u0", "text": "end"})
            await until_published(r, "end", "alone", "pair")
            assert y.metrics.leader.value() == 1
        assert contents(r, "pair") == contents(r, "alone")
    finally:
        await mongo.close()
