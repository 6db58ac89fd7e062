"""Like counts of likes and unlikes written in transactions, through a watcher running in this process (so a
crash can be placed between two changes of a transaction), redis-server and the stand-in.

Every change of a transaction shares the transaction's ``clusterTime``. The count a ``post:liked`` or
``post:unliked`` carries must still be the post's count right after that change, whichever change of the
transaction is the first the watcher needs a count for, and across a crash between two of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo import AsyncMongoClient
from redis.asyncio import Redis as AsyncRedis

from realtime import events as ev
from realtime.events import Counter, Event
from realtime.standin import StandIn
from tests.conftest import TIMEOUT, RedisServer
from tests.e2e.serverkit import until
from tests.integration.watcherkit import COLLECTIONS, stream
from watchers import config as watcher_config
from watchers.keys import Keys
from watchers.publish import ALL_CHANGES, BatchOutcome, NeedSeed, Publisher, Seed, point
from watchers.watcher import Watcher

pytestmark = [pytest.mark.integration]

Op = tuple[str, str, str]  # ("like", like id, post id), ("unlike", like id, ""), ("comment", comment id, post id)


class Crash(Exception):
    """The watcher process dies here (raised by the publisher in place of the next change's publish)."""


class CrashingPublisher(Publisher):
    """Publishes normally; once armed with n, publishes n more changes and then dies before the next (within a
    batch too: the changes before the crash go in a batch of their own)."""

    left: int | None = None

    async def publish_batch(self, **kwargs: Any) -> BatchOutcome:
        changes = kwargs.pop("changes")
        if self.left is not None and self.left < len(changes):
            if self.left > 0:
                await super().publish_batch(changes=changes[:self.left], **kwargs)
            self.left = 0
            raise Crash()
        outcome = await super().publish_batch(changes=changes, **kwargs)
        if self.left is not None:
            self.left -= len(changes)
        return outcome


@pytest.fixture
async def mongo(standin: StandIn) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(standin.uri)
    for name in COLLECTIONS:
        await client.app.create_collection(name, changeStreamPreAndPostImages={"enabled": True})
    yield client
    await client.close()


@contextlib.asynccontextmanager
async def running(standin: StandIn, redis_server: RedisServer, tmp_path: Path, name: str,
                  **env: str) -> AsyncIterator[tuple[Watcher, asyncio.Task[None]]]:
    """A watcher leading in this process until the block ends; its run task (which ends on a crash)."""
    cfg = watcher_config.load({"MONGODB_URI": standin.uri, "REDIS_URL": redis_server.url,
                               "REALTIME_WATCHER_NAME": name, "REALTIME_LEASE_SECONDS": "1",
                               "REALTIME_MAX_AWAIT_MS": "50", "REALTIME_CHECKPOINT_INTERVAL": "0.1", **env})
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(cfg.mongodb_uri)
    redis_client = AsyncRedis.from_url(cfg.redis_url)
    watcher = Watcher(cfg, client, redis_client)
    watcher.publisher = CrashingPublisher(redis_client, watcher.keys, global_maxlen=cfg.global_maxlen,
                                          room_maxlen=cfg.room_maxlen)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        await until(lambda: watcher.streaming or task.done(), f"{name} to lead", TIMEOUT * 3)
        yield watcher, task
    finally:
        stop.set()
        with contextlib.suppress(Crash):
            await asyncio.wait_for(task, TIMEOUT)
        await client.close()
        await redis_client.aclose()


async def until_published(r: redis.Redis, post_id: str) -> None:
    """Wait for the post:created of ``post_id``: every change before it is then published."""
    await until(lambda: any(e["type"] == ev.POST_CREATED and e["data"]["id"] == post_id for e in stream(r)),
                f"the watcher to publish {post_id}", TIMEOUT * 3)


def like_events(r: redis.Redis) -> list[tuple[str, str, int]]:
    return [(e["type"], e["data"]["postId"], e["data"]["likes"]) for e in stream(r)
            if e["type"] in (ev.POST_LIKED, ev.POST_UNLIKED)]


async def counts(db: Any) -> dict[str, int]:
    return {row["_id"]: row["n"] async for row in await db.likes.aggregate(
        [{"$group": {"_id": "$postId", "n": {"$sum": 1}}}])}


async def redis_matches_mongodb(r: redis.Redis, client: AsyncMongoClient[dict[str, Any]]) -> None:
    """Every like count Redis holds is the post's number of likes in MongoDB."""
    truth = await counts(client.app)
    held = {k.decode(): int(v) for k, v in r.hgetall("{rt}:likes").items()}
    assert held and {post: truth.get(post, 0) for post in held} == held


async def transaction(client: AsyncMongoClient[dict[str, Any]], ops: list[Op]) -> list[tuple[str, str, int]]:
    """Write ``ops`` in one transaction; the like events they must give, from the counts before it."""
    db = client.app
    posts = {row["_id"]: row["postId"] async for row in db.likes.find()}
    count = await counts(db)
    expected = []
    async with client.start_session() as session, await session.start_transaction():
        for op, like_id, post_id in ops:
            if op == "comment":  # not a like: positions within the transaction are not like-only
                await db.comments.insert_one({"_id": like_id, "postId": post_id, "userId": "u9", "text": "+1"},
                                             session=session)
            elif op == "like":
                await db.likes.insert_one({"_id": like_id, "postId": post_id, "userId": f"u-{like_id}"},
                                          session=session)
                posts[like_id] = post_id
                count[post_id] = count.get(post_id, 0) + 1
                expected.append((ev.POST_LIKED, post_id, count[post_id]))
            else:
                await db.likes.delete_one({"_id": like_id}, session=session)
                post_id = posts.pop(like_id)
                count[post_id] -= 1
                expected.append((ev.POST_UNLIKED, post_id, count[post_id]))
    return expected


async def setup_posts(client: AsyncMongoClient[dict[str, Any]]) -> None:
    """Posts a, b, c, d. b has two likes the watcher never saw (its count must come from MongoDB); d has
    one like it has published (Redis holds d's count)."""
    db = client.app
    await db.posts.insert_many([{"_id": p, "authorId": "author", "text": p} for p in "abcd"])
    await db.likes.insert_many([{"_id": "b-old1", "postId": "b", "userId": "x1"},
                                {"_id": "b-old2", "postId": "b", "userId": "x2"}])


async def after_start(client: AsyncMongoClient[dict[str, Any]], r: redis.Redis) -> None:
    db = client.app
    await db.likes.insert_one({"_id": "d-old", "postId": "d", "userId": "x3"})
    await db.posts.insert_one({"_id": "ready", "authorId": "author", "text": "ready"})
    await until_published(r, "ready")


# The like and unlike mixes of one transaction: a post's first like first or not, several posts, likes and
# unlikes of likes written before the transaction and within it.
MIXES: dict[str, list[Op]] = {
    "two-likes": [("like", "a1", "a"), ("like", "a2", "a")],
    "like-then-unlike": [("like", "a1", "a"), ("unlike", "a1", "")],
    "old-post-like-and-unlikes": [("like", "b1", "b"), ("unlike", "b-old1", ""), ("unlike", "b1", "")],
    "several-posts": [("comment", "c0", "a"), ("like", "d1", "d"), ("like", "a1", "a"), ("unlike", "b-old2", ""),
                      ("comment", "c9", "c"), ("like", "a2", "a"), ("like", "c1", "c"), ("unlike", "d-old", ""),
                      ("like", "b1", "b"), ("unlike", "a1", ""), ("like", "c2", "c"), ("unlike", "c1", "")],
}


@pytest.mark.parametrize("mix", MIXES)
async def test_like_counts_in_a_transaction_are_exact_for_every_change(
        r: redis.Redis, standin: StandIn, redis_server: RedisServer, mongo: AsyncMongoClient[dict[str, Any]],
        tmp_path: Path, mix: str) -> None:
    """Regression: a post's first count was read as of the change's clusterTime, which every change of a
    transaction shares, so two likes in one transaction gave 2, 2 (not 1, 2) and a like and an unlike 0, 0."""
    await setup_posts(mongo)
    async with running(standin, redis_server, tmp_path, "w"):
        await after_start(mongo, r)
        before = like_events(r)
        expected = await transaction(mongo, MIXES[mix])
        await mongo.app.posts.insert_one({"_id": "end", "authorId": "author", "text": "end"})
        await until_published(r, "end")
    assert like_events(r)[len(before):] == expected
    if mix == "two-likes":
        assert [n for *_, n in expected] == [1, 2]
    if mix == "like-then-unlike":
        assert [n for *_, n in expected] == [1, 0]
    await redis_matches_mongodb(r, mongo)


@pytest.mark.parametrize("crash_after", [1, 4, 7])
@pytest.mark.parametrize("lose_counts", [False, True], ids=["counts-kept", "counts-lost"])
async def test_like_counts_stay_exact_across_a_crash_in_the_middle_of_a_transaction(
        r: redis.Redis, standin: StandIn, redis_server: RedisServer, mongo: AsyncMongoClient[dict[str, Any]],
        tmp_path: Path, crash_after: int, lose_counts: bool) -> None:
    """Regression: after a restart between two changes of a transaction, the changes left were counted against
    a count read as of the transaction's time (which already held them). With ``counts-lost``, Redis also loses
    the like counts meanwhile (evicted, deleted), so the first change the new watcher needs a count for comes
    after other changes of the same post in the same transaction."""
    await setup_posts(mongo)
    ops = MIXES["several-posts"]
    async with running(standin, redis_server, tmp_path, "w1") as (first, task):
        await after_start(mongo, r)
        before = like_events(r)
        assert isinstance(first.publisher, CrashingPublisher)
        first.publisher.left = crash_after
        expected = await transaction(mongo, ops)
        with pytest.raises(Crash):
            await asyncio.wait_for(task, TIMEOUT * 3)
    published = like_events(r)[len(before):]
    assert published == expected[:len(published)] and len(published) < len(expected)
    if lose_counts:
        r.delete("{rt}:likes", "{rt}:likes:since")
    async with running(standin, redis_server, tmp_path, "w2"):
        await mongo.app.posts.insert_one({"_id": "end", "authorId": "author", "text": "end"})
        await until_published(r, "end")
    assert like_events(r)[len(before):] == expected
    await redis_matches_mongodb(r, mongo)


async def test_the_publish_script_counts_from_the_point_a_seed_holds_at(r: redis.Redis,
                                                                        redis_server: RedisServer) -> None:
    """The script adds to a seed only the changes after its point, within one cluster time too; a count
    seeded by an earlier release (a bare time) holds every change at its time."""
    client = AsyncRedis.from_url(redis_server.url)
    publisher = Publisher(client, Keys("rt"), global_maxlen=1000, room_maxlen=1000)
    t = ev.time_part(100, 1)
    serial = iter(range(1, 100))
    published = {"last": ""}  # the token Redis holds last, which the script expects as `previous`

    async def liked(post_id: str, time_part: int, position: int, seed: Seed | None = None) -> int:
        event = Event(f"{time_part}-{position * ev.EVENTS_PER_CHANGE}", ev.POST_LIKED, (ev.post_room(post_id),),
                      {"likes": 0, "id": "l", "postId": post_id}, 0, Counter(post_id, +1))
        data = f"{next(serial):04d}"
        await publisher.publish(lease="", token={"_data": data}, previous=published["last"],
                                at=f"{time_part}:{position}", events=[event], seeds={post_id: seed} if seed else None)
        published["last"] = data
        likes: int = stream(r)[-1]["data"]["likes"]
        return likes

    try:
        with pytest.raises(NeedSeed):
            await liked("p1", t, 2)
        assert await liked("p1", t, 2, Seed(5, point(t, 2))) == 6  # the seed holds the first 2 changes at t
        assert await liked("p1", t, 3) == 7
        r.hset("{rt}:likes", "p2", 3)
        r.hset("{rt}:likes:since", "p2", f"{t:020d}")  # an earlier release's seed: read as of time t
        assert await liked("p2", t, 4) == 3
        assert await liked("p2", t + 1, 0) == 4
        assert await liked("p3", t + 1, 1, Seed(9, point(t + 7, ALL_CHANGES))) == 9  # read later (approximate)
        assert await liked("p3", t + 7, 0) == 9
        assert await liked("p3", t + 8, 0) == 10
    finally:
        await client.aclose()


async def test_a_count_mongodb_cannot_read_as_of_its_change_is_read_as_of_now(
        r: redis.Redis, standin: StandIn, redis_server: RedisServer, mongo: AsyncMongoClient[dict[str, Any]],
        tmp_path: Path) -> None:
    """The snapshot read refused (SnapshotTooOld): the count as of now, counted as approximate, and the
    changes the read already holds are not added again."""
    await setup_posts(mongo)
    async with running(standin, redis_server, tmp_path, "w") as (watcher, _):
        await after_start(mongo, r)
        before = like_events(r)
        standin.fail_command(["aggregate"], times=1, error_code=239)  # "ready" is known: no read to route it
        await mongo.app.likes.insert_one({"_id": "r1", "postId": "ready", "userId": "u1"})
        await mongo.app.likes.insert_one({"_id": "r2", "postId": "ready", "userId": "u2"})
        await mongo.app.posts.insert_one({"_id": "end", "authorId": "author", "text": "end"})
        await until_published(r, "end")
        assert watcher.metrics.skipped.value(reason="approximate_seed") == 1
    got = like_events(r)[len(before):]
    # the read came after the first like, and perhaps after the second: each carries the count as of the read
    # at least, and the last one the exact count
    assert [p for _, p, _ in got] == ["ready", "ready"] and got[-1][2] == 2 and got[0][2] in (1, 2)
    await redis_matches_mongodb(r, mongo)
