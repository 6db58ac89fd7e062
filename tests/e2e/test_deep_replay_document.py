"""A replay from the oplog against the live events it stands for, with the watchers reading post-images
(``REALTIME_FULL_DOCUMENT=whenAvailable``). Found by the chaos suite (tests/chaos): a long-poll client resuming
from a position Redis had trimmed got edits of posts with other payloads than everyone had live, and missed one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, RedisServer, own_redis
from tests.e2e.serverkit import Opener, Stack, key_of, running_stack, until

pytestmark = pytest.mark.e2e


@pytest.fixture
def redis_own(tmp_path: Path) -> Iterator[RedisServer]:
    with own_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def deep(redis_own: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    env = {"REALTIME_ROOM_HISTORY": "10", "REALTIME_FULL_DOCUMENT": "whenAvailable"}
    with running_stack(redis_own, tmp_path, "deepdoc", servers=1, deep=True, watcher_env=env) as st:
        yield st


async def test_a_replay_from_the_oplog_gives_the_events_the_watchers_published(deep: Stack, clients: Opener) -> None:
    """Regression: replayed from the oplog, a post's edits carried its later content, or were missing."""
    db = deep.db
    db.posts.insert_one({"_id": "p1", "authorId": "a1", "text": "first", "hashtags": ["cats"], "visibility": "public"})
    db.posts.insert_one({"_id": "p2", "authorId": "a1", "text": "first", "visibility": "public"})
    position = deep.published(deep.sentinel())[-1]["id"]
    db.posts.update_one({"_id": "p1"}, {"$set": {"text": "second"}})
    db.posts.update_one({"_id": "p1"}, {"$set": {"text": "third"}})
    db.posts.delete_one({"_id": "p1"})
    db.posts.update_one({"_id": "p2"}, {"$set": {"text": "edited while public"}})
    db.posts.update_one({"_id": "p2"}, {"$set": {"visibility": "private"}})
    for i in range(150):  # enough for Redis to trim the room's history past the edits
        db.posts.insert_one({"_id": f"n{i}", "authorId": "a2", "text": "news"})
    stored = deep.published(deep.sentinel(), timeout=TIMEOUT * 6)
    info = deep.r.xinfo_stream("{" + deep.prefix + "}:room:public")
    assert key_of(info["recorded-first-entry-id"].decode()) > key_of(position), "the room's history was not trimmed"
    live = [e for e in stored if e["data"].get("id") in ("p1", "p2") and e["type"] in ("post:updated", "post:deleted")
            and "public" in e["rooms"]]
    assert [(e["data"]["id"], e["data"].get("text")) for e in live] == [
        ("p1", "second"), ("p1", "third"), ("p1", None), ("p2", "edited while public"), ("p2", None)]

    client = await clients(deep.servers[0], "u1")
    reply = await client.request(op="subscribe", rooms=["public"], since=position)
    assert reply["op"] == "subscribed", reply
    await until(lambda: any(f["op"] == "synced" for f in client.frames), "synced", TIMEOUT * 6, client)
    assert not [f for f in client.frames if f["op"] == "reset"], "the oplog holds it all: no reset"
    # everything the room got after the position, from the oplog and then from Redis, as it was published
    published = [(e["id"], e["type"], e["data"]) for e in stored
                 if "public" in e["rooms"] and key_of(e["id"]) > key_of(position)]
    assert [(f["id"], f["type"], f["data"]) for f in client.events()] == published
