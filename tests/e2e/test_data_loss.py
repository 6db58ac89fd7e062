"""Resuming after Redis lost its data while the watcher had no checkpoint to republish from (found by the chaos
suite, tests/chaos: MongoDB was restarted without its data, the checkpoint with it, and then Redis lost its data)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import TIMEOUT, RedisServer, own_redis
from tests.e2e.httpkit import SSEOpener, poll
from tests.e2e.serverkit import Opener, Stack, running_stack, until
from tests.integration.watcherkit import streaming, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def redis_own(tmp_path: Path) -> Iterator[RedisServer]:
    with own_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def stack(redis_own: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(redis_own, tmp_path, "loss", servers=1) as st:
        yield st


async def test_after_redis_and_the_checkpoint_are_lost_a_resuming_client_is_told_reset(
        stack: Stack, clients: Opener, streams: SSEOpener) -> None:
    """Regression: Redis lost its data and no checkpoint existed; a client resuming from before got no reset."""
    assert stack.watcher is not None and stack.mongo is not None
    server = stack.servers[0]
    stack.db.posts.insert_one({"_id": "p1", "authorId": "a1", "text": "seen"})
    position = next(e["id"] for e in stack.published("p1") if e["type"] == "post:created")
    live = await clients(server, "u2", rooms=["public"])  # connected through it all
    stack.watcher.stop()
    stack.db.posts.insert_one({"_id": "p2", "authorId": "a1", "text": "written while no watcher ran"})
    stack.r.flushall()  # Redis lost its data ...
    stack.mongo["realtime_meta"].checkpoints.delete_many({})  # ... and there is no checkpoint to republish from
    watcher = stack.watcher
    watcher.start()
    wait_for(lambda: streaming(watcher), "the watcher to stream again", timeout=TIMEOUT * 3)
    stack.db.posts.insert_one({"_id": "p3", "authorId": "a1", "text": "after"})
    after = next(e["id"] for e in stack.published("p3") if e["type"] == "post:created")

    # live: the marker, then what follows it
    await until(lambda: after in [f["id"] for f in live.events()], "p3 live", TIMEOUT * 3, live)
    told = [(f["op"], f.get("reason") or f["data"]["id"]) for f in live.frames if f["op"] in ("event", "reset")]
    assert told == [("reset", "stream_started"), ("event", "p3")], told

    # resuming from before, on every transport: a reset (then the client refetches and goes on live)
    client = await clients(server, "u1")
    reply = await client.request(op="subscribe", rooms=["public"], since=position)
    assert reply["op"] == "subscribed", reply
    await until(lambda: any(f["op"] == "synced" for f in client.frames), "synced", TIMEOUT * 3, client)
    got = [(f["op"], f.get("data", {}).get("id") or f.get("reason")) for f in client.frames if f["op"] in (
        "event", "reset")]
    assert got[:1] == [("reset", "history_reset")], f"p2's event is gone and nothing says so: {got}"

    body = (await poll(server, "u1", ["public"], since=position)).json()
    assert body["resets"] == [{"rooms": ["public"], "reason": "history_reset"}], body

    sse = await streams(server, "u1", ["public"], last_event_id=position)
    await until(lambda: sse.of_type("reset"), "the SSE reset")
    assert [m.event for m in sse.messages][:1] == ["reset"], sse.messages
    assert orjson.loads(sse.messages[0].data) == {"op": "reset", "rooms": ["public"], "reason": "history_reset"}
