"""Resuming after Redis lost its data while the watcher had no checkpoint to republish from (found by the chaos
suite, tests/chaos: MongoDB was restarted without its data, the checkpoint with it, and then Redis lost its data)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, RedisServer, own_redis
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


@pytest.mark.xfail(strict=True, reason="a watcher that finds Redis empty and no checkpoint starts a fresh stream from "
                   "now and publishes no reset marker, so a client whose position is older than everything Redis "
                   "holds now is replayed what is there as if it were all: the events lost with Redis, and those "
                   "written while no watcher ran, are a silent gap")
async def test_after_redis_and_the_checkpoint_are_lost_a_resuming_client_is_told_reset(
        stack: Stack, clients: Opener) -> None:
    """Regression: Redis lost its data and no checkpoint existed; a client resuming from before got no reset."""
    assert stack.watcher is not None and stack.mongo is not None
    stack.db.posts.insert_one({"_id": "p1", "authorId": "a1", "text": "seen"})
    position = next(e["id"] for e in stack.published("p1") if e["type"] == "post:created")
    stack.watcher.stop()
    stack.db.posts.insert_one({"_id": "p2", "authorId": "a1", "text": "written while no watcher ran"})
    stack.r.flushall()  # Redis lost its data ...
    stack.mongo["realtime_meta"].checkpoints.delete_many({})  # ... and there is no checkpoint to republish from
    watcher = stack.watcher
    watcher.start()
    wait_for(lambda: streaming(watcher), "the watcher to stream again", timeout=TIMEOUT * 3)
    stack.db.posts.insert_one({"_id": "p3", "authorId": "a1", "text": "after"})
    stack.published("p3")
    client = await clients(stack.servers[0], "u1")
    reply = await client.request(op="subscribe", rooms=["public"], since=position)
    assert reply["op"] == "subscribed", reply
    await until(lambda: any(f["op"] == "synced" for f in client.frames), "synced", TIMEOUT * 3, client)
    got = [(f["op"], f.get("data", {}).get("id") or f.get("reason")) for f in client.frames if f["op"] in (
        "event", "reset")]
    assert any(op == "reset" for op, _ in got), f"p2's event is gone and nothing says so: {got}"
