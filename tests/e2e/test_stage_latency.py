"""The latency of each stage of a change's way to a client, as the watcher and the server expose it on /metrics:
every stage is measured for every change (or event) delivered, and what it measures lies within the test."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tests.e2e.serverkit import Opener, running_stack
from tests.processes import Service

pytestmark = pytest.mark.e2e

FAMILY = "realtime_stage_latency_seconds"
CHANGES = 20
TRUNCATION = 0.001  # a change's wallTime is a BSON date: milliseconds, rounded down


def stages(service: Service, names: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """(count, sum) of each stage's histogram."""
    return {name: (service.metric(f"{FAMILY}_count", stage=name), service.metric(f"{FAMILY}_sum", stage=name))
            for name in names}


async def test_every_stage_is_measured_for_every_change_delivered(redis_server: RedisServer, tmp_path: Path,
                                                                 clients: Opener) -> None:
    with running_stack(redis_server, tmp_path, "stages", servers=1) as st:
        assert st.watcher is not None
        server, watcher = st.servers[0], st.watcher
        client = await clients(server, "reader", rooms=["public"])
        before = {**stages(watcher, ("mongodb_to_watcher", "watcher_to_redis")),
                  **stages(server, ("redis_to_server", "server_to_socket"))}
        started = time.time()
        for i in range(CHANGES):
            st.db.posts.insert_one({"_id": f"p{i}", "authorId": "a1", "text": f"post {i}"})
        await client.got_events(CHANGES, f"{CHANGES} post:created events")
        after = {**stages(watcher, ("mongodb_to_watcher", "watcher_to_redis")),
                 **stages(server, ("redis_to_server", "server_to_socket"))}
        window = time.time() - started
    assert len(client.events()) == CHANGES
    for name in before:
        count, total = (a - b for a, b in zip(after[name], before[name], strict=True))
        # one sample per change (watcher), per event read (server), per event and room with a subscriber here
        assert count >= CHANGES, (name, count)
        assert total > 0, name
        # each sample lies within the test's window: it began after the first write and ended before now
        assert total <= count * (window + TRUNCATION), (name, total, count, window)
