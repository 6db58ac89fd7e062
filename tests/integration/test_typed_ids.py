"""Ids of different BSON types through the real watcher, redis-server and the stand-in (and the server's
replay from the oplog): ObjectId("65a1...") and the string "65a1...", the integer 5 and the string "5", are
different posts and users, with rooms, like counts and post index entries of their own. A private post's
events never reach the room of the public post whose id has the same digits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from bson import ObjectId
from pymongo import AsyncMongoClient, MongoClient
from redis.asyncio import Redis as AsyncRedis

from realtime import events as ev
from realtime.ids import id_text
from realtime.server.deep import DeepReplay
from realtime.standin import StandIn
from tests.conftest import RedisServer
from tests.integration.watcherkit import (
    WatcherProcess,
    client_for,
    lead,
    settle,
)
from watchers.config import MappingConfig
from watchers.keys import Keys

pytestmark = [pytest.mark.integration]

HEX = "65a1b2c3d4e5f60718293a4b"
# (the private post's id, the public post's id): the same digits, another type
PAIRS: list[tuple[Any, Any]] = [(ObjectId(HEX), HEX), (5, "5")]
SECRETS = ("secret post", "secret comment", "secret edit")


@pytest.fixture(params=[True, False], ids=["pre-images", "no-pre-images"])
def mongo_client(request: pytest.FixtureRequest, standin: StandIn) -> Iterator[MongoClient[dict[str, Any]]]:
    client = client_for(standin, request.param)
    yield client
    client.close()


def text(value: Any) -> str:
    t = id_text(value)
    assert t is not None
    return t


def tag(value: Any) -> str:
    return type(value).__name__


def react(db: Any, private: Any, public: Any, round_: str) -> None:
    """Likes and comments on both posts (the private one's carry its secrets), an edit of the private one, an
    unlike of the public one."""
    db.likes.insert_one({"_id": f"l{round_}-{tag(private)}", "postId": private, "userId": "u9"})
    db.likes.insert_many([{"_id": f"l{round_}-{tag(public)}-{u}", "postId": public, "userId": u} for u in ("u8", "u7")])
    db.comments.insert_one({"_id": f"c{round_}-{tag(private)}", "postId": private, "userId": "u9",
                            "text": "secret comment"})
    db.comments.insert_one({"_id": f"c{round_}-{tag(public)}", "postId": public, "userId": "u8", "text": "hello"})
    db.posts.update_one({"_id": private}, {"$set": {"text": "secret edit"}})
    db.likes.delete_one({"_id": f"l{round_}-{tag(public)}-u8"})


def check(r: redis.Redis, events: list[dict[str, Any]], private: Any, public: Any, likes: tuple[int, int]) -> None:
    mine, theirs = text(private), text(public)
    assert mine != theirs
    assert r.xlen(f"{{rt}}:room:post:{mine}") == 0, "the private post's room holds events"
    outside = [e for e in events if e["rooms"] != [f"user:{mine}"]]
    leaked = [e for e in outside if any(s in orjson.dumps(e).decode() for s in SECRETS)]
    assert leaked == [], leaked
    about_mine = [e for e in events if mine in (e["data"].get("id"), e["data"].get("postId"))]
    assert about_mine and all(e["rooms"] == [f"user:{mine}"] for e in about_mine), about_mine
    public_room = [orjson.loads(f[b"e"])["type"] for _, f in r.xrange(f"{{rt}}:room:post:{theirs}")]
    assert public_room == [ev.POST_LIKED, ev.POST_LIKED, ev.COMMENT_ADDED, ev.POST_UNLIKED], public_room
    counts = [e["data"]["likes"] for e in events if e["type"] in (ev.POST_LIKED, ev.POST_UNLIKED)
              and e["data"]["postId"] == theirs]
    assert counts == [likes[1] + 1, likes[1] + 2, likes[1] + 1], counts
    assert r.hget("{rt}:likes", mine) == str(likes[0] + 1).encode()
    assert r.hget("{rt}:likes", theirs) == str(likes[1] + 1).encode()
    notified = {e["data"]["postId"]: e["rooms"] for e in events if e["type"] == ev.NOTIFICATION_NEW}
    assert notified == {mine: [f"user:{mine}"], theirs: [f"user:{theirs}"]}, notified
    for post_id, public_ in ((mine, False), (theirs, True)):
        entry = orjson.loads(r.get(f"{{rt}}:post:{post_id}") or b"null")
        assert (entry["authorId"], entry["public"]) == (post_id, public_), (post_id, entry)


@pytest.mark.parametrize(("private", "public"), PAIRS, ids=["objectid-string", "int-string"])
def test_posts_whose_ids_differ_only_in_type_keep_their_rooms_counts_and_index_entries_apart(
        r: redis.Redis, mongo_client: MongoClient[dict[str, Any]], watcher: WatcherProcess, private: Any,
        public: Any) -> None:
    """Regression: the private post and the public post had one text, so the post index held whichever was
    written last (the public one), and the private post's comments, edits and likes went to post:{id}, with
    their text; the like counter of both was one."""
    db = mongo_client.app
    lead(r, watcher)
    db.posts.insert_one({"_id": private, "authorId": private, "visibility": "private", "text": "secret post"})
    db.posts.insert_one({"_id": public, "authorId": public, "text": "public post"})
    react(db, private, public, "1")
    check(r, settle(r, mongo_client, "end"), private, public, (0, 0))


@pytest.mark.parametrize(("private", "public"), PAIRS, ids=["objectid-string", "int-string"])
def test_posts_the_watcher_reads_from_mongodb_are_read_by_their_own_id(
        r: redis.Redis, mongo_client: MongoClient[dict[str, Any]], watcher: WatcherProcess, private: Any,
        public: Any) -> None:
    """Regression: a post the index did not know was looked up by its id's text in every type it could have
    (the string, the ObjectId, the integer), which found the other post: the private post's comments were
    routed as the public post's, and a like count was seeded with the likes of both."""
    db = mongo_client.app
    db.posts.insert_one({"_id": public, "authorId": public, "text": "public post"})  # found first by its digits
    db.posts.insert_one({"_id": private, "authorId": private, "visibility": "private", "text": "secret post"})
    db.likes.insert_many([{"_id": f"old-{tag(private)}-{i}", "postId": private, "userId": "u5"} for i in range(3)])
    db.likes.insert_one({"_id": f"old-{tag(public)}", "postId": public, "userId": "u5"})
    lead(r, watcher)
    react(db, private, public, "2")
    check(r, settle(r, mongo_client, "end"), private, public, (3, 1))


@pytest.mark.parametrize(("private", "public"), PAIRS, ids=["objectid-string", "int-string"])
async def test_deep_replay_keeps_posts_whose_ids_differ_only_in_type_apart(
        standin: StandIn, redis_server: RedisServer, private: Any, public: Any) -> None:
    """Regression: the server's replay from the oplog looked posts up the same way, so an old ``since`` in
    the public post's room replayed the private post's comments and edits."""
    sync = client_for(standin, False)
    try:
        sync.app.posts.insert_one({"_id": public, "authorId": public, "text": "public post"})
        sync.app.posts.insert_one({"_id": private, "authorId": private, "visibility": "private",
                                   "text": "secret post"})
        sync.app.elsewhere.insert_one({"_id": "x"})  # the replay starts after the posts: it reads them from MongoDB
        start = sync.admin.command("ping")["operationTime"]
        react(sync.app, private, public, "3")
    finally:
        sync.close()
    since = ev.make_id(start.time, start.inc, 0, ev.EVENTS_PER_CHANGE - 1)
    mine, theirs = text(private), text(public)
    rooms = [f"post:{mine}", f"post:{theirs}", f"user:{theirs}"]
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(standin.uri)
    r = AsyncRedis.from_url(redis_server.url)
    await r.flushall()
    # what the watchers record when their stream starts: the mode they read changes with (the default), and
    # from when; without it a replay from the oplog cannot know it reads changes as they did, and resets
    await r.hset(Keys("rt").meta, mapping={"full_document": "updateLookup", "full_document_since": "0"})
    try:
        deep = DeepReplay(mongo, "app", MappingConfig(), r, Keys("rt"))
        outcome = await deep.replay(rooms, since, dict.fromkeys(rooms))
        own = await deep.replay([f"user:{mine}"], since, {f"user:{mine}": None})
    finally:
        await r.aclose()
        await mongo.close()
    assert outcome.events is not None and own.events is not None, (outcome.reason, own.reason)
    frames = [orjson.loads(raw) for _, _, raw in outcome.events]
    assert not [f for f in frames if any(s in orjson.dumps(f).decode() for s in SECRETS)], frames
    assert {f["room"] for f in frames} == {f"post:{theirs}", f"user:{theirs}"}, frames
    assert [f["type"] for f in frames if f["room"] == f"post:{theirs}"] == [
        ev.POST_LIKED, ev.POST_LIKED, ev.COMMENT_ADDED, ev.POST_UNLIKED], frames  # (routed by the like's insert)
    assert all(f["data"]["postId"] == theirs for f in frames), frames
    mine_frames = [orjson.loads(raw) for _, _, raw in own.events]
    assert [f["type"] for f in mine_frames] == [ev.POST_LIKED, ev.NOTIFICATION_NEW, ev.COMMENT_ADDED,
                                                ev.NOTIFICATION_NEW, ev.POST_UPDATED], mine_frames
