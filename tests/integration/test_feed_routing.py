"""Edits and deletes of public posts reach the rooms a feed follows (public, author:{id}, hashtag:{tag}),
through the real watcher, redis-server and the stand-in, with and without pre-images; and a replaceOne
says what it changed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pymongo import MongoClient

from realtime import events as ev
from realtime.standin import StandIn
from tests.integration.test_private_routing import about, client_for, lead, settle
from tests.integration.watcherkit import WatcherProcess, stream

pytestmark = [pytest.mark.integration]


@pytest.fixture(params=[True, False], ids=["pre-images", "no-pre-images"])
def mongo_client(request: pytest.FixtureRequest, standin: StandIn) -> Iterator[MongoClient[dict[str, Any]]]:
    client = client_for(standin, request.param)
    yield client
    client.close()


def room(r: redis.Redis, name: str, post_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The events of a room's history about ``post_id``: (type, data)."""
    return [(e["type"], e["data"]) for e in stream(r, f"{{rt}}:room:{name}")
            if post_id in (e["data"].get("id"), e["data"].get("postId"))]


def test_edits_and_deletes_of_public_posts_reach_the_feed_rooms(
        r: redis.Redis, mongo_client: MongoClient[dict[str, Any]], watcher: WatcherProcess) -> None:
    """Regression: post:updated and post:deleted of a public post went only to post:{id}, so a client following
    public, author:{id} or hashtag:{tag} never heard that a post it showed was edited or deleted."""
    db = mongo_client.app
    db.posts.insert_one({"_id": "old", "authorId": "u9", "text": "before the watcher", "hashtags": ["history"]})
    lead(r, watcher)
    db.posts.insert_one({"_id": "p1", "authorId": "u1", "text": "hello", "hashtags": ["#Cats", "dogs"]})
    db.posts.insert_one({"_id": "p2", "authorId": "u2", "text": "bye", "hashtags": ["cats"]})
    db.posts.update_one({"_id": "p1"}, {"$set": {"text": "hello!"}})
    db.posts.update_one({"_id": "p1"}, {"$set": {"hashtags": ["dogs", "birds"]}})
    db.posts.delete_one({"_id": "p2"})
    # published before it is made private: with updateLookup, an edit read later carries the post as it is
    # then, private, and goes to its author alone
    settle(r, mongo_client, "edited")
    db.posts.update_one({"_id": "p1"}, {"$set": {"visibility": "private", "text": "secret", "hashtags": ["hidden"]}})
    db.posts.delete_one({"_id": "old"})  # known to no index: read from MongoDB as of before the delete
    settle(r, mongo_client, "end")

    created = ["public", "author:u1", "hashtag:cats", "hashtag:dogs"]
    edited = ["post:p1", *created]
    retagged = [*edited, "hashtag:birds"]  # the hashtags before and after the edit
    private = ["post:p1", "public", "author:u1", "hashtag:dogs", "hashtag:birds"]  # where it was public
    events = [e for e in about(stream(r), "p1") if e["type"] != ev.NOTIFICATION_NEW]
    assert [(e["type"], e["rooms"]) for e in events] == [
        (ev.POST_CREATED, created), (ev.POST_UPDATED, edited), (ev.POST_UPDATED, retagged),
        (ev.POST_UPDATED, ["user:u1"]), (ev.POST_DELETED, private)]
    assert events[-1]["data"] == {"id": "p1"}  # made private: gone from the feed, with nothing of its content
    assert room(r, "hashtag:cats", "p1")[-1] == (ev.POST_UPDATED, events[2]["data"])  # the tag it left
    assert room(r, "hashtag:birds", "p1") == [(ev.POST_UPDATED, events[2]["data"]), (ev.POST_DELETED, {"id": "p1"})]
    assert room(r, "hashtag:hidden", "p1") == [] and "secret" not in str(stream(r, "{rt}:room:public"))
    for name in ("public", "author:u2", "hashtag:cats", "post:p2"):
        assert room(r, name, "p2")[-1] == (ev.POST_DELETED, {"id": "p2"}), name
    for name in ("public", "author:u9", "hashtag:history", "post:old"):
        assert room(r, name, "old") == [(ev.POST_DELETED, {"id": "old"})], name


def test_replace_one_lists_what_it_changed(r: redis.Redis, standin: StandIn, watcher: WatcherProcess) -> None:
    """Regression: a replaceOne listed every allow-listed field in ``changed``, although pre-images were on."""
    client = client_for(standin, True)
    try:
        db = client.app
        lead(r, watcher)
        db.posts.insert_one({"_id": "p1", "authorId": "u1", "title": "T", "text": "hello", "hashtags": ["a"]})
        db.posts.replace_one({"_id": "p1"}, {"authorId": "u1", "text": "hello!", "hashtags": ["a"], "secret": 1})
        db.posts.replace_one({"_id": "p1"}, {"authorId": "u1", "text": "hello!", "hashtags": ["a"], "secret": 2})
        settle(r, client, "end")
    finally:
        client.close()
    updates = [e["data"] for e in about(stream(r), "p1") if e["type"] == ev.POST_UPDATED]
    assert updates == [{"id": "p1", "authorId": "u1", "text": "hello!", "hashtags": ["a"],
                        "changed": ["title", "text"]}]
