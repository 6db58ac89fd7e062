"""``realtime serve`` end to end: the stand-in, a watcher and two server processes, driven by WebSocket clients.

Each group of tests gets a stack of its own (a fresh Redis key prefix, so the stacks share the session's
redis-server without seeing each other's keys):

* ``main``: the stand-in (pre- and post-images on posts, likes and comments), a watcher, and two servers
  with a short ``REALTIME_AUTH_TIMEOUT``: delivery per room, resume on the other server, auth, bad frames,
  limits.
* ``trim``: a stand-in and a watcher that keeps only a few events per room, and a server: ``reset``.
* ``limits``: a server allowing 2 connections per address and per user, behind a trusted proxy (the clients
  send ``X-Forwarded-For`` from 127.0.0.1).
* ``beats``: a server with a heartbeat every second and no watcher: silent clients closed with 1011.
* ``slow``: two servers with small queue bounds and no watcher (the test appends envelopes to the global
  stream itself): one client that never reads, 500 that do.

What a client should have received is read back from Redis (``{rt}:events``, in order), filtered by the
client's rooms; like counts are checked against running counts and against MongoDB.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import TIMEOUT, RedisServer
from tests.e2e.serverkit import (
    DB,
    SECRET,
    Opener,
    Stack,
    after,
    check_frames,
    key_of,
    of_rooms,
    rs256_token,
    running_stack,
    settled,
    token,
    unsigned_token,
    until,
)
from tests.integration.producer import Producer

pytestmark = [pytest.mark.e2e]

AUTH_TIMEOUT = 2.0  # REALTIME_AUTH_TIMEOUT of the main stack's servers
BEAT, BEAT_TIMEOUT = 1.0, 1.5  # REALTIME_HEARTBEAT and REALTIME_HEARTBEAT_TIMEOUT of the beats stack's server


@pytest.fixture(scope="module")
def main(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("main"), "main",
                       server_env={"REALTIME_AUTH_TIMEOUT": str(AUTH_TIMEOUT)}) as st:
        yield st


@pytest.fixture(scope="module")
def producer(main: Stack) -> Producer:
    assert main.mongo is not None
    return Producer(main.mongo, DB, seed=23, users=6)


@pytest.fixture(scope="module")
def trim(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("trim"), "trim", servers=1,
                       watcher_env={"REALTIME_ROOM_HISTORY": "5"}) as st:
        yield st


@pytest.fixture(scope="module")
def slow(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"REALTIME_QUEUE_BYTES": "65536", "REALTIME_SEND_BUFFER": "16384",
           "REALTIME_MAX_CONNECTIONS_PER_ADDRESS": "1000"}
    with running_stack(redis_server, tmp_path_factory.mktemp("slow"), "slow", watcher=False, server_env=env) as st:
        yield st


@pytest.fixture(scope="module")
def beats(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"REALTIME_HEARTBEAT": str(BEAT), "REALTIME_HEARTBEAT_TIMEOUT": str(BEAT_TIMEOUT)}
    with running_stack(redis_server, tmp_path_factory.mktemp("beats"), "beats", servers=1, watcher=False,
                       server_env=env) as st:
        yield st


@pytest.fixture(scope="module")
def limits(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"REALTIME_MAX_CONNECTIONS_PER_ADDRESS": "2", "REALTIME_MAX_CONNECTIONS_PER_USER": "2",
           "REALTIME_TRUSTED_PROXIES": "127.0.0.1"}  # the test's clients play a proxy on 127.0.0.1
    with running_stack(redis_server, tmp_path_factory.mktemp("limits"), "limits", servers=1, watcher=False,
                       server_env=env) as st:
        yield st


# -- 1. delivery by room ---------------------------------------------------------------------------------------

def write_private_posts(db: Any) -> list[str]:
    """Private posts by u0 and u1, liked (and unliked) and commented by others, and edited."""
    posts = []
    for author, others in (("u0", ("u2", "u3", "u4")), ("u1", ("u0", "u5"))):
        post_id = f"private-{author}"
        db.posts.insert_one({"_id": post_id, "authorId": author, "text": "only me", "visibility": "private",
                             "hashtags": ["cats"]})
        for user in others:
            db.likes.insert_one({"_id": f"like-{post_id}-{user}", "postId": post_id, "userId": user})
            db.comments.insert_one({"_id": f"comment-{post_id}-{user}", "postId": post_id, "userId": user,
                                    "text": "I can see it"})
        db.likes.delete_one({"_id": f"like-{post_id}-{others[0]}"})
        db.posts.update_one({"_id": post_id}, {"$set": {"text": "still only me"}})
        posts.append(post_id)
    return posts


async def test_clients_get_exactly_the_events_of_their_rooms(main: Stack, producer: Producer,
                                                             clients: Opener) -> None:
    s0, s1 = main.servers
    # (server, user, rooms): the post rooms are of the producer's first posts (p1..p5 by its seed)
    specs = [
        (s0, "u0", ["public", "user:u0"]),
        (s1, "u1", ["author:u2", "hashtag:cats", "user:u1"]),
        (s0, "u3", ["post:p1", "post:p3", "user:u3"]),
        (s1, "u4", ["post:p2", "post:p4", "post:private-u0", "author:u0", "user:u4"]),
        (s1, "u5", ["public", "hashtag:python"]),
        (s0, "u2", ["user:u2", "author:u1", "post:private-u1"]),
    ]
    conns = [await clients(server, user, rooms=rooms) for server, user, rooms in specs]
    start = main.last_id()
    baseline = main.received()
    initial: dict[str, int] = {}  # like counts before the test's writes (none on a fresh stack)
    for like in main.db.likes.find({}, {"postId": 1}):
        initial[str(like["postId"])] = initial.get(str(like["postId"]), 0) + 1

    def write() -> tuple[list[str], str]:
        producer.run(producer.changes + 150)
        private = write_private_posts(main.db)
        producer.run(producer.changes + 150)
        return private, main.sentinel()

    private, sentinel = await asyncio.to_thread(write)
    events = after(await asyncio.to_thread(main.published, sentinel), start)
    assert len(events) >= 300
    await settled(main, baseline, len(events))

    # the stream itself: like counts run exactly, and private posts reach only their authors
    counts: dict[str, int] = {}
    liked = 0
    for e in events:
        if e["type"] in ("post:liked", "post:unliked"):
            post = e["data"]["postId"]
            counts[post] = counts.get(post, initial.get(post, 0)) + (1 if e["type"] == "post:liked" else -1)
            assert e["data"]["likes"] == counts[post], f"running like count of {post}: {e}"
            liked += 1
    assert liked >= 20 and counts
    for post, count in counts.items():
        assert main.db.likes.count_documents({"postId": post}) == count, f"likes of {post} in MongoDB"
    secret = {str(p["_id"]): str(p["authorId"]) for p in main.db.posts.find({"visibility": "private"})}
    assert set(private) <= set(secret)

    def subject(e: dict[str, Any]) -> str | None:
        data = e["data"]
        return str(data.get("postId") if "postId" in data else data.get("id"))

    for e in events:
        if subject(e) in secret:
            assert e["rooms"] == [f"user:{secret[str(subject(e))]}"], f"a private post's event left its author: {e}"

    # every client: exactly its rooms' events, nothing else
    for client, (server, user, rooms) in zip(conns, specs, strict=True):
        who = f"{user} on {server.name} in {rooms}"
        expected = of_rooms(events, set(rooms), start)
        assert expected, who
        await client.got_events(len(expected), f"{who} to receive {len(expected)} events")
        end = await client.barrier()
        got = client.events(0, end)
        check_frames(got, expected, rooms, who)
        for f in got:
            post = subject(f)
            if post in secret:
                assert secret[post] == user, f"{who} got an event of another user's private post: {f}"
        # in its post rooms, the like counts the client sees run exactly
        mine: dict[str, int] = {}
        for f in got:
            if f["type"] in ("post:liked", "post:unliked") and f["room"].startswith("post:"):
                post = f["data"]["postId"]
                mine[post] = mine.get(post, initial.get(post, 0)) + (1 if f["type"] == "post:liked" else -1)
                assert f["data"]["likes"] == mine[post], (who, f)

    # the authors of the private posts got them, in their own rooms
    by_user = {user: c for c, (_, user, _) in zip(conns, specs, strict=True)}
    for post_id in private:
        author = secret[post_id]
        seen = [f for f in by_user[author].events() if subject(f) == post_id]
        stored = [e for e in events if subject(e) == post_id]
        assert seen and [f["id"] for f in seen] == [e["id"] for e in stored]
        assert {f["room"] for f in seen} == {f"user:{author}"}
        assert {"post:created", "post:liked", "post:unliked", "comment:added", "post:updated",
                "notification:new"} <= {f["type"] for f in seen}
    # the client in post:private-u0's room is not its author: nothing reached it
    assert not [f for f in conns[3].events() if f["room"] == "post:private-u0"]


# -- 2. resume on the other server -----------------------------------------------------------------------------

def test_servers_run_the_fast_path(main: Stack) -> None:
    """The installed Sanic and websockets are the ones lean.py was written for: the fast path must be on."""
    assert [server.metric("realtime_fast_path") for server in main.servers] == [1.0, 1.0]


def drop_connections(r: Any, only_readers: bool) -> int:
    """Drop Redis connections as Redis does to clients past an output-buffer limit or at a failover: those
    waiting in XREAD (the servers' stream readers), or every one but the test's own. How many."""
    me = r.client_id()
    ids = [c["id"] for c in r.client_list() if c["id"] != str(me) and (c.get("cmd") == "xread" or not only_readers)]
    for client_id in ids:
        r.client_kill_filter(_id=client_id)
    return len(ids)


@pytest.mark.parametrize("only_readers", [True, False], ids=["readers", "everyone"])
async def test_delivery_goes_on_when_redis_drops_connections(main: Stack, clients: Opener, only_readers: bool
                                                             ) -> None:
    tag = f"drop{uuid.uuid4().hex[:6]}"
    room = f"hashtag:{tag}"
    on0 = await clients(main.servers[0], "u1", rooms=[room])
    on1 = await clients(main.servers[1], "u2", rooms=[room])

    def write(first: int, last: int) -> None:
        for i in range(first, last):
            main.db.posts.insert_one({"_id": f"{tag}-{i}", "authorId": "u9", "text": "t", "hashtags": [tag]})

    await asyncio.to_thread(write, 0, 5)
    for client in (on0, on1):
        await client.got_events(5, "the posts before the drop")
    lost = [s.metric("realtime_xread_reconnects_total") for s in main.servers]
    assert await asyncio.to_thread(drop_connections, main.r, only_readers) >= 2
    await asyncio.to_thread(write, 5, 10)  # while the readers reconnect
    expected = [f"{tag}-{i}" for i in range(10)]
    for client in (on0, on1):
        await client.got_events(10, "the posts written around the drop")
        assert [e["data"]["id"] for e in client.events()] == expected  # no gap, no duplicate, in order
    for server, before in zip(main.servers, lost, strict=True):
        assert server.metric("realtime_xread_reconnects_total") >= before + 1
    await until(lambda: all(s.ready() for s in main.servers), "both servers ready again")


async def test_resume_on_the_other_server(main: Stack, producer: Producer, clients: Opener) -> None:
    s0, s1 = main.servers
    rooms = ["public", "author:u1", "post:p2", "user:u5"]
    first = await clients(s0, "u5", rooms=rooms)
    start = main.last_id()
    baseline = main.received()

    def write(changes: int) -> str:
        producer.run(producer.changes + changes)
        return main.sentinel()

    sentinel = await asyncio.to_thread(write, 20)
    events = await asyncio.to_thread(main.published, sentinel)
    await settled(main, baseline, len(after(events, start)))
    before = of_rooms(events, set(rooms), start)
    await first.got_events(len(before), "the first connection's events")
    check_frames(first.events(), before, rooms, "before the disconnection")
    last = first.events()[-1]["id"]
    await first.aclose()

    # while it is away: 200 changes, in its rooms and in others
    sentinel = await asyncio.to_thread(write, 200)
    events = await asyncio.to_thread(main.published, sentinel)
    happened = after(events, last)
    missed = of_rooms(events, set(rooms), last)
    assert len(happened) >= 200 and 0 < len(missed) < len(happened)

    second = await clients(s1, "u5")
    ref = await second.send(op="subscribe", rooms=rooms, since=last)
    subscribed = await second.reply(ref)
    assert subscribed["op"] == "subscribed", subscribed
    await until(lambda: any(f["op"] == "synced" for f in second.frames), "synced", TIMEOUT * 3, second)
    frames = second.frames
    at = next(i for i, f in enumerate(frames) if f["op"] == "synced")
    assert [f["op"] for f in frames[:at]] == ["subscribed"] + ["event"] * (at - 1), "nothing but the replay"
    check_frames(second.events(0, at), missed, rooms, "the replay")
    assert frames[at]["ref"] == ref and frames[at]["rooms"] == rooms and frames[at]["last"] == missed[-1]["id"]

    # then live events, after the replay, none twice
    baseline, mark = main.received(), main.last_id()
    sentinel = await asyncio.to_thread(write, 40)
    events = await asyncio.to_thread(main.published, sentinel)
    await settled(main, baseline, len(after(events, mark)))
    live = of_rooms(events, set(rooms), missed[-1]["id"])
    assert live
    await second.got_events(len(live), "live events after the replay", start=at)
    end = await second.barrier()
    check_frames(second.events(at, end), live, rooms, "live after the replay")
    every = [f["id"] for f in first.events() + second.events(0, end)]
    assert len(every) == len(set(every)), "no event twice across the two connections"
    assert every == [e["id"] for e in of_rooms(events, set(rooms), start)], "together: every event, in order"

    # resuming while the writes go on: the replay and the live events held aside during it meet with no
    # gap and no duplicate
    baseline, mark = main.received(), main.last_id()
    writer = asyncio.ensure_future(asyncio.to_thread(write, 300))
    await until(lambda: main.last_id() != mark, "the writes to start")
    third = await clients(s0, "u5")
    ref = await third.send(op="subscribe", rooms=rooms, since=last)
    sentinel = await writer
    events = await asyncio.to_thread(main.published, sentinel)
    await settled(main, baseline, len(after(events, mark)))
    expected = of_rooms(events, set(rooms), last)
    await third.got_events(len(expected), "the replay and the live events")
    end = await third.barrier()
    ops = [f["op"] for f in third.frames[:end]]
    assert ops[0] == "subscribed" and ops.count("synced") == 1 and set(ops) == {"subscribed", "event", "synced"}
    check_frames(third.events(0, end), expected, rooms, "resumed during writes")
    synced = third.frames[ops.index("synced")]
    assert synced["ref"] == ref and key_of(synced["last"]) >= key_of(missed[-1]["id"])


# -- 3. reset, and refusals -------------------------------------------------------------------------------------

async def test_trimmed_history_gives_reset(trim: Stack, clients: Opener) -> None:
    (server,) = trim.servers
    room = "post:trimmed"

    def write() -> str:
        trim.db.posts.insert_one({"_id": "trimmed", "authorId": "ta", "text": "busy"})
        # The watcher trims room streams with MAXLEN ~ (whole nodes of 100 entries): past 100 + 5 entries,
        # the oldest node goes. 150 comments by the author (no notifications): 150 events in the room.
        for i in range(150):
            trim.db.comments.insert_one({"_id": f"tc{i}", "postId": "trimmed", "userId": "ta", "text": f"{i}"})
        return trim.sentinel()

    sentinel = await asyncio.to_thread(write)
    events = [e for e in await asyncio.to_thread(trim.published, sentinel) if room in e["rooms"]]
    assert len(events) == 150
    since = events[0]["id"]  # the room's first event: long trimmed by now
    info = trim.r.xinfo_stream("{" + trim.prefix + "}:room:" + room)
    assert info["entries-added"] == 150 > info["length"], info  # trimmed (max-deleted-entry-id counts XDEL only)
    assert key_of(info["recorded-first-entry-id"].decode()) > key_of(since), info

    client = await clients(server, "u1")
    ref = await client.send(op="subscribe", rooms=[room, "author:ta"], since=since)
    await until(lambda: any(f["op"] == "synced" for f in client.frames), "synced", TIMEOUT, client)
    ops = [f["op"] for f in client.frames]
    assert ops == ["subscribed", "reset", "synced"], client.frames
    reset = client.frames[1]
    assert reset == {"op": "reset", "ref": ref, "rooms": [room], "reason": "history_trimmed"}
    assert client.frames[2] == {"op": "synced", "ref": ref, "rooms": [room, "author:ta"]}  # no event: no last

    # a position the room still covers replays what follows it
    recent = events[-4]["id"]
    other = await clients(server, "u2")
    await other.request(op="subscribe", rooms=[room], since=recent)
    await until(lambda: any(f["op"] == "synced" for f in other.frames), "synced", TIMEOUT, other)
    assert [f["op"] for f in other.frames] == ["subscribed", "event", "event", "event", "synced"]
    assert [f["id"] for f in other.events()] == [e["id"] for e in events[-3:]]

    # and live events follow the reset
    await asyncio.to_thread(trim.db.comments.insert_one, {"_id": "after", "postId": "trimmed", "userId": "ta"})
    frame = await until(lambda: next((f for f in client.events() if f["data"].get("id") == "after"), None),
                        "a live event after the reset", TIMEOUT * 3, client)
    assert frame["room"] == room and frame["type"] == "comment:added"


async def test_another_users_room_is_forbidden(main: Stack, clients: Opener) -> None:
    client = await clients(main.servers[0], "u1")
    for rooms in (["user:u2"], ["public", "user:u2"]):
        reply = await client.request(op="subscribe", rooms=rooms)
        assert reply["op"] == "error" and reply["code"] == "forbidden_room", reply
    presence = await client.request(op="presence", room="user:u3")
    assert presence["op"] == "error" and presence["code"] == "forbidden_room"
    await client.subscribe(["user:u1"])  # its own room, and the connection is still fine
    await client.barrier()
    assert not client.ended


async def test_expired_token_closes_4003(main: Stack, clients: Opener) -> None:
    lifetime = 3
    expires = int(time.time()) + lifetime
    bearer = jwt.encode({"sub": "u1", "exp": expires}, SECRET, algorithm="HS256")
    by_header = await clients(main.servers[0], bearer=bearer, rooms=["public"])
    by_frame = await clients(main.servers[1])
    auth = await by_frame.request(op="auth", token=bearer)
    assert auth["op"] == "authenticated" and auth["user"] == "u1" and auth["expires"] == expires
    await by_frame.subscribe(["public", "user:u1"])
    for client in (by_header, by_frame):
        assert await client.closed(lifetime + TIMEOUT) == 4003
    assert time.time() >= expires, "closed before the token expired"
    # a token already expired is refused at once
    late = jwt.encode({"sub": "u1", "exp": int(time.time()) - 5}, SECRET, algorithm="HS256")
    at_door = await clients(main.servers[0], bearer=late)
    assert await at_door.closed() == 4003
    in_frame = await clients(main.servers[1])
    reply = await in_frame.request(op="auth", token=late)
    assert reply["op"] == "error" and reply["code"] == "token_expired"
    assert await in_frame.closed() == 4003


@pytest.mark.parametrize("forge", ["wrong_secret", "alg_none", "rs256", "garbage"])
async def test_forged_tokens_are_refused(main: Stack, clients: Opener, forge: str) -> None:
    bad = {
        "wrong_secret": lambda: token("u1", secret="another-secret-that-is-long-enough-0123456789"),
        "alg_none": lambda: unsigned_token("u1"),
        "rs256": lambda: rs256_token("u1"),
        "garbage": lambda: "not.a.token",
    }[forge]()
    failures = sum(s.metric("realtime_auth_failures_total", reason="unauthorized") for s in main.servers)
    at_door = await clients(main.servers[0], bearer=bad)
    assert await at_door.closed() == 4001
    assert not [f for f in at_door.frames if f["op"] in ("authenticated", "event")]

    in_frame = await clients(main.servers[1])
    reply = await in_frame.request(op="auth", token=bad)
    assert reply["op"] == "error" and reply["code"] == "unauthorized", reply
    assert await in_frame.closed() == 4001
    assert sum(s.metric("realtime_auth_failures_total", reason="unauthorized") for s in main.servers) >= failures + 2

    # nothing can be read before authenticating, either
    unauthenticated = await clients(main.servers[0])
    reply = await unauthenticated.request(op="subscribe", rooms=["public"])
    assert reply["op"] == "error" and reply["code"] == "unauthorized", reply


def hs256_raw(payload_json: str) -> str:
    """An HS256 token signed with the servers' secret whose payload is this exact JSON text (huge integers, NaN
    and Infinity included)."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    head = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(payload_json.encode())
    return head + "." + b64(hmac.new(SECRET.encode(), head.encode(), hashlib.sha256).digest())


# Time claims of tokens signed with the right secret, and what the server answers: the `expires` it shows (None:
# none; "soon": the token's own exp), or the close code of a refusal.
HOSTILE_CLAIMS = [
    ('"exp": 1e30', None), (f'"exp": {2**64}', None), (f'"exp": {2**53}', None), ('"exp": 1' + "0" * 400, None),
    ('"exp": {soon}.5', "soon"), ('"exp": -1', 4003), ('"exp": -1e30', 4003), ('"exp": 1e400', 4001),
    ('"exp": NaN', 4001), ('"exp": "99999999999"', 4001),
    ('"exp": {soon}, "nbf": 1e30', 4001), ('"exp": {soon}, "nbf": -1e30', "soon"), ('"exp": {soon}, "nbf": "0"', 4001),
    ('"exp": {soon}, "iat": 1e30', 4001), ('"exp": {soon}, "iat": -1' + "0" * 400, "soon"),
    ('"exp": {soon}, "iat": Infinity', 4001),
]


@pytest.mark.parametrize(("claims", "outcome"), HOSTILE_CLAIMS, ids=[c[:40] for c, _ in HOSTILE_CLAIMS])
async def test_hostile_time_claims_get_a_documented_answer(main: Stack, clients: Opener, claims: str,
                                                           outcome: int | str | None) -> None:
    """Regression: a token with an exp of 2**64 or more (1e30) made the `authenticated` reply fail in orjson; the
    exception ended the server's message task, and the client got no answer at all."""
    server = main.servers[0]
    before = len(server.log())
    soon = int(time.time()) + 600
    bearer = hs256_raw('{"sub": "u1", ' + claims.format(soon=soon) + "}")
    in_frame = await clients(server)
    reply = await in_frame.request(op="auth", token=bearer)
    at_door = await clients(server, bearer=bearer)
    if isinstance(outcome, int):
        assert reply["op"] == "error", reply
        assert reply["code"] == ("token_expired" if outcome == 4003 else "unauthorized"), reply
        assert await in_frame.closed() == outcome
        assert await at_door.closed() == outcome
    else:
        assert reply["op"] == "authenticated" and reply["user"] == "u1", reply
        assert reply.get("expires") == (soon if outcome == "soon" else None), reply
        for client in (in_frame, at_door):
            await client.subscribe(["user:u1"])
            await client.barrier()
    log = server.log()[before:]
    for bad in ("Traceback", "never retrieved"):
        assert bad not in log, log[-3000:]


async def test_no_auth_in_time_closes_4002(main: Stack, clients: Opener) -> None:
    opened = time.monotonic()
    silent = await clients(main.servers[0])
    pinging = await clients(main.servers[1])  # messages other than auth do not count
    await pinging.barrier()
    for client in (silent, pinging):
        assert await client.closed(AUTH_TIMEOUT + TIMEOUT) == 4002
    assert time.monotonic() - opened >= AUTH_TIMEOUT - 0.2
    assert not silent.frames


# -- 4. bad frames and limits -----------------------------------------------------------------------------------

async def test_bad_frames_get_errors_and_the_connection_goes_on(main: Stack, clients: Opener) -> None:
    client = await clients(main.servers[0], "u2", rooms=["public"])
    raw_cases = [("{not json", "bad_json"), ("[1, 2, 3]", "bad_json"), ("\"text\"", "bad_json")]
    for text, code in raw_cases:
        before = len(client.frames)
        await client.ws.send(text)
        reply = await until(lambda n=before: next((f for f in client.frames[n:] if f["op"] != "event"), None),
                            f"a reply to {text!r}", client=client)
        assert reply["op"] == "error" and reply["code"] == code, (text, reply)
        await client.barrier()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"op": "dance"}, "unknown_op"),
        ({"op": 7}, "bad_frame"),
        ({"op": "subscribe", "rooms": ["no such room"]}, "bad_room"),
        ({"op": "subscribe", "rooms": ["post:" + "x" * 200]}, "bad_room"),
        ({"op": "subscribe", "rooms": ["user:"]}, "bad_room"),
        ({"op": "subscribe", "rooms": "public"}, "bad_frame"),
        ({"op": "subscribe", "rooms": []}, "bad_frame"),
        ({"op": "subscribe", "rooms": ["public"], "since": "yesterday"}, "bad_since"),
        ({"op": "unsubscribe", "rooms": [42]}, "bad_room"),
        ({"op": "typing", "room": "nowhere"}, "bad_room"),
        ({"op": "sync", "since": "1-x"}, "bad_since"),
    ]
    for msg, code in cases:
        reply = await client.request(**msg)
        assert reply["op"] == "error" and reply["code"] == code, (msg, reply)
        assert reply["message"], reply
        await client.barrier()
    # still subscribed: a new public post reaches it
    await asyncio.to_thread(main.db.posts.insert_one, {"_id": "after-bad-frames", "authorId": "u9", "text": "hi"})
    await until(lambda: any(f["data"]["id"] == "after-bad-frames" for f in client.events()),
                "a live event after the bad frames", TIMEOUT * 3, client)
    assert not client.ended


async def test_oversized_frame_closes_only_that_connection(main: Stack, clients: Opener) -> None:
    s0, s1 = main.servers
    big = await clients(s0, "u3", rooms=["public"])
    neighbour = await clients(s0, "u4", rooms=["public"])
    elsewhere = await clients(s1, "u4", rooms=["public"])
    with contextlib.suppress(ConnectionClosed):
        await big.ws.send(orjson.dumps({"op": "ping", "pad": "x" * (64 * 1024)}).decode())
    assert await big.closed() == 1009
    for client in (neighbour, elsewhere):
        await client.barrier()
    post_id = f"after-big-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(main.db.posts.insert_one, {"_id": post_id, "authorId": "u9", "text": "still here"})
    for client in (neighbour, elsewhere):
        await until(lambda c=client: any(f["data"]["id"] == post_id for f in c.events()),
                    "a live event after the oversized frame", TIMEOUT * 3, client)
    # just under the bound is fine
    ok = await clients(s0, "u5")
    reply = await ok.request(op="ping", pad="x" * (60 * 1024))
    assert reply["op"] == "pong"


async def test_connections_per_address_behind_a_trusted_proxy_and_per_user_4010(limits: Stack,
                                                                                  clients: Opener) -> None:
    server = limits.servers[0]

    def via(*hops: str) -> dict[str, str]:
        return {"X-Forwarded-For": ", ".join(hops)}

    # per address: the address the proxy saw, not the proxy's own
    first = [await clients(server, f"a{i}", rooms=["public"], headers=via("198.51.100.1")) for i in range(2)]
    third = await clients(server, "a3", headers=via("198.51.100.1"))
    assert await third.closed() == 4010
    spoof = await clients(server, "a4", headers=via("203.0.113.66", "198.51.100.1"))  # what the client wrote
    assert await spoof.closed() == 4010
    other = await clients(server, "a5", rooms=["public"], headers=via("198.51.100.2"))
    assert server.metric("realtime_refused_connections_total", reason="address") == 2
    # per user, whatever the addresses
    mine = [await clients(server, "u7", rooms=["public"], headers=via(f"198.51.100.{10 + i}")) for i in range(2)]
    extra = await clients(server, "u7", headers=via("198.51.100.20"))
    assert await extra.closed() == 4010
    assert any(f.get("code") == "too_many_connections" for f in extra.frames), extra.frames
    assert server.metric("realtime_refused_connections_total", reason="user") == 1
    for client in (*first, other, *mine):
        assert not client.ended
        await client.barrier()
    # a place frees up when a connection goes
    await first[0].aclose()
    await until(lambda: server.metric("realtime_connections") == 4, "the closed connection to be gone")
    again = await clients(server, "a6", rooms=["public"], headers=via("198.51.100.1"))
    await again.barrier()
    assert not again.ended


async def test_flood_is_rate_limited_then_closed(main: Stack, clients: Opener) -> None:
    flooder = await clients(main.servers[1], "u3", rooms=["public"])
    calm = await clients(main.servers[1], "u3", rooms=["public"])
    with contextlib.suppress(ConnectionClosed):
        for i in range(400):
            await flooder.ws.send(orjson.dumps({"op": "ping", "ref": i}).decode())
    assert await flooder.closed() == 4009
    ops = [f.get("code", f["op"]) for f in flooder.frames if f["op"] in ("pong", "error")]
    limited = ops.count("rate_limited")
    assert 0 < ops.count("pong") <= 40 + 5, ops  # the burst, and what refilled meanwhile
    assert limited >= 1 and set(ops) == {"pong", "rate_limited"}, ops
    assert ops[-1] == "rate_limited"
    assert len(ops) < 400, "the connection was closed before it had answered everything"
    await calm.barrier()
    assert not calm.ended


# -- 5. a slow client among 500 ---------------------------------------------------------------------------------

def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final client frame, masked (RFC 6455 §5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def raw_client(port: int, bearer: str, rooms: list[str]) -> socket.socket:
    """A WebSocket client done by hand that subscribes, then never reads: a small receive buffer, so the
    kernel holds little for it and the server's queue fills."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Authorization: Bearer {bearer}\r\n\r\n").encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # byte by byte: not a byte of what follows the response
        chunk = sock.recv(1)
        assert chunk, f"no upgrade: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(masked_frame(orjson.dumps({"op": "subscribe", "rooms": rooms})))
    return sock


def drain(sock: socket.socket) -> tuple[bytes, bool]:
    """Read until the server ends the connection: what arrived, and whether it ended (FIN or RST)."""
    data = bytearray()
    deadline = time.monotonic() + TIMEOUT * 2
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data), True
        except TimeoutError:
            continue
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False


def frames_of(data: bytes) -> list[tuple[int, bytes]]:
    """The whole server frames at the start of ``data``: (opcode, payload) each."""
    frames = []
    i = 0
    while i + 2 <= len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        if i + n > len(data):
            break
        frames.append((opcode, data[i:i + n]))
        i += n
    return frames


def close_code_of(data: bytes) -> int | None:
    """The code of a close frame among the whole server frames at the start of ``data``, if any."""
    return next((int.from_bytes(payload[:2], "big") for op, payload in frames_of(data) if op == 0x8), None)


def fragment(payload: bytes, opcode: int, fin: bool) -> bytes:
    """A masked client frame of a fragmented message (RFC 6455 §5.4); ``opcode`` 0 continues it."""
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("frames", [
    [masked_frame(b'{"op": "ping", "x": "\xff\xfe"}')],
    [fragment(b'{"op": "ping", ', 0x1, False), fragment(b'"x": "\xc3"}', 0x0, True)],
], ids=["one frame", "fragmented"])
async def test_invalid_utf8_in_a_text_message_closes_1007(main: Stack, clients: Opener, frames: list[bytes]) -> None:
    """Regression: invalid UTF-8 raised UnicodeDecodeError in the fast path (a traceback per frame, and the
    connection dropped without a close frame)."""
    server = main.servers[0]
    neighbour = await clients(server, "u6", rooms=["public"])
    before = server.log().count("Traceback")
    sock = await asyncio.to_thread(raw_client, server.port, token("u7"), ["public"])
    try:
        for data in frames:
            await asyncio.to_thread(sock.sendall, data)
        data, ended = await asyncio.to_thread(drain, sock)
    finally:
        sock.close()
    assert ended
    assert close_code_of(data) == 1007, frames_of(data)
    assert server.log().count("Traceback") == before, server.log()[-2000:]
    await neighbour.barrier()


async def test_heartbeats_close_only_the_silent_client_1011(beats: Stack, clients: Opener) -> None:
    server = beats.servers[0]
    answering = await clients(server, "u1", rooms=["public"])  # websockets answers pings by itself
    opened = time.monotonic()
    mute = await asyncio.to_thread(raw_client, server.port, token("u2"), ["public"])  # never answers
    try:
        data, ended = await asyncio.to_thread(drain, mute)
    finally:
        mute.close()
    silent_for = time.monotonic() - opened
    assert ended, "the silent client was not closed"
    frames = frames_of(data)
    ops = [op for op, _ in frames]
    assert ops[0] == 0x1 and orjson.loads(frames[0][1])["op"] == "subscribed", frames
    assert 0x9 in ops and ops.index(0x9) < ops.index(0x8), ops  # pinged, then closed
    assert ops.count(0x9) == 1, ops  # an unanswered ping is not repeated
    assert close_code_of(data) == 1011
    assert silent_for >= BEAT_TIMEOUT, silent_for  # not before its ping's timeout ran out
    assert server.metric("realtime_closes_total", reason="heartbeat") == 1
    # the client that answers is still there, several heartbeats later, and still served
    await asyncio.sleep(max(opened + 3 * BEAT + BEAT_TIMEOUT - time.monotonic(), 0.0))
    assert not answering.ended
    await answering.barrier()
    assert server.metric("realtime_closes_total", reason="heartbeat") == 1


async def test_slow_client_is_closed_and_the_others_get_everything(slow: Stack) -> None:
    s0, s1 = slow.servers
    room = "hashtag:load"
    count, window, normal = 2000, 24, 500
    started = time.monotonic()

    sock = await asyncio.to_thread(raw_client, s0.port, token("slowpoke"), [room])
    conns: list[ClientConnection] = []
    try:
        async def join(i: int) -> ClientConnection:
            server = (s0, s1)[i % 2]
            ws = await connect(server.url, additional_headers={"Authorization": f"Bearer {token(f'c{i}')}"},
                               open_timeout=TIMEOUT * 3, max_queue=64)
            conns.append(ws)
            await ws.send(orjson.dumps({"op": "subscribe", "rooms": [room]}).decode())
            reply = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT * 3))
            assert reply["op"] == "subscribed", reply
            return ws

        gate = asyncio.Semaphore(50)

        async def join_gated(i: int) -> ClientConnection:
            async with gate:
                return await join(i)

        sockets = await asyncio.gather(*(join_gated(i) for i in range(normal)))
        await until(lambda: sum(s.metric("realtime_subscriptions") for s in slow.servers) == normal + 1,
                    "501 subscriptions", TIMEOUT)

        base = int(time.time() * 1000)
        ids = [f"{base + i}-0" for i in range(count)]
        received = [0] * normal
        wrong: list[str] = []

        async def consume(k: int, ws: ClientConnection) -> None:
            n = 0
            async for message in ws:
                f = orjson.loads(message)
                if f["op"] != "event":
                    continue
                if f["id"] != ids[n] or f["room"] != room or len(f["data"]["text"]) != 2000:
                    wrong.append(f"client {k}: expected {ids[n]}, got {f['id']}")
                    return
                n += 1
                received[k] = n
                if n == count:
                    return

        readers = [asyncio.create_task(consume(k, ws)) for k, ws in enumerate(sockets)]
        try:
            sent = 0
            deadline = time.monotonic() + 45
            while sent < count:
                assert not wrong, wrong[:3]
                assert time.monotonic() < deadline, f"only {min(received)} of {sent} events reached every client"
                upto = min(count, min(received) + window)
                if upto > sent:
                    with slow.r.pipeline(transaction=False) as pipe:
                        for i in range(sent, upto):
                            envelope = {"id": ids[i], "type": "post:created", "rooms": [room],
                                        "data": {"id": f"load{i}", "authorId": "load", "text": "x" * 2000},
                                        "ts": int(time.time() * 1000)}
                            pipe.xadd(slow.events_key, {"e": orjson.dumps(envelope)}, id=ids[i])
                        pipe.execute()
                    sent = upto
                await asyncio.sleep(0.005)
            done, _ = await asyncio.wait(readers, timeout=TIMEOUT * 2)
            assert not wrong, wrong[:3]
            assert len(done) == normal, f"{normal - len(done)} clients did not get all {count} events"
            for task in readers:
                task.result()
            assert received == [count] * normal
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

        # the slow one was cut off; nobody else was
        assert s0.metric("realtime_slow_closes_total") >= 1
        assert s0.metric("realtime_closes_total", reason="slow") >= 1
        assert s1.metric("realtime_slow_closes_total") == 0
        data, ended = await asyncio.to_thread(drain, sock)
        assert ended, "the slow client's connection was not ended"
        assert len(data) < count * 2000, "the slow client's connection was cut well before the end"
        code = close_code_of(data)
        assert code in (None, 4008), code  # the close frame, when it got through before the reset
        assert [s.metric("realtime_connections") for s in slow.servers] == [normal // 2, normal // 2]
        assert all(ws.close_code is None for ws in sockets)
    finally:
        sock.close()
        await asyncio.gather(*(asyncio.wait_for(ws.close(), TIMEOUT) for ws in conns), return_exceptions=True)
    assert time.monotonic() - started < 90


async def test_a_replay_longer_than_the_queue_goes_at_the_clients_pace(slow: Stack) -> None:
    """A resume whose replay is far larger than REALTIME_QUEUE_BYTES (64 KiB here, with a 16 KiB socket buffer)
    to a client that reads, slowly: the replay waits for the client to take each part, so the client gets it
    whole, in order, and is not closed as slow (it was closed 4008, to resume and be closed again)."""
    server = slow.servers[1]
    room, count = "hashtag:replay-pace", 300
    base = int(time.time() * 1000)
    ids = [f"{base}-{i + 1}" for i in range(count)]
    with slow.r.pipeline(transaction=False) as pipe:
        for i, event_id in enumerate(ids):
            envelope = orjson.dumps({"id": event_id, "type": "post:created", "rooms": [room],
                                     "data": {"id": f"pace{i}", "authorId": "pace", "text": "y" * 2000},
                                     "ts": base})
            pipe.xadd(slow.events_key, {"e": envelope}, id=event_id)
            pipe.xadd("{" + slow.prefix + "}:room:" + room, {"e": envelope}, id=event_id)
        pipe.execute()
    slow_before = server.metric("realtime_slow_closes_total")
    async with connect(server.url, additional_headers={"Authorization": f"Bearer {token('pace')}"},
                       open_timeout=TIMEOUT, max_queue=4, max_size=2**20) as ws:
        await ws.send(orjson.dumps({"op": "subscribe", "rooms": [room], "since": f"{base}-0"}).decode())
        got: list[str] = []
        while True:
            f = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT * 3))
            if f["op"] == "event":
                got.append(f["id"])
                if len(got) % 20 == 0:
                    await asyncio.sleep(0.02)  # a client slower than the server's writes
            elif f["op"] == "synced":
                break
            else:
                assert f["op"] == "subscribed", f
        assert got == ids
        assert f["last"] == ids[-1]
    assert server.metric("realtime_slow_closes_total") == slow_before
