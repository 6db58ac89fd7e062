"""Ids that differ only in their BSON type, end to end: the stand-in, a watcher, a server and WebSocket clients.

A private post ``ObjectId("65a1...")`` and a public post ``"65a1..."`` (the string of the same digits), and a
private post ``5`` and a public post ``"5"``, each by the user of the same id: a client in every post room
(and the public feeds) gets the public posts' events only, with like counts of their own; each author, with a
token whose subject is the text of their id, gets their own post's events and notifications, and cannot read
the other author's room, over WebSockets and long-polling alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from bson import ObjectId

from realtime import events as ev
from tests.conftest import RedisServer
from tests.e2e.httpkit import bearer, check_error, get, poll, query
from tests.e2e.serverkit import Opener, Stack, after, check_frames, of_rooms, running_stack, settled

pytestmark = [pytest.mark.e2e]

HEX = "65a1b2c3d4e5f60718293a4b"
SECRETS = ("secret post", "secret comment", "secret edit")


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("typedids"), "typedids", servers=1) as st:
        yield st


def write(db: Any, private: Any, public: Any) -> None:
    """A private post and a public post whose ids differ only in type, each by the user of its own id; likes,
    comments, an edit of the private post, an unlike of the public one."""
    name = type(private).__name__
    db.posts.insert_one({"_id": private, "authorId": private, "visibility": "private", "text": "secret post"})
    db.posts.insert_one({"_id": public, "authorId": public, "text": "public post", "hashtags": ["typed"]})
    db.likes.insert_one({"_id": f"l-{name}-private", "postId": private, "userId": "u9"})
    db.likes.insert_many([{"_id": f"l-{name}-public-{u}", "postId": public, "userId": u} for u in ("u8", "u7")])
    db.comments.insert_one({"_id": f"c-{name}-private", "postId": private, "userId": "u9", "text": "secret comment"})
    db.comments.insert_one({"_id": f"c-{name}-public", "postId": public, "userId": "u8", "text": "hello"})
    db.posts.update_one({"_id": private}, {"$set": {"text": "secret edit"}})
    db.likes.delete_one({"_id": f"l-{name}-public-u8"})


def secret(frame: dict[str, Any]) -> bool:
    text = orjson.dumps(frame["data"]).decode()
    return any(s in text for s in SECRETS)


async def test_a_private_post_never_reaches_the_room_of_a_post_whose_id_differs_only_in_type(
        stack: Stack, clients: Opener) -> None:
    """Regression: both posts of a pair had one id text, so one post room, one like counter, one post index
    entry: the private post's comments and edit reached the clients in the public post's room."""
    server = stack.servers[0]
    feed = ["public", "hashtag:typed", f"author:{HEX}", f"author:~{HEX}", "author:5", "author:~5"]
    post_rooms = [f"post:{HEX}", f"post:~{HEX}", "post:5", "post:~5"]
    specs = [("eve", post_rooms + feed), (HEX, [f"user:{HEX}"]), (f"~{HEX}", [f"user:~{HEX}"]),
             ("5", ["user:5"]), ("~5", ["user:~5"])]
    conns = {user: await clients(server, user, rooms=rooms) for user, rooms in specs}
    for user, other in ((HEX, f"~{HEX}"), (f"~{HEX}", HEX), ("5", "~5"), ("~5", "5")):
        reply = await conns[user].request(op="subscribe", rooms=[f"user:{other}"])
        assert (reply["op"], reply.get("code")) == ("error", "forbidden_room"), reply

    start = stack.last_id()
    baseline = stack.received()

    def produce() -> str:
        write(stack.db, ObjectId(HEX), HEX)
        write(stack.db, 5, "5")
        return stack.sentinel()

    sentinel = await asyncio.to_thread(produce)
    events = after(await asyncio.to_thread(stack.published, sentinel), start)
    await settled(stack, baseline, len(events))

    got: dict[str, list[dict[str, Any]]] = {}
    for user, rooms in specs:
        client = conns[user]
        expected = of_rooms(events, set(rooms), start)
        await client.got_events(len(expected), f"{user} to receive {len(expected)} events")
        got[user] = client.events(0, await client.barrier())
        check_frames(got[user], expected, rooms, user)

    # the reader of every post room and feed: the public posts' events, none of the private posts'
    eve = got["eve"]
    assert not [f for f in eve if secret(f)], [f for f in eve if secret(f)]
    assert not [f for f in eve if f["room"] in (f"post:{HEX}", "post:5")]
    for public in (f"~{HEX}", "~5"):
        room = [(f["type"], f["data"].get("likes")) for f in eve if f["room"] == f"post:{public}"]
        assert room == [(ev.POST_LIKED, 1), (ev.POST_LIKED, 2), (ev.COMMENT_ADDED, None), (ev.POST_UNLIKED, 1)], room
        assert [f["data"]["id"] for f in eve if f["type"] == ev.POST_CREATED and f["data"]["authorId"] == public] == [
            public]
    # each author: their own post's events and notifications, nothing of the other post's
    for private, public in ((HEX, f"~{HEX}"), ("5", "~5")):
        mine, theirs = got[private], got[public]
        assert {f["room"] for f in mine} == {f"user:{private}"} and {f["room"] for f in theirs} == {f"user:{public}"}
        assert {s for s in SECRETS if any(s in orjson.dumps(f["data"]).decode() for f in mine)} == set(SECRETS)
        assert [f["type"] for f in mine] == [ev.POST_CREATED, ev.POST_LIKED, ev.NOTIFICATION_NEW, ev.COMMENT_ADDED,
                                             ev.NOTIFICATION_NEW, ev.POST_UPDATED], mine
        assert all(f["data"].get("postId", f["data"].get("id")) == private for f in mine), mine
        assert not [f for f in theirs if secret(f)], theirs
        assert [(f["data"]["kind"], f["data"]["postId"]) for f in theirs] == [
            ("like", public), ("like", public), ("comment", public)], theirs
    # long-polling: the same rooms, the same events; the same room rules for the subject
    polled = (await poll(server, "eve", post_rooms, since=start)).json()["events"]
    assert [(e["id"], e["room"]) for e in polled] == [(f["id"], f["room"]) for f in eve if f["room"] in post_rooms]
    for user, other in ((HEX, f"~{HEX}"), ("~5", "5")):
        check_error(await get(server, query("/poll", rooms=f"user:{other}", wait=0), bearer(user)), "forbidden_room",
                    f"{user} polling user:{other}")
    # the like counters in Redis
    likes = {k.decode(): int(v) for k, v in stack.r.hgetall("{" + stack.prefix + "}:likes").items()}
    assert {k: likes.get(k) for k in (HEX, f"~{HEX}", "5", "~5")} == {HEX: 1, f"~{HEX}": 1, "5": 1, "~5": 1}
