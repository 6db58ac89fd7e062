"""The protocol as documented is the protocol the server speaks: docs/protocol.md's examples, docs/asyncapi.yaml's
schemas and a real server's frames are held to each other, so that the three cannot drift apart again.

* every example reply in protocol.md's table of client frames is valid under asyncapi.yaml;
* the server answers each documented client frame with a frame of the documented op and fields;
* every frame the server sends in a session that exercises the whole protocol (auth, subscriptions with and
  without ``since``, unsubscribe, sync, presence, typing, bad frames, live events) is valid under asyncapi.yaml,
  whose server messages allow no field they do not name.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml

from tests.conftest import TIMEOUT, RedisServer
from tests.e2e.serverkit import Opener, Stack, running_stack, token, until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


# "integer" as the JSON text has it: 1795932825, not 1795932825.0 (which JSON Schema would also take)
Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)))


def schema_of(frame: dict[str, Any]) -> str:
    """The asyncapi.yaml message a server frame must be."""
    op = frame.get("op")
    if op == "presence":
        return "presenceEvent" if "type" in frame else "presence"
    assert isinstance(op, str), frame
    return op


def check(frame: dict[str, Any], message: str | None = None) -> None:
    name = message or schema_of(frame)
    assert name in SPEC["components"]["messages"], f"asyncapi.yaml has no message {name!r} for {frame}"
    schema = {"$ref": f"#/components/messages/{name}/payload", "components": SPEC["components"]}
    errors = sorted(Validator(schema).iter_errors(frame), key=str)
    assert not errors, f"{frame} is not a valid {name!r}: {errors[0].message}"


def documented_rows() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """protocol.md's client frames with their first documented reply, placeholders filled in."""
    section = PROTOCOL.split("## Client frames", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = line.split(" | ")
        if len(cells) < 2 or not cells[0].startswith("| `{"):
            continue
        sent = re.findall(r"`(\{.*?\})`", cells[0])
        replies = re.findall(r"`(\{.*?\})`", cells[1])
        if sent and replies:
            rows.append((fill(sent[0]), fill(replies[0])))
    return rows


def fill(text: str) -> dict[str, Any]:
    text = (text.replace("[...]", '["public"]').replace('"<event id>"', '"1-0"').replace('"<id>"', '"1-1"')
            .replace('"..."', '"TOKEN"'))
    value: dict[str, Any] = orjson.loads(text)
    return value


def test_the_documented_replies_are_valid_under_asyncapi() -> None:
    rows = documented_rows()
    assert len(rows) >= 6, "protocol.md's table of client frames was not found"
    for _, reply in rows:
        check(reply)
    check({"op": "event", "id": "1-1", "type": "post:liked", "room": "post:p1", "data": {}, "ts": 1795930779563})
    check({"op": "presence", "type": "user:online", "room": "post:p1", "data": {"userId": "u2"}, "ts": 1})
    with pytest.raises(AssertionError):  # the check sees a field the schema does not name
        check({"op": "pong", "extra": 1})
    with pytest.raises(AssertionError):  # and a float where the schema says integer
        check({"op": "authenticated", "user": "u1", "expires": 1795932825.0})


@pytest.fixture(scope="module")
def docs_stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("docs"), "docs", servers=1) as st:
        yield st


async def test_the_server_answers_each_documented_frame_as_documented(docs_stack: Stack, clients: Opener) -> None:
    server = docs_stack.servers[0]
    client = await clients(server, None)
    for sent, documented in documented_rows():
        frame = dict(sent)
        if frame.get("token") == "TOKEN":
            frame["token"] = token("u1")
        if frame.get("op") == "sync":
            await client.request(op="subscribe", rooms=["public"])
        reply = await client.request(**frame)
        assert reply["op"] == documented["op"], (sent, reply)
        optional = {"ref"} | ({"last"} if reply["op"] == "synced" else set())
        assert set(reply) - optional == set(documented) - optional, (sent, documented, reply)
        check(reply)


async def collect_all(st: Stack, clients: Opener) -> list[dict[str, Any]]:
    """A session that exercises the whole protocol; every frame two clients received."""
    server = st.servers[0]
    room = f"post:d{uuid.uuid4().hex[:6]}"
    alice = await clients(server, None)
    bob = await clients(server, "bob", rooms=["public", room, "user:bob"])
    await alice.request(op="auth", token=token("alice"))
    start = st.last_id()
    await alice.request(op="subscribe", rooms=["public"])
    await alice.request(op="subscribe", rooms=[room], since=start)
    await alice.request(op="unsubscribe", rooms=["post:never-joined"])
    await alice.request(op="presence", room=room)
    await alice.send(op="typing", room=room)
    for bad in ({"op": None}, {"op": "dance"}, {"op": "subscribe", "rooms": ["bad room"]},
                {"op": "subscribe", "rooms": ["user:bob"]}, {"op": "sync", "since": "x"}):
        await alice.request(**bad)
    await alice.ws.send("not json")
    post_id = room.split(":", 1)[1]
    await asyncio.to_thread(st.db.posts.insert_one, {"_id": post_id, "authorId": "bob", "text": "hi",
                                                     "hashtags": ["docs"]})
    await asyncio.to_thread(st.db.likes.insert_one, {"postId": post_id, "userId": "alice"})
    await asyncio.to_thread(st.db.comments.insert_one, {"postId": post_id, "userId": "alice", "text": "yo"})
    await until(lambda: len([f for f in bob.events() if f["room"] == room or f["room"] == "user:bob"]) >= 3,
                "the events of the post", TIMEOUT * 3, bob)
    await alice.request(op="sync", since=start)
    await alice.request(op="unsubscribe", rooms=[room])
    for c in (alice, bob):
        await c.barrier()
    return [*alice.frames, *alice.presence, *bob.frames, *bob.presence]


async def test_every_frame_of_a_whole_session_is_valid_under_asyncapi(docs_stack: Stack, clients: Opener) -> None:
    frames = await collect_all(docs_stack, clients)
    ops = {schema_of(f) for f in frames}
    assert {"authenticated", "subscribed", "synced", "unsubscribed", "presence", "presenceEvent", "event",
            "error", "pong"} <= ops, ops
    for frame in frames:
        check(frame)

