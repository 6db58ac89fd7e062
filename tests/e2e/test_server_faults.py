"""The server when Redis fails under a client's request: errors are answered, holds are released, nobody freezes.

Each test runs a server on a redis-server of its own (the test stops it, fills it, or kills it) and writes
events in the watcher's shape straight into the streams, so what the server delivers is known exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import TIMEOUT, RedisServer, own_redis
from tests.e2e.serverkit import Client, Opener, Stack, running_stack, until

pytestmark = pytest.mark.e2e


class Feed:
    """Writes events as the watcher does: the envelope to the global stream and to each room's history."""

    def __init__(self, st: Stack) -> None:
        self.st = st
        self.base = int(time.time() * 1000)
        self.n = 0

    def publish(self, rooms: list[str], text: str = "hello") -> str:
        self.n += 1
        event_id = f"{self.base}-{self.n}"
        envelope = {"id": event_id, "type": "post:created", "rooms": rooms, "ts": int(time.time() * 1000),
                    "data": {"id": f"p{self.n}", "authorId": "a1", "text": text}}
        raw = orjson.dumps(envelope)
        tag = "{" + self.st.prefix + "}"
        with self.st.r.pipeline(transaction=True) as pipe:
            pipe.xadd(f"{tag}:events", {"e": raw}, id=event_id)
            for room in rooms:
                pipe.xadd(f"{tag}:room:{room}", {"e": raw}, id=event_id)
            pipe.execute()
        return event_id


@pytest.fixture
def redis_own(tmp_path: Path) -> Iterator[RedisServer]:
    with own_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def stack(redis_own: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    env = {"REALTIME_RETRY_SECONDS": "1", "REALTIME_REDIS_TIMEOUT": "1", "REALTIME_PRESENCE_TTL": "3"}
    with running_stack(redis_own, tmp_path, "faults", servers=1, watcher=False, server_env=env) as st:
        yield st


def clean_log(st: Stack) -> None:
    text = st.servers[0].log()
    for bad in ("never retrieved", "Task was destroyed", "Traceback"):
        assert bad not in text, f"server log has {bad!r}:\n{text[-3000:]}"


async def events_of(client: Client, ids: list[str]) -> None:
    await until(lambda: {f.get("id") for f in client.events()} >= set(ids), f"events {ids}", TIMEOUT * 2, client)


async def test_subscribe_while_redis_refuses_writes_is_answered_and_the_connection_lives_on(
        stack: Stack, clients: Opener) -> None:
    """Regression: a subscribe with since to a post room while Redis refused writes (maxmemory) froze the
    connection for good: the presence join raised, the replay's hold was never released."""
    feed = Feed(stack)
    server = stack.servers[0]
    client = await clients(server, "u1", rooms=["public"])
    first = feed.publish(["public"])
    await events_of(client, [first])

    stack.r.config_set("maxmemory", 1)  # noeviction: every write is refused with OOM, reads still work
    try:
        reply = await client.request(op="subscribe", rooms=["post:p1"], since=first)
        assert reply["op"] == "subscribed", reply
        await until(lambda: any(f["op"] == "synced" for f in client.frames), "synced", TIMEOUT, client)
    finally:
        stack.r.config_set("maxmemory", 0)
    assert server.metric("realtime_presence_errors_total", what="join") >= 1

    # Live events of every room reach the connection: nothing is held any more.
    later = [feed.publish(["public"]), feed.publish(["post:p1"]), feed.publish(["public", "post:p1"])]
    await events_of(client, later)
    got = [f["id"] for f in client.events()]
    assert got == [first, *later], got
    # The presence join is written once Redis takes writes again (the refresh, every ttl / 3 seconds).
    other = await clients(server, "u2", rooms=["post:p1"])
    presence = await other.request(op="presence", room="post:p1")
    deadline = time.monotonic() + TIMEOUT
    while "u1" not in presence["users"]:
        assert time.monotonic() < deadline, presence
        await asyncio.sleep(0.2)
        presence = await other.request(op="presence", room="post:p1")
    clean_log(stack)


async def test_replay_while_redis_hangs_answers_unavailable_and_leaves_the_rooms(
        stack: Stack, clients: Opener, redis_own: RedisServer) -> None:
    """A replay that cannot read history within REALTIME_RETRY_SECONDS answers `unavailable` naming the rooms,
    which are then not subscribed; the connection goes on, and the same subscribe works once Redis is back."""
    feed = Feed(stack)
    server = stack.servers[0]
    client = await clients(server, "u1", rooms=["public"])
    first = feed.publish(["post:p2"])
    redis_own.process.send_signal(signal.SIGSTOP)  # a hang, not a refusal
    try:
        ref = await client.send(op="subscribe", rooms=["post:p2"], since="0-0")
        reply = await client.reply(ref, within=TIMEOUT)
    finally:
        redis_own.process.send_signal(signal.SIGCONT)
    assert reply["op"] == "error" and reply["code"] == "unavailable", reply
    assert reply["rooms"] == ["post:p2"]
    assert not any(f["op"] in ("subscribed", "synced") and f.get("ref") == ref for f in client.frames)

    # Not subscribed: an event of post:p2 does not come; public still does.
    await client.barrier()
    skipped, live = feed.publish(["post:p2"]), feed.publish(["public"])
    await events_of(client, [live])
    assert skipped not in {f["id"] for f in client.events()}

    # The same subscribe again: the replay, then live events.
    again = await client.request(op="subscribe", rooms=["post:p2"], since="0-0")
    assert again["op"] == "subscribed", again
    await events_of(client, [first, skipped])
    after = feed.publish(["post:p2"])
    await events_of(client, [after])
    ids = [f["id"] for f in client.events()]
    assert len(ids) == len(set(ids)), ids
    assert server.metric("realtime_client_errors_total", code="unavailable") >= 1
    clean_log(stack)


@pytest.fixture
def patient(redis_own: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    """A server that waits for Redis far longer than a test waits for an answer."""
    env = {"REALTIME_REDIS_TIMEOUT": str(TIMEOUT * 6), "REALTIME_PRESENCE_TTL": "3"}
    with running_stack(redis_own, tmp_path, "patient", servers=1, watcher=False, server_env=env) as st:
        yield st


async def test_subscribe_is_answered_while_redis_hangs_and_presence_catches_up(
        patient: Stack, clients: Opener, redis_own: RedisServer) -> None:
    """Regression: a subscribe to a presence room waited for the presence write to Redis, so with Redis hung
    (not refusing: silent) the client got no answer until the Redis timeout. Joins and leaves are now this
    instance's bookkeeping, written to Redis in the background."""
    server = patient.servers[0]
    client = await clients(server, "u1", rooms=["public"])
    redis_own.process.send_signal(signal.SIGSTOP)
    try:
        replies = [await client.request(op="subscribe", rooms=[f"post:h{i}"]) for i in range(3)]
        left = await client.request(op="unsubscribe", rooms=["post:h1"])
        pong = await client.request(op="ping")
    finally:
        redis_own.process.send_signal(signal.SIGCONT)
    assert [r["op"] for r in replies] == ["subscribed"] * 3, replies
    assert left["op"] == "unsubscribed" and pong["op"] == "pong", (left, pong)

    # Once Redis answers, what this instance holds is written: u1 is present in h0 and h2, not in h1.
    other = await clients(server, "u2", rooms=["post:h0"])

    async def present(room: str) -> bool:
        return "u1" in (await other.request(op="presence", room=room))["users"]

    deadline = time.monotonic() + TIMEOUT * 2
    while not (await present("post:h0") and await present("post:h2")):
        assert time.monotonic() < deadline, "the joins made while Redis hung were never written"
        await asyncio.sleep(0.2)
    assert not await present("post:h1")
    clean_log(patient)


@pytest.fixture
def held(redis_own: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    """A server whose replays go on retrying Redis for as long as the test keeps it stopped."""
    env = {"REALTIME_RETRY_SECONDS": "60", "REALTIME_REDIS_TIMEOUT": "1"}
    with running_stack(redis_own, tmp_path, "held", servers=1, watcher=False, server_env=env) as st:
        yield st


@pytest.mark.parametrize(("count", "pad"), [(100, 0), (20, 60_000)], ids=["messages", "bytes"])
async def test_frames_sent_behind_a_replay_that_waits_are_bounded_4009(
        held: Stack, clients: Opener, redis_own: RedisServer, count: int, pad: int) -> None:
    """Regression: while a replay waited for Redis, every frame the client sent meanwhile was kept by the server,
    without bound (at the speed of the network). Past REALTIME_BURST + REALTIME_FLOOD_CLOSE_AFTER frames, or
    REALTIME_QUEUE_BYTES of them, the connection is closed with 4009; nothing of what waited is answered."""
    server = held.servers[0]
    client = await clients(server, "u1", rooms=["public"])
    redis_own.process.send_signal(signal.SIGSTOP)
    try:
        ref = await client.send(op="subscribe", rooms=["hashtag:held"], since="0-0")  # waits for Redis
        with contextlib.suppress(ConnectionClosed):
            for _ in range(count):
                await client.send(op="ping", pad="x" * pad)
        code = await client.closed()
    finally:
        redis_own.process.send_signal(signal.SIGCONT)
    assert code == 4009
    assert not [f for f in client.frames if f["op"] == "pong" or f.get("ref") == ref], client.frames
    assert server.metric("realtime_closes_total", reason="flood") == 1
    other = await clients(server, "u2", rooms=["public"])  # the server goes on
    await other.barrier()
    clean_log(held)


async def test_readyz_answers_503_while_redis_hangs(patient: Stack, redis_own: RedisServer) -> None:
    """Regression: /readyz awaited Redis for as long as REALTIME_REDIS_TIMEOUT allowed a command: with Redis
    hung (stopped, or a connection that a partition blackholes), the readiness probe hung too. It waits
    REALTIME_READY_TIMEOUT at most, then answers 503 and says why."""
    server = patient.servers[0]
    assert (await asyncio.to_thread(server.get, "/readyz"))[0] == 200
    redis_own.process.send_signal(signal.SIGSTOP)
    try:
        status, body = await asyncio.to_thread(server.get, "/readyz")
    finally:
        redis_own.process.send_signal(signal.SIGCONT)
    assert status == 503, (status, body)
    problems = orjson.loads(body)["problems"]
    assert "redis: no answer within 1s" in problems, problems
    await until(lambda: server.get("/readyz")[0] == 200, "ready again once Redis answers")
    clean_log(patient)
