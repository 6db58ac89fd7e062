"""Private posts through the real watcher, redis-server and the stand-in: what refers to a private post
(its likes, its comments, its updates) reaches only its author's room, also once the post is deleted,
after a watcher restart, and without pre-images. And the server's deep replay from the oplog fails
closed the same way."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from pymongo import AsyncMongoClient, MongoClient
from redis.asyncio import Redis as AsyncRedis

from realtime import events as ev
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

SECRETS = ("secret post", "secret comment", "secret edit", "late secret", "old secret", "old secret edit",
           "old secret comment", "known secret comment", "known secret edit")


@pytest.fixture(params=[True, False], ids=["pre-images", "no-pre-images"])
def mongo_client(request: pytest.FixtureRequest, standin: StandIn) -> Iterator[MongoClient[dict[str, Any]]]:
    client = client_for(standin, request.param)
    yield client
    client.close()


def about(events: list[dict[str, Any]], post_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["data"].get("postId") == post_id or e["data"].get("id") == post_id]


def assert_only_author(r: redis.Redis, events: list[dict[str, Any]], post_ids: tuple[str, ...], author: str) -> None:
    for post_id in post_ids:
        assert r.xlen(f"{{rt}}:room:post:{post_id}") == 0, f"post:{post_id} holds events"
        for e in about(events, post_id):
            assert e["rooms"] == [ev.user_room(author)], e
    text = orjson.dumps([e for e in events if e["rooms"] != [ev.user_room(author)]]).decode()
    assert not [s for s in SECRETS if s in text], text


def test_cascade_delete_and_late_reactions_of_a_private_post_reach_only_its_author(
        r: redis.Redis, mongo_client: MongoClient[dict[str, Any]], watcher: WatcherProcess) -> None:
    """Regression: once a private post was deleted, its likes' and comments' deletes (and a late comment,
    with its text) went to post:{id}, as if the post were public."""
    db = mongo_client.app
    lead(r, watcher)
    db.posts.insert_one({"_id": "p1", "authorId": "u1", "visibility": "private", "text": "secret post"})
    db.likes.insert_many([{"_id": "l1", "postId": "p1", "userId": "u2"}, {"_id": "l2", "postId": "p1", "userId": "u3"}])
    db.comments.insert_one({"_id": "c1", "postId": "p1", "userId": "u2", "text": "secret comment"})
    db.posts.delete_one({"_id": "p1"})
    db.likes.delete_many({"postId": "p1"})  # the application's cascade
    db.comments.delete_many({"postId": "p1"})
    db.comments.insert_one({"_id": "c2", "postId": "p1", "userId": "u4", "text": "late secret"})
    db.likes.insert_one({"_id": "l3", "postId": "p1", "userId": "u4"})
    db.comments.insert_one({"_id": "c3", "postId": "ghost", "userId": "u4", "text": "late secret"})  # never a post
    events = settle(r, mongo_client, "end")

    assert_only_author(r, events, ("p1", "ghost"), "u1")
    mine = [(e["type"], e["data"].get("id")) for e in about(events, "p1") if e["type"] != ev.NOTIFICATION_NEW]
    assert mine == [(ev.POST_CREATED, "p1"), (ev.POST_LIKED, "l1"), (ev.POST_LIKED, "l2"), (ev.COMMENT_ADDED, "c1"),
                    (ev.POST_DELETED, "p1"), (ev.POST_UNLIKED, "l1"), (ev.POST_UNLIKED, "l2"),
                    (ev.COMMENT_DELETED, "c1"), (ev.COMMENT_ADDED, "c2"), (ev.POST_LIKED, "l3")]
    assert about(events, "ghost") == []
    assert watcher.metric("realtime_watcher_skipped_total", reason="unknown_post") == 1


def test_public_post_deleted_keeps_routing_its_cascade_to_its_room(
        r: redis.Redis, mongo_client: MongoClient[dict[str, Any]], watcher: WatcherProcess) -> None:
    """The tombstone of a public post routes its cascade deletes to post:{id}, with exact like counts."""
    db = mongo_client.app
    lead(r, watcher)
    db.posts.insert_one({"_id": "q1", "authorId": "u1", "text": "hello"})
    db.likes.insert_many([{"_id": "m1", "postId": "q1", "userId": "u2"}, {"_id": "m2", "postId": "q1", "userId": "u3"}])
    db.posts.delete_one({"_id": "q1"})
    db.likes.delete_many({"postId": "q1"})
    events = settle(r, mongo_client, "end")
    room = [(e["type"], e["data"].get("likes")) for e in about(events, "q1") if e["type"] != ev.NOTIFICATION_NEW]
    assert room == [(ev.POST_CREATED, None), (ev.POST_LIKED, 1), (ev.POST_LIKED, 2), (ev.POST_DELETED, None),
                    (ev.POST_UNLIKED, 1), (ev.POST_UNLIKED, 0)]
    feed = ["public", "author:u1"]  # the post's delete reaches the rooms its creation went to, not its cascade
    assert [e["rooms"] for e in about(events, "q1") if e["type"] != ev.NOTIFICATION_NEW] == [
        feed, ["post:q1"], ["post:q1"], ["post:q1", *feed], ["post:q1"], ["post:q1"]]
    assert r.ttl("{rt}:post:q1") > 0, "the tombstone expires"


def test_private_posts_changed_and_deleted_while_the_watcher_was_down_reach_only_their_author(
        r: redis.Redis, mongo_client: MongoClient[dict[str, Any]], watcher: WatcherProcess) -> None:
    """Regression: after a restart, what referred to a private post deleted meanwhile (a comment with its
    text; without pre-images, an update with its new text) was published to post:{id}."""
    db = mongo_client.app
    # "old" is older than anything the watcher ever saw; "known" it saw created
    db.posts.insert_one({"_id": "old", "authorId": "u1", "visibility": "private", "text": "old secret"})
    lead(r, watcher)
    db.posts.insert_one({"_id": "known", "authorId": "u1", "visibility": "private", "text": "secret post"})
    settle(r, mongo_client, "end1")
    watcher.kill(signal.SIGKILL)

    for post_id in ("known", "old"):
        db.comments.insert_one({"_id": f"c-{post_id}", "postId": post_id, "userId": "u2",
                                "text": f"{post_id} secret comment"})
        db.likes.insert_one({"_id": f"l-{post_id}", "postId": post_id, "userId": "u3"})
        db.posts.update_one({"_id": post_id}, {"$set": {"text": f"{post_id} secret edit"}})
        db.posts.delete_one({"_id": post_id})
    lead(r, watcher)
    events = settle(r, mongo_client, "end2")

    assert_only_author(r, events, ("known", "old"), "u1")
    for post_id in ("known", "old"):
        got = [e["type"] for e in about(events, post_id) if e["type"] != ev.NOTIFICATION_NEW]
        assert got[-4:] == [ev.COMMENT_ADDED, ev.POST_LIKED, ev.POST_UPDATED, ev.POST_DELETED], (post_id, got)


@pytest.mark.parametrize("pre_images", [True, False], ids=["pre-images", "no-pre-images"])
async def test_deep_replay_of_a_deleted_private_post_reaches_only_its_author(
        standin: StandIn, redis_server: RedisServer, pre_images: bool) -> None:
    """Regression: the server's replay from the oplog routed what referred to a private post deleted since
    (comments with their text, likes, an update) to post:{id}, so guessing the id with an old ``since``
    replayed them."""
    sync = client_for(standin, pre_images)
    db = sync.app
    try:
        db.posts.insert_one({"_id": "p1", "authorId": "u1", "visibility": "private", "text": "secret post"})
        start = sync.admin.command("ping")["operationTime"]
        db.comments.insert_one({"_id": "c1", "postId": "p1", "userId": "u2", "text": "secret comment"})
        db.likes.insert_one({"_id": "l1", "postId": "p1", "userId": "u2"})
        db.posts.update_one({"_id": "p1"}, {"$set": {"text": "secret edit"}})
        db.posts.delete_one({"_id": "p1"})
        db.likes.delete_one({"_id": "l1"})
        db.comments.insert_one({"_id": "c2", "postId": "p1", "userId": "u4", "text": "late secret"})
        db.posts.insert_one({"_id": "q1", "authorId": "u1", "text": "public"})  # control: a public post
        db.comments.insert_one({"_id": "c3", "postId": "q1", "userId": "u2", "text": "hi"})
    finally:
        sync.close()
    since = ev.make_id(start.time, start.inc, 0, ev.EVENTS_PER_CHANGE - 1)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(standin.uri)
    r = AsyncRedis.from_url(redis_server.url)
    await r.flushall()
    await r.hset("{rt}:meta", mapping={"full_document": "updateLookup", "full_document_since": "0"})  # as a watcher
    try:
        deep = DeepReplay(mongo, "app", MappingConfig(), r, Keys("rt"))
        public = await deep.replay(["post:p1", "post:q1"], since, {"post:p1": None, "post:q1": None})
        private = await deep.replay(["user:u1"], since, {"user:u1": None})
    finally:
        await r.aclose()
        await mongo.close()
    assert public.events is not None and private.events is not None, (public.reason, private.reason)
    frames = [orjson.loads(raw) for _, _, raw in public.events]
    assert [(f["type"], f["room"], f["data"]["id"]) for f in frames] == [(ev.COMMENT_ADDED, "post:q1", "c3")], frames
    mine = [orjson.loads(raw) for _, _, raw in private.events]
    # without pre-images the unlike is routed by what the replay learnt of the like from its insert
    assert [f["type"] for f in mine if f["type"] != ev.NOTIFICATION_NEW] == [
        ev.COMMENT_ADDED, ev.POST_LIKED, ev.POST_UPDATED, ev.POST_DELETED, ev.POST_UNLIKED, ev.COMMENT_ADDED]
    assert {f["room"] for f in mine} == {"user:u1"}
