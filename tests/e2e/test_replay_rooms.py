"""A subscribe with ``since`` on a connection that is already in other rooms: its replay leaves out what those rooms
delivered live (found by the chaos suite, seed 42: a subscribe that a partition delayed reached the server after
the live events of the connection's other rooms, and its replay sent again those that were also in the new room),
and only that (an event from before the other room was joined still comes in the replay)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest

from tests.conftest import TIMEOUT, RedisServer
from tests.e2e.serverkit import Client, Opener, Stack, running_stack, until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("rooms"), "rooms", servers=1, watcher=False) as st:
        yield st


def publish(st: Stack, rooms: list[str]) -> str:
    """An event of ``rooms``, appended to the global stream and to each room's history as the watcher does; its id."""
    last = st.r.xrevrange(st.events_key, count=1)
    ms = max(int(time.time() * 1000), int(last[0][0].decode().split("-")[0]) + 1 if last else 0)
    event_id = f"{ms}-0"
    raw = orjson.dumps({"id": event_id, "type": "post:created", "rooms": rooms, "ts": ms,
                        "data": {"id": f"p{ms}", "authorId": "a1", "text": "hello"}})
    with st.r.pipeline(transaction=True) as pipe:
        pipe.xadd(st.events_key, {"e": raw}, id=event_id)
        for room in rooms:
            pipe.xadd("{" + st.prefix + "}:room:" + room, {"e": raw}, id=event_id)
        pipe.execute()
    return event_id


async def subscribed_since(client: Client, room: str, since: str) -> int:
    """Subscribe to ``room`` with ``since``; the index of the replay's ``synced`` among the client's frames."""
    ref = await client.send(op="subscribe", rooms=[room], since=since)
    reply = await client.reply(ref)
    assert reply["op"] == "subscribed", reply
    synced = await until(lambda: next((f for f in client.frames if f["op"] == "synced" and f.get("ref") == ref), None),
                         "synced", TIMEOUT, client)
    return client.frames.index(synced)


async def test_a_replay_leaves_out_what_another_room_delivered_live(stack: Stack, clients: Opener) -> None:
    """Regression (chaos seed 42): an event of a public post, received live in ``public``, came again in the
    replay of its post's room subscribed with an older ``since``."""
    (server,) = stack.servers
    since = publish(stack, ["public"])
    client = await clients(server, "u1", rooms=["public"])
    both = publish(stack, ["public", "post:dup"])
    await until(lambda: both in {f["id"] for f in client.events()}, "the live event", TIMEOUT, client)
    only = publish(stack, ["post:dup"])
    at = await subscribed_since(client, "post:dup", since)
    assert [f["id"] for f in client.events(0, at)] == [both, only]  # the replay gives what public did not
    later = publish(stack, ["public", "post:dup"])
    await until(lambda: later in {f["id"] for f in client.events()}, "the next event", TIMEOUT, client)
    end = await client.barrier()
    assert [f["id"] for f in client.events(0, end)] == [both, only, later]


async def test_a_replay_gives_what_came_before_the_other_room_was_joined(stack: Stack, clients: Opener) -> None:
    """The counter-case: a room joined live after the event does not cover it; the replay gives it."""
    (server,) = stack.servers
    since = publish(stack, ["public"])
    watching = await clients(server, "u2", rooms=["public"])
    before = publish(stack, ["public", "post:late"])
    # handed over by the server's stream reader (the other client has it) before the next one joins public
    await until(lambda: before in {f["id"] for f in watching.events()}, "the live event", TIMEOUT, watching)
    client = await clients(server, "u3", rooms=["public"])
    at = await subscribed_since(client, "post:late", since)
    end = await client.barrier()
    assert [(f["id"], f["room"]) for f in client.events(0, end)] == [(before, "post:late")]
    assert end > at
