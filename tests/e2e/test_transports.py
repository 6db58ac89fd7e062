"""The server's other transports and ephemeral features end to end: long-polling (``GET /poll``), Server-Sent
Events (``GET /sse``), deep replay from the oplog, presence and typing, on real server processes.

Stacks (each on a Redis key prefix of its own; see :mod:`tests.e2e.serverkit`):

* ``conf``: the stand-in, a watcher and two servers. Conformance: the same rooms from the same position give
  byte-identical event sequences over the WebSocket, long-polling and SSE, on either server, live or
  replayed; and bad requests get their documented statuses and JSON error bodies.
* ``deep`` (per test): a watcher that keeps only a few events per room, and two servers that know the
  stand-in's URI, so what Redis trimmed is replayed from the oplog; then the oplog is truncated too.
* ``presence``: two servers (no watcher) with a short presence TTL and typing TTL: join, leave, typing.
* ``kill`` (per test): the same, and one of the servers is SIGKILLed.

The raw bytes compared are the WebSocket text frames' payloads, the items of the poll body's ``events``
array (cut out of the body by a small JSON scanner, not re-serialised) and the values of the SSE ``data:``
fields.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.conftest import TIMEOUT, RedisServer
from tests.e2e.httpkit import SSEOpener, bearer, check_error, expired_token, get, poll, poll_events, query
from tests.e2e.serverkit import (
    Client,
    Opener,
    Stack,
    after,
    check_frames,
    key_of,
    of_rooms,
    running_stack,
    settled,
    token,
    unsigned_token,
    until,
)

pytestmark = [pytest.mark.e2e]

PRESENCE_TTL = 3.0  # REALTIME_PRESENCE_TTL of the presence stacks: entries refreshed every ttl / 3
TYPING_TTL = 1.0  # REALTIME_TYPING_TTL
SLACK = 1.5  # on top of a documented bound, for scheduling and pub/sub delivery
PRESENCE_ENV = {"REALTIME_PRESENCE_TTL": str(PRESENCE_TTL), "REALTIME_TYPING_TTL": str(TYPING_TTL),
                "REALTIME_TYPING_INTERVAL": "0.2"}


@pytest.fixture(scope="module")
def conf(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("conf"), "conf") as st:
        yield st


@pytest.fixture(scope="module")
def presence(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("presence"), "presence", watcher=False,
                       server_env=PRESENCE_ENV) as st:
        yield st


async def synced_frame(client: Client, what: str) -> dict[str, Any]:
    """The first ``synced`` frame (the end of a replay)."""
    found: dict[str, Any] = await until(lambda: next((f for f in client.frames if f["op"] == "synced"), None),
                                        what, TIMEOUT * 3, client)
    return found


# -- 1. conformance ---------------------------------------------------------------------------------------------

def write_conformance(db: Any, tag: str) -> None:
    """Posts, likes, unlikes, comments, a private post and an edit: events in one, two or three of the
    client's rooms, and in rooms it did not join. Text with quotes, backslashes, newlines, non-ASCII,
    U+2028 and emoji, to catch any re-encoding on the way."""
    tricky = 'quote " backslash \\ newline \n tab \t — 日本語 \u2028 \U0001f408 </script>'
    db.posts.insert_one({"_id": f"{tag}c1p", "authorId": f"{tag}c1", "text": tricky, "hashtags": ["cats", "dogs"]})
    db.posts.insert_one({"_id": f"{tag}c2p", "authorId": f"{tag}c2", "text": "mine"})
    db.posts.insert_one({"_id": f"{tag}c2secret", "authorId": f"{tag}c2", "text": "hush", "visibility": "private"})
    for i in range(16):
        user = f"{tag}f{i % 4}"
        db.likes.insert_one({"_id": f"{tag}l1-{i}", "postId": f"{tag}c1p", "userId": user})
        db.comments.insert_one({"_id": f"{tag}k1-{i}", "postId": f"{tag}c1p", "userId": user, "text": f"{tricky} {i}"})
        db.likes.insert_one({"_id": f"{tag}l2-{i}", "postId": f"{tag}c2p", "userId": user})
        db.comments.insert_one({"_id": f"{tag}k2-{i}", "postId": f"{tag}c2p", "userId": user, "text": "hi"})
        db.comments.insert_one({"_id": f"{tag}ks-{i}", "postId": f"{tag}c2secret", "userId": f"{tag}c2",
                                "text": "note to self"})
        db.posts.insert_one({"_id": f"{tag}p{i}", "authorId": f"{tag}f{i % 3}", "text": f"post {i}",
                             "hashtags": ["cats"] if i % 2 else ["other"]})
        if i % 3 == 0:
            db.likes.delete_one({"_id": f"{tag}l1-{i}"})
    db.posts.update_one({"_id": f"{tag}c1p"}, {"$set": {"text": tricky + " (edited)"}})


def write_burst(db: Any, tag: str) -> None:
    """More of the same, after the first round: likes, comments and #cats posts, as fast as they go."""
    for i in range(40):
        user = f"{tag}g{i % 5}"
        db.likes.insert_one({"_id": f"{tag}bl-{i}", "postId": f"{tag}c1p", "userId": user})
        db.comments.insert_one({"_id": f"{tag}bk-{i}", "postId": f"{tag}c2p", "userId": user, "text": f"« {i} »"})
        db.posts.insert_one({"_id": f"{tag}bp{i}", "authorId": user, "text": "again", "hashtags": ["Cats", "x"]})


async def test_transports_return_byte_identical_events(conf: Stack, clients: Opener, streams: SSEOpener) -> None:
    a, b = conf.servers
    tag = "t" + uuid.uuid4().hex[:4]
    user = f"{tag}c2"
    # not in the order the events list their rooms: the room an event is labelled with must not depend on
    # the transport, nor on whether it arrives live or from history
    rooms = ["hashtag:cats", f"post:{tag}c1p", f"user:{user}", f"author:{tag}c1", "public"]
    start = conf.last_id()
    baseline = conf.received()

    # live, before the writes: a WebSocket on A, SSE on B, and a long poll on B from the current position
    ws_live = await clients(a, user, rooms=rooms)
    sse_live = await streams(b, user, rooms, token_in_query=True)
    long_poll = asyncio.ensure_future(poll(b, user, rooms, since=start, wait=TIMEOUT, within=TIMEOUT * 2))
    await asyncio.sleep(0.2)

    def write() -> list[dict[str, Any]]:
        write_conformance(conf.db, tag)
        return conf.published(conf.sentinel())

    polled_at = time.monotonic()
    events = after(await asyncio.to_thread(write), start)
    await settled(conf, baseline, len(events))
    expected = of_rooms(events, set(rooms), start)
    assert len(expected) >= 100, len(expected)
    assert any(len(set(rooms) & set(e["rooms"])) > 1 for e in expected), "some events are in several rooms"
    ids = [e["id"] for e in expected]
    n = len(expected)

    # the long poll came back with the first events as soon as there were any
    first = await long_poll
    assert time.monotonic() - polled_at < TIMEOUT, "the long poll waited its whole wait"
    early, parsed = poll_events(first)
    assert early and parsed["resets"] == []

    # from the same position, after the fact: WebSockets on A and B, polls on B and A, SSE on A and B
    replays: dict[str, list[bytes]] = {}
    for name, server in (("ws-A", a), ("ws-B", b)):
        client = await clients(server, user)
        ref = await client.send(op="subscribe", rooms=rooms, since=start)
        synced = await synced_frame(client, f"{name} synced")
        at = client.frames.index(synced)
        assert [f["op"] for f in client.frames[:at]] == ["subscribed"] + ["event"] * (at - 1), name
        assert synced == {"op": "synced", "ref": ref, "rooms": rooms, "last": ids[-1]}, synced
        check_frames(client.events(0, at), expected, rooms, name)
        replays[name] = client.raw_events(0, at)
    for name, server in (("poll-B", b), ("poll-A", a)):
        items, parsed = poll_events(await poll(server, user, rooms, since=start))
        assert parsed["resets"] == [] and parsed["next"] == ids[-1], (name, parsed["resets"], parsed["next"])
        replays[name] = items
    sse_a = await streams(a, user, rooms, last_event_id=start)
    sse_b = await streams(b, user, rooms, since=start)
    for name, stream in (("sse-A", sse_a), ("sse-B", sse_b)):
        await stream.got(n, f"{name}'s replay")
        assert [m.id for m in stream.events()] == ids, f"{name}: the id fields are the events' ids"
        assert not [m for m in stream.messages if m.event is not None], f"{name}: no reset, no error"
        replays[name] = stream.raw_events()
    # and live
    await ws_live.got_events(n, "the live WebSocket's events")
    end = await ws_live.barrier()
    check_frames(ws_live.events(0, end), expected, rooms, "ws-live-A")
    replays["ws-live-A"] = ws_live.raw_events(0, end)
    await sse_live.got(n, "the live SSE stream's events")
    replays["sse-live-B"] = sse_live.raw_events()

    reference = replays["ws-A"]
    assert [orjson.loads(p)["id"] for p in reference] == ids
    for name, got in replays.items():
        assert len(got) == n, f"{name}: {len(got)} events, not {n}"
        diff = next((i for i, (x, y) in enumerate(zip(got, reference, strict=True)) if x != y), None)
        assert diff is None, f"{name} differs from ws-A at event {diff}:\n{got[diff]!r}\n{reference[diff]!r}"
    assert early == reference[:len(early)], "the long poll's events are the first ones, byte for byte"
    tricky = next(p for p in reference if orjson.loads(p)["data"].get("id") == f"{tag}c1p")
    assert "日本語".encode() in tricky and "\u2028".encode() in tricky, tricky  # UTF-8 as is, not \u-escaped

    # a position in the middle: the same tail everywhere
    mid = ids[n // 2]
    items, parsed = poll_events(await poll(b, user, rooms, since=mid))
    assert items == reference[n // 2 + 1:] and parsed["next"] == ids[-1]
    sse_mid = await streams(a, user, rooms, last_event_id=mid)
    await sse_mid.got(n - n // 2 - 1, "the SSE replay from the middle")
    assert sse_mid.raw_events() == reference[n // 2 + 1:]
    # nothing after the last: the next poll is empty and keeps its position
    _, parsed = poll_events(await poll(a, user, rooms, since=ids[-1]))
    assert parsed == {"events": [], "resets": [], "next": ids[-1]}

    # one more event, live everywhere at once (a long poll on each server waiting for it)
    waiting = [asyncio.ensure_future(poll(s, user, rooms, since=ids[-1], wait=TIMEOUT, within=TIMEOUT * 2))
               for s in (a, b)]
    await asyncio.sleep(0.3)
    resumed = [await clients(a, user, rooms=rooms), await clients(b, user, rooms=rooms)]
    marks = [len(ws_live.frames)] + [len(c.frames) for c in resumed]
    await asyncio.to_thread(conf.db.posts.insert_one, {"_id": f"{tag}last", "authorId": f"{tag}c1",
                                                       "text": "live ✓", "hashtags": ["cats"]})
    live: dict[str, list[bytes]] = {}
    for name, c, mark in zip(("ws-live-A", "ws-new-A", "ws-new-B"), [ws_live, *resumed], marks, strict=True):
        await c.got_events(1, f"{name}'s live event", start=mark)
        live[name] = c.raw_events(mark)
    for name, stream in (("sse-live-B", sse_live), ("sse-A", sse_a), ("sse-B", sse_b)):
        await stream.got(n + 1, f"{name}'s live event")
        live[name] = stream.raw_events()[n:]
    for name, task in zip(("poll-A", "poll-B"), waiting, strict=True):
        live[name] = poll_events(await task)[0]
    one = live["ws-live-A"]
    assert len(one) == 1 and orjson.loads(one[0])["data"]["id"] == f"{tag}last", one
    for name, got in live.items():
        assert got == one, f"{name}: {got!r} != {one!r}"

    # resuming while writes go on: each replay and the live events held aside during it meet with no gap and
    # no duplicate, in the same bytes as a replay after the fact and as live delivery
    start = conf.last_id()
    baseline = conf.received()
    marks = [len(ws_live.frames)] + [len(s.events()) for s in (sse_live, sse_a, sse_b)]

    def burst() -> list[dict[str, Any]]:
        write_burst(conf.db, tag)
        return conf.published(conf.sentinel())

    writer = asyncio.ensure_future(asyncio.to_thread(burst))
    await until(lambda: conf.last_id() != start, "the writes to start")
    during_ws = await clients(a, user)
    await during_ws.send(op="subscribe", rooms=rooms, since=start)
    during_sse = await streams(b, user, rooms, last_event_id=start)
    events = after(await writer, start)
    await settled(conf, baseline, len(events))
    expected = of_rooms(events, set(rooms), start)
    n = len(expected)
    assert n >= 50, n
    reference, parsed = poll_events(await poll(b, user, rooms, since=start))
    assert parsed["resets"] == [] and [orjson.loads(x)["id"] for x in reference] == [e["id"] for e in expected]
    await during_ws.got_events(n, "the events of the resume during the writes")
    end = await during_ws.barrier()
    ops = [f["op"] for f in during_ws.frames[:end]]
    assert ops[0] == "subscribed" and ops.count("synced") == 1 and set(ops) == {"subscribed", "event", "synced"}
    check_frames(during_ws.events(0, end), expected, rooms, "ws resumed during the writes")
    await during_sse.got(n, "the SSE events of the resume during the writes")
    await ws_live.got_events(n, "the live events of the burst", start=marks[0])
    end = await ws_live.barrier()
    got = {"ws-during-A": during_ws.raw_events(0, end), "sse-during-B": during_sse.raw_events(),
           "ws-live-A": ws_live.raw_events(marks[0], end)}
    for name, stream, mark in zip(("sse-live-B", "sse-A", "sse-B"), (sse_live, sse_a, sse_b), marks[1:], strict=True):
        await stream.got(mark + n, f"{name}'s live events of the burst")
        got[name] = stream.raw_events()[mark:]
    for name, raw in got.items():
        assert len(raw) == n, f"{name}: {len(raw)} events, not {n}"
        diff = next((i for i, (x, y) in enumerate(zip(raw, reference, strict=True)) if x != y), None)
        assert diff is None, f"{name} differs from the poll at event {diff}:\n{raw[diff]!r}\n{reference[diff]!r}"


# -- 2. bad requests ------------------------------------------------------------------------------------------

BAD_REQUESTS: list[tuple[str, dict[str, str | float | None], dict[str, str] | None, str]] = [
    # (what, query parameters, headers (None: a good bearer token), expected error code)
    ("since: not an id", {"rooms": "public", "since": "yesterday"}, None, "bad_since"),
    ("since: half an id", {"rooms": "public", "since": "1-x"}, None, "bad_since"),
    ("since: negative", {"rooms": "public", "since": "-1-0"}, None, "bad_since"),
    ("since: three parts", {"rooms": "public", "since": "1-2-3"}, None, "bad_since"),
    ("since: out of range", {"rooms": "public", "since": f"{1 << 64}-0"}, None, "bad_since"),
    ("since: not ASCII digits", {"rooms": "public", "since": "١٢-0"}, None, "bad_since"),
    ("rooms: missing", {}, None, "bad_frame"),
    ("rooms: empty", {"rooms": ","}, None, "bad_frame"),
    ("rooms: not a room", {"rooms": "public,nowhere"}, None, "bad_room"),
    ("rooms: no id", {"rooms": "post:"}, None, "bad_room"),
    ("rooms: unknown kind", {"rooms": "group:g1"}, None, "bad_room"),
    ("rooms: too long", {"rooms": "post:" + "x" * 120}, None, "bad_room"),
    ("rooms: another user's", {"rooms": "public,user:someone-else"}, None, "forbidden_room"),
    ("rooms: too many", {"rooms": ",".join(f"post:n{i}" for i in range(201))}, None, "too_many_rooms"),
    ("token: missing", {"rooms": "public"}, {}, "unauthorized"),
    ("token: not bearer", {"rooms": "public"}, {"Authorization": "Basic dTE6cHc="}, "unauthorized"),
    ("token: empty bearer", {"rooms": "public"}, {"Authorization": "Bearer "}, "unauthorized"),
    ("token: garbage", {"rooms": "public"}, {"Authorization": "Bearer not.a.token"}, "unauthorized"),
    ("token: wrong secret", {"rooms": "public"},
     {"Authorization": f"Bearer {token('u1', secret='another-secret-that-is-long-enough-0123456789')}"},
     "unauthorized"),
    ("token: alg none", {"rooms": "public"}, {"Authorization": f"Bearer {unsigned_token('u1')}"}, "unauthorized"),
    ("token: expired", {"rooms": "public"}, {"Authorization": f"Bearer {expired_token('u1')}"}, "token_expired"),
    ("access_token: garbage", {"rooms": "public", "access_token": "garbage"}, {}, "unauthorized"),
    ("access_token: expired", {"rooms": "public", "access_token": expired_token("u1")}, {}, "token_expired"),
]
BAD_WAITS = ["-1", "-0.001", "30.5", "31", "1e9", "nan", "inf", "-inf", "soon", "1,5"]


@pytest.mark.parametrize("path", ["/poll", "/sse"])
async def test_bad_requests_get_their_status_and_a_json_error(conf: Stack, path: str) -> None:
    a, b = conf.servers
    for i, (what, params, headers, code) in enumerate(BAD_REQUESTS):
        server = (a, b)[i % 2]
        reply = await get(server, query(path, **params), bearer("u1") if headers is None else headers)
        check_error(reply, code, f"{path} {what}")
    if path == "/poll":
        for i, wait in enumerate(BAD_WAITS):
            reply = await get((a, b)[i % 2], query(path, rooms="public", wait=wait), bearer("u1"))
            check_error(reply, "bad_wait", f"/poll wait={wait!r}")
    else:  # the resume position in the header is checked as in the query
        for bad in ("yesterday", "1-x", f"{1 << 64}-0"):
            reply = await get(a, query(path, rooms="public"), {**bearer("u1"), "Last-Event-ID": bad})
            check_error(reply, "bad_since", f"/sse Last-Event-ID: {bad}")
    assert a.metric("realtime_client_errors_total", code="bad_since") >= 1

    # and what is fine: a room nothing was ever published in, the bounds of wait, a token in the query
    good = [
        query(path, rooms="post:never-used-room", since="0-0", wait=0),
        query(path, rooms="public,user:u1", wait=0),
        query(path, rooms="hashtag:ünïcödé", wait="0.0"),
        query(path, rooms="public", access_token=token("u1"), wait=0),
    ]
    for target in good:
        reply = await get(a, target, {} if "access_token" in target else bearer("u1"))
        assert reply.status == 200, (target, reply.status, reply.body)
        if path == "/poll":
            body = reply.json()
            # 0-0 is before the reset marker of the watcher's first stream: what came before it is unknown
            resets = [{"rooms": ["post:never-used-room"], "reason": "history_reset"}] if "since=0-0" in target else []
            assert body["events"] == [] and body["resets"] == resets, (target, body)
    if path == "/poll":  # a well-formed position this history never held: a reset, not an error
        beyond = f"{(1 << 64) - 1}-0"
        before = conf.last_id()
        reply = await get(b, query(path, rooms="public,post:p1", since=beyond, wait=5), bearer("u1"))
        body = reply.json()
        assert reply.status == 200 and {k: body[k] for k in ("events", "resets")} == {
            "events": [], "resets": [{"rooms": ["post:p1", "public"], "reason": "unknown_position"}]}, body
        # next is the stream's head: polling on from it goes on (from `beyond`, it would be the same reset again)
        assert key_of(before) <= key_of(body["next"]) <= key_of(conf.last_id()), body
    if path == "/poll":  # the largest wait is allowed (and ends when an event comes)
        waited = f"waited{uuid.uuid4().hex[:6]}"  # a public post: what refers to an unknown post is never public
        await asyncio.to_thread(conf.db.posts.insert_one, {"_id": waited, "authorId": "u9", "text": "wait"})
        started = time.monotonic()
        task = asyncio.ensure_future(get(a, query(path, rooms=f"post:{waited}", wait=30), bearer("u1"),
                                         within=TIMEOUT * 2))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(conf.db.comments.insert_one, {"_id": f"w{uuid.uuid4().hex[:6]}",
                                                              "postId": waited, "userId": "u1"})
        reply = await task
        assert reply.status == 200 and len(reply.json()["events"]) == 1, reply.body
        assert time.monotonic() - started < TIMEOUT


# -- 3. deep replay ---------------------------------------------------------------------------------------------

@pytest.fixture
def deep(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("deep"), "deep", deep=True,
                       watcher_env={"REALTIME_ROOM_HISTORY": "10"}) as st:
        yield st


def write_while_away(db: Any, n: int) -> None:
    """Comments on d1, likes and unlikes of d2 (u7's post: a notification each, in user:u7), posts with
    #deep (some by f0), and as many changes in rooms the client did not join."""
    for i in range(n):
        user = f"f{i % 20}"
        db.comments.insert_one({"_id": f"dc{i}", "postId": "d1", "userId": user, "text": f"comment {i}"})
        db.comments.insert_one({"_id": f"nc{i}", "postId": "noise", "userId": user, "text": "elsewhere"})
        if i % 3 == 0:
            db.likes.insert_one({"_id": f"dl{i}", "postId": "d2", "userId": user})
        if i % 15 == 0 and i >= 15:
            db.likes.delete_one({"_id": f"dl{i - 15}"})
        if i % 4 == 0:
            db.posts.insert_one({"_id": f"dp{i}", "authorId": user, "text": f"post {i}", "hashtags": ["deep"]})


async def test_deep_replay_from_the_oplog_then_reset_when_it_is_gone(deep: Stack, clients: Opener,
                                                                     streams: SSEOpener) -> None:
    a, b = deep.servers
    rooms = ["post:d1", "post:d2", "user:u7", "hashtag:deep", "author:f0"]
    db = deep.db

    def setup() -> str:
        db.posts.insert_one({"_id": "d1", "authorId": "da", "text": "busy", "hashtags": ["deep"]})
        db.posts.insert_one({"_id": "d2", "authorId": "u7", "text": "mine"})
        db.posts.insert_one({"_id": "noise", "authorId": "nz", "text": "not for u7"})
        return deep.sentinel()

    first = await clients(a, "u7", rooms=rooms)
    baseline, start = deep.received(), deep.last_id()
    events = after(await asyncio.to_thread(deep.published, await asyncio.to_thread(setup)), start)
    await settled(deep, baseline, len(events))
    await first.got_events(1, "the client's first events")
    last = first.events()[-1]["id"]
    await first.aclose()

    # away for well over 1,000 events of its rooms, in a couple of seconds
    def away() -> list[dict[str, Any]]:
        write_while_away(db, 560)
        return deep.published(deep.sentinel(), timeout=TIMEOUT * 9)

    events = await asyncio.to_thread(away)
    missed = of_rooms(events, set(rooms), last)
    assert len(missed) >= 1000, len(missed)
    trimmed = []
    for room in rooms:
        info = deep.r.xinfo_stream("{" + deep.prefix + "}:room:" + room)
        if info["entries-added"] > info["length"] and key_of(info["recorded-first-entry-id"].decode()) > key_of(last):
            trimmed.append(room)
    assert trimmed == rooms[:4], trimmed  # author:f0 (28 posts) is whole in Redis; the others are not
    likes = {p: db.likes.count_documents({"postId": p}) for p in ("d1", "d2")}

    # back on the other server: everything, from the oplog and then from Redis, in order, once
    second = await clients(b, "u7")
    ref = await second.send(op="subscribe", rooms=rooms, since=last)
    synced = await synced_frame(second, "the deep replay")
    at = second.frames.index(synced)
    assert [f["op"] for f in second.frames[:at]] == ["subscribed"] + ["event"] * (at - 1), \
        [f for f in second.frames[:at] if f["op"] != "event"]
    got = second.events(0, at)
    assert synced == {"op": "synced", "ref": ref, "rooms": rooms, "last": missed[-1]["id"]}
    ids = [f["id"] for f in got]
    assert len(ids) == len(set(ids)), "an event came twice"
    assert ids == [e["id"] for e in missed], "missing or out of order events"
    replayed = []
    for f, e in zip(got, missed, strict=True):
        assert (f["type"], f["ts"]) == (e["type"], e["ts"]), (f, e)
        assert f["room"] == next(r for r in e["rooms"] if r in rooms), ("labelled as live delivery would", f, e)
        if f["data"].get("replayed"):  # a like event from the oplog: today's count
            assert f["data"] == {**e["data"], "likes": likes[e["data"]["postId"]], "replayed": True}, (f, e)
            replayed.append(f["id"])
        else:
            assert f["data"] == e["data"], (f, e)
    # the like events Redis no longer held (all in post:d2) came from the oplog; the others from Redis
    head: Any = deep.r.xrange("{" + deep.prefix + "}:room:post:d2", count=1)
    first_in_redis = head[0][0].decode()
    from_oplog = [e["id"] for e in missed if e["type"] in ("post:liked", "post:unliked")
                  and key_of(e["id"]) < key_of(first_in_redis)]
    assert len(from_oplog) > 50 and replayed == from_oplog, (len(replayed), len(from_oplog))

    # the same replay by long-polling on the first server, byte for byte
    items, parsed = poll_events(await poll(a, "u7", rooms, since=last, within=TIMEOUT * 3))
    assert parsed["resets"] == [] and parsed["next"] == missed[-1]["id"]
    assert items == second.raw_events(0, at)

    # then live
    mark = len(second.frames)
    await asyncio.to_thread(db.comments.insert_one, {"_id": "live1", "postId": "d1", "userId": "f1"})
    await second.got_events(1, "a live event after the deep replay", start=mark)
    end = await second.barrier()
    live = second.events(mark, end)
    assert len(live) == 1 and live[0]["data"]["id"] == "live1" and key_of(live[0]["id"]) > key_of(ids[-1])

    # the oplog rolls over too (once the watcher has read everything): now a reset, on every transport
    newest = await asyncio.to_thread(deep.published, await asyncio.to_thread(deep.sentinel))
    assert deep.standin is not None
    # The newest 20 entries stay: the client's position is thousands of entries back, while the watcher, caught up
    # to the sentinel, is at most a few (its own checkpoint writes) behind the head: it keeps its place. (With none
    # kept, a watcher that had not read past its last checkpoint write lost its place, and its reset marker made
    # every later resume from before it a history_reset of all rooms, by the time the poll below came or not.)
    await asyncio.to_thread(deep.standin.truncate_oplog, 20)
    third = await clients(a, "u7")
    ref = await third.send(op="subscribe", rooms=rooms, since=last)
    await until(lambda: any(f["op"] == "synced" for f in third.frames), "synced", TIMEOUT * 3, third)
    # (the watcher's own live stream may lose its place in the truncated oplog too: its reset marker reaches
    # the client live, with no ref; the replay's frames are the others)
    frames = [f for f in third.frames if not (f["op"] == "reset" and "ref" not in f)]
    assert frames[1] == {"op": "reset", "ref": ref, "rooms": sorted(trimmed), "reason": "history_lost"}, frames[:3]
    # author:f0's history is whole: it is replayed all the same
    tail = of_rooms(newest, {"author:f0"}, last)
    assert [f["op"] for f in frames] == ["subscribed", "reset"] + ["event"] * len(tail) + ["synced"]
    assert [f["id"] for f in third.events()] == [e["id"] for e in tail]
    _, parsed = poll_events(await poll(b, "u7", rooms, since=last))
    assert parsed["resets"] == [{"rooms": sorted(trimmed), "reason": "history_lost"}], parsed["resets"]
    assert [e["id"] for e in parsed["events"]] == [e["id"] for e in tail]
    stream = await streams(b, "u7", rooms, last_event_id=last)
    await stream.got(len(tail), "the SSE replay after the reset")
    assert stream.messages[0].event == "reset", stream.messages[:1]
    assert orjson.loads(stream.messages[0].data) == {"op": "reset", "rooms": sorted(trimmed),
                                                     "reason": "history_lost"}
    # and live after the reset
    await asyncio.to_thread(db.comments.insert_one, {"_id": "live2", "postId": "d1", "userId": "f2"})
    await until(lambda: any(f["data"].get("id") == "live2" for f in third.events()), "a live event after the reset",
                TIMEOUT * 3, third)
    await stream.got(len(tail) + 1, "a live SSE event after the reset")
    assert orjson.loads(stream.raw_events()[-1])["data"]["id"] == "live2"
    assert [e["data"]["reason"] for e in deep.events() if e["type"] == "reset"] == ["stream_started"], \
        "the watcher itself lost nothing (the marker is its first stream's)"


# -- 4. presence and typing -------------------------------------------------------------------------------------

def announced(client: Client, kind: str, user: str, room: str) -> list[int]:
    """The indexes of ``client``'s presence frames announcing ``kind`` for ``user`` in ``room``."""
    return [i for i, p in enumerate(client.presence)
            if p["type"] == kind and p["room"] == room and p["data"] == {"userId": user}]


async def sees(client: Client, kind: str, user: str, room: str, within: float = TIMEOUT) -> float:
    """Wait for the announcement; when it arrived (time.monotonic())."""
    await until(lambda: announced(client, kind, user, room), f"{client.user} to see {kind} of {user} in {room}",
                within, client)
    return client.presence_at[announced(client, kind, user, room)[0]]


async def who(client: Client, room: str) -> list[str]:
    reply = await client.request(op="presence", room=room)
    assert reply["op"] == "presence" and reply["room"] == room, reply
    users: list[str] = reply["users"]
    return users


async def test_presence_across_instances(presence: Stack, clients: Opener) -> None:
    a, b = presence.servers
    room = f"post:pr{uuid.uuid4().hex[:6]}"
    alice = await clients(a, "alice", rooms=[room])
    bob = await clients(b, "bob", rooms=[room, "public"])
    await sees(alice, "user:online", "bob", room)
    frame = alice.presence[announced(alice, "user:online", "bob", room)[0]]
    assert set(frame) == {"op", "type", "room", "data", "ts"} and abs(frame["ts"] / 1000 - time.time()) < 5, frame
    assert await who(bob, room) == ["alice", "bob"] and await who(alice, room) == ["alice", "bob"]
    assert not [p for p in bob.presence if p["room"] == "public"], "presence is not tracked in public"
    reply = await bob.request(op="presence", room="public")
    assert reply["op"] == "error" and reply["code"] == "unsupported", reply
    # and the other way round: bob (on B) sees alice (on A) leave and come back
    assert (await alice.request(op="unsubscribe", rooms=[room]))["op"] == "unsubscribed"
    await sees(bob, "user:offline", "alice", room)
    assert await who(bob, room) == ["bob"]
    await alice.subscribe([room])
    await sees(bob, "user:online", "alice", room)
    assert await who(bob, room) == ["alice", "bob"]

    # a second connection of bob's, on the other instance: no second join; carol's join is the marker that
    # anything announced before it has arrived (one channel, in order)
    bob2 = await clients(a, "bob", rooms=[room])
    carol = await clients(b, "carol", rooms=[room])
    await sees(alice, "user:online", "carol", room)
    await sees(bob, "user:online", "carol", room)
    assert len(announced(alice, "user:online", "bob", room)) == 1
    await bob.aclose()  # bob is still there through bob2
    await carol.aclose()
    await sees(alice, "user:offline", "carol", room)
    assert not announced(alice, "user:offline", "bob", room)
    assert await who(alice, room) == ["alice", "bob"]
    await bob2.aclose()
    await sees(alice, "user:offline", "bob", room)
    assert await who(alice, room) == ["alice"]
    # unsubscribing is leaving, too
    dave = await clients(b, "dave", rooms=[room])
    await sees(alice, "user:online", "dave", room)
    reply = await dave.request(op="unsubscribe", rooms=[room])
    assert reply["op"] == "unsubscribed", reply
    await sees(alice, "user:offline", "dave", room)
    assert await who(alice, room) == ["alice"]
    for name in ("bob", "carol", "dave"):
        assert len(announced(alice, "user:offline", name, room)) == 1, name
    assert len(announced(alice, "user:online", "bob", room)) == 1


async def test_typing_expires_without_stopped_typing(presence: Stack, clients: Opener) -> None:
    a, b = presence.servers
    room = f"post:ty{uuid.uuid4().hex[:6]}"
    alice = await clients(a, "alice", rooms=[room])
    alice_tab = await clients(b, "alice", rooms=[room])  # the typist's other tab, on the other instance
    bob = await clients(b, "bob", rooms=[room])
    await sees(alice, "user:online", "bob", room)

    # one notice, then silence: the others see typing, then stopped_typing about TYPING_TTL later
    await alice.send(op="typing", room=room)
    typing = await sees(bob, "user:typing", "alice", room)
    stopped = await sees(bob, "user:stopped_typing", "alice", room, within=TYPING_TTL + SLACK)
    assert TYPING_TTL - 0.25 <= stopped - typing <= TYPING_TTL + SLACK, stopped - typing
    # Regression: the typist got their own user:typing and user:stopped_typing (the docs: nothing to the sender).
    for own in (alice, alice_tab):
        await own.barrier()
        assert not [p for p in own.presence if p["type"].endswith("typing")], own.presence

    # notices that keep coming keep it alive: one user:typing, no stopped_typing until they stop
    mark = len(bob.presence)
    started = time.monotonic()
    while time.monotonic() - started < TYPING_TTL * 2.5:
        await alice.send(op="typing", room=room)
        await asyncio.sleep(TYPING_TTL / 4)
    last_notice = time.monotonic()
    kinds = [p["type"] for p in bob.presence[mark:] if p["data"]["userId"] == "alice"]
    assert kinds == ["user:typing"], kinds
    await until(lambda: len(bob.presence) > mark + 1, "stopped_typing after the notices stop", TYPING_TTL + SLACK, bob)
    assert [p["type"] for p in bob.presence[mark:]] == ["user:typing", "user:stopped_typing"]
    assert bob.presence_at[mark + 1] - last_notice >= TYPING_TTL - 0.5
    assert not [f for f in bob.frames if f["op"] == "error"], bob.frames


@pytest.fixture
def kill(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("kill"), "kill", watcher=False,
                       server_env=PRESENCE_ENV) as st:
        yield st


async def test_killed_instance_users_go_offline_within_the_bound(kill: Stack, clients: Opener) -> None:
    a, b = kill.servers
    r1, r2 = "post:k1", "post:k2"
    alice = await clients(a, "alice", rooms=[r1, r2])
    bob = await clients(b, "bob", rooms=[r1])
    carol = await clients(b, "carol", rooms=[r1, r2])
    dave_a = await clients(a, "dave", rooms=[r1])  # dave is on both instances
    dave_b = await clients(b, "dave", rooms=[r1])
    for user, room in (("bob", r1), ("carol", r1), ("carol", r2), ("dave", r1)):
        await sees(alice, "user:online", user, room)
    await bob.send(op="typing", room=r1)
    await sees(alice, "user:typing", "bob", r1)

    b.kill()
    killed = time.monotonic()
    bound = PRESENCE_TTL + PRESENCE_TTL / 3  # the entries' ttl, plus the sweep's period
    gone = [await sees(alice, "user:offline", user, room, within=bound + SLACK)
            for user, room in (("bob", r1), ("carol", r1), ("carol", r2))]
    for at in gone:
        assert at - killed <= bound + SLACK, at - killed
        assert at - killed >= PRESENCE_TTL * 2 / 3 - 0.5, "offline before the entries could expire"
    # bob's typing ended on its own, though his instance died
    stopped = await sees(alice, "user:stopped_typing", "bob", r1)
    assert stopped - killed <= TYPING_TTL + SLACK
    assert await who(alice, r1) == ["alice", "dave"] and await who(alice, r2) == ["alice"]
    # dave is still here through instance A: not announced offline, even after another sweep
    await asyncio.sleep(PRESENCE_TTL / 3 + 0.5)
    assert not announced(alice, "user:offline", "dave", r1)
    assert not announced(dave_a, "user:offline", "dave", r1)
    assert await who(alice, r1) == ["alice", "dave"]
    for client in (bob, carol, dave_b):
        await client.closed()
    assert not alice.ended and a.ready()
