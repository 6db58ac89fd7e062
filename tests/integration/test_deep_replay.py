"""The server's replay from the oplog (realtime/server/deep.py) against the stand-in and redis-server: it gives
the events the watchers published, read with the ``fullDocument`` mode they recorded in Redis, or a reset where
it cannot (found by the chaos suite: replayed edits carried a later post, or went to its author alone)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from pymongo import AsyncMongoClient, MongoClient
from redis.asyncio import Redis

from realtime import events as ev
from realtime.server.deep import DeepOutcome, DeepReplay
from realtime.standin import StandIn
from tests.conftest import RedisServer
from tests.integration.watcherkit import COLLECTIONS
from watchers.config import MappingConfig
from watchers.keys import Keys

pytestmark = [pytest.mark.integration]

META = "{rt}:meta"


@pytest.fixture(params=[True], ids=["images"])
def db(request: pytest.FixtureRequest, standin: StandIn) -> Iterator[Any]:
    """The watched collections, with change-stream pre- and post-images on (``images`` False: off)."""
    client: MongoClient[dict[str, Any]] = MongoClient(standin.uri)
    for name in COLLECTIONS:
        client.app.create_collection(name, changeStreamPreAndPostImages={"enabled": request.param})
    yield client.app
    client.close()


@pytest.fixture
async def r(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def deep(standin: StandIn, r: Redis) -> AsyncIterator[DeepReplay]:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(standin.uri)
    yield DeepReplay(mongo, "app", MappingConfig(), r, Keys("rt"))
    await mongo.close()


def now(db: Any) -> str:
    """A position right after MongoDB's latest write, one to a collection nobody watches (a replay from it starts
    there, and learns nothing of the writes before)."""
    db.elsewhere.insert_one({})
    at = db.command("ping")["operationTime"]
    return ev.make_id(at.time, at.inc, 0, ev.EVENTS_PER_CHANGE - 1)


async def record(r: Redis, mode: str, since: str = "0") -> None:
    """What a watcher records when its stream starts: the mode it reads changes with, and from when."""
    await r.hset(META, mapping={"full_document": mode, "full_document_since": since})


async def replay(deep: DeepReplay, rooms: list[str], since: str) -> DeepOutcome:
    return await deep.replay(rooms, since, dict.fromkeys(rooms))


def frames(outcome: DeepOutcome) -> list[dict[str, Any]]:
    assert outcome.events is not None, outcome.reason
    return [orjson.loads(raw) for _, _, raw in outcome.events]


@pytest.mark.parametrize("mode", ["whenAvailable", "updateLookup"])
async def test_updates_are_read_with_the_mode_the_watchers_recorded(db: Any, r: Redis, deep: DeepReplay,
                                                                     mode: str) -> None:
    db.posts.insert_one({"_id": "p", "authorId": "a1", "text": "first"})
    since = now(db)
    db.posts.update_one({"_id": "p"}, {"$set": {"text": "second"}})
    db.posts.update_one({"_id": "p"}, {"$set": {"text": "third"}})
    await record(r, mode)
    got = [(f["type"], f["data"]["text"]) for f in frames(await replay(deep, ["public"], since))]
    # with post-images, each edit as it left the post (as the watchers published it); else the post as it is now
    texts = ["second", "third"] if mode == "whenAvailable" else ["third", "third"]
    assert got == [(ev.POST_UPDATED, text) for text in texts]


async def test_a_replay_from_before_the_mode_was_recorded_is_a_reset(db: Any, r: Redis, deep: DeepReplay) -> None:
    db.posts.insert_one({"_id": "p", "authorId": "a1", "text": "first"})
    since = now(db)
    db.posts.update_one({"_id": "p"}, {"$set": {"text": "second"}})
    at = ev.parse_id(since)[0]
    assert (await replay(deep, ["public"], since)).reason == "history_trimmed", "no mode recorded"
    await record(r, "whenAvailable", str(at + 1))  # the watchers read changes after since another way
    assert (await replay(deep, ["public"], since)).reason == "history_trimmed"
    await record(r, "updateLookup", str(at))
    assert [f["data"]["text"] for f in frames(await replay(deep, ["public"], since))] == ["second"]


async def test_a_like_the_replay_cannot_place_as_of_then_is_a_reset_where_it_could_go(
        db: Any, r: Redis, deep: DeepReplay) -> None:
    db.posts.insert_one({"_id": "p", "authorId": "a1", "text": "first"})
    since = now(db)
    db.likes.insert_one({"_id": "l", "postId": "p", "userId": "u2"})
    await record(r, "whenAvailable")
    # the post is in no index: the replay reads it as of the like (a snapshot read), which fails, so it
    # knows the post only as it is now (the change stream's own aggregate goes through)
    fail = {"configureFailPoint": "failCommand", "mode": {"skip": 1},
            "data": {"failCommands": ["aggregate"], "errorCode": 246}}
    db.client.admin.command(fail)
    try:
        assert (await replay(deep, ["post:p"], since)).reason == "history_trimmed"
    finally:
        db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    db.client.admin.command(fail)
    try:
        assert frames(await replay(deep, ["public", "post:other"], since)) == [], "a like goes to neither"
    finally:
        db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})


@pytest.mark.parametrize("db", [False], ids=["no-images"], indirect=True)
async def test_an_unlike_the_replay_cannot_route_is_a_reset(db: Any, r: Redis, deep: DeepReplay) -> None:
    db.posts.insert_one({"_id": "p", "authorId": "a1", "text": "first"})
    db.likes.insert_one({"_id": "l", "postId": "p", "userId": "u2"})
    since = now(db)
    db.likes.delete_one({"_id": "l"})  # no pre-image; the watcher's index forgot the like when it published this
    await record(r, "updateLookup")
    assert (await replay(deep, ["post:p"], since)).reason == "history_trimmed"
    assert (await replay(deep, ["user:u9"], since)).reason == "history_trimmed", "the post's author is unknown"
    assert frames(await replay(deep, ["public"], since)) == []


@pytest.mark.parametrize("db", [False], ids=["no-images"], indirect=True)
async def test_with_the_watchers_reading_images_an_update_without_them_is_a_reset(
        db: Any, r: Redis, deep: DeepReplay) -> None:
    db.posts.insert_one({"_id": "p", "authorId": "a1", "text": "first"})
    since = now(db)
    db.posts.update_one({"_id": "p"}, {"$set": {"text": "second"}})
    await record(r, "whenAvailable")  # its images are gone: the watchers may have published it with them
    assert (await replay(deep, ["public"], since)).reason == "history_trimmed"
    assert frames(await replay(deep, ["post:other"], since)) == []
    await record(r, "updateLookup")  # the watchers read no images: the replay reads the update as they did
    assert [f["data"]["text"] for f in frames(await replay(deep, ["public"], since))] == ["second"]
