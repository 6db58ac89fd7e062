"""Change streams as real MongoDB serves them: the checklist of reference §10, item by item.

Written against PyMongo's async API. With ``MONGODB_URI`` set these run against a real replica set,
which holds the stand-in to the real server's behaviour; tests that need the stand-in's own controls
(a tiny oplog, fabricated tokens) skip there.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bson import Int64, Timestamp
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import OperationFailure

from tests.conftest import TIMEOUT, Mongo
from tests.contract.helpers import ops, quiet, take

pytestmark = [pytest.mark.contract]

Client = AsyncMongoClient[dict[str, Any]]


class Commands(monitoring.CommandListener):
    """Records the commands a client sends."""

    def __init__(self) -> None:
        self.events: list[monitoring.CommandStartedEvent] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.events.append(event)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def named(self, name: str) -> list[dict[str, Any]]:
        return [dict(e.command) for e in self.events if e.command_name == name]


# -- 1. levels, getMore with awaitData, killCursors, endSessions ---------------------------------------------

async def test_database_stream_uses_cmd_aggregate_namespace_and_kills_its_cursor(mongo: Mongo, db_name: str) -> None:
    listener = Commands()
    client: Client = AsyncMongoClient(mongo.uri, event_listeners=[listener])
    try:
        db = client[db_name]
        stream = await db.watch(max_await_time_ms=200)
        await db.posts.insert_one({"_id": 1})
        [event] = await take(stream, 1)
        assert event["ns"] == {"db": db_name, "coll": "posts"}
        [aggregate] = listener.named("aggregate")
        assert aggregate["aggregate"] == 1 and aggregate["$db"] == db_name
        get_more = listener.named("getMore")[0]
        assert get_more["collection"] == "$cmd.aggregate"
        assert get_more["maxTimeMS"] == 200
        await stream.close()
        [kill] = listener.named("killCursors")
        assert kill["killCursors"] == "$cmd.aggregate" and kill["cursors"] == [get_more["getMore"]]
    finally:
        await client.close()
    assert listener.named("endSessions"), "closing the client ends its sessions"


async def test_raw_database_aggregate_reply_shape(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    await db.create_collection("posts")
    reply = await db.command({"aggregate": 1, "pipeline": [{"$changeStream": {}}], "cursor": {}})
    cursor = reply["cursor"]
    assert cursor["ns"] == f"{db_name}.$cmd.aggregate"
    assert isinstance(cursor["id"], Int64) and cursor["id"] != 0
    assert cursor["firstBatch"] == []
    assert set(cursor["postBatchResumeToken"]) >= {"_data"}
    assert isinstance(reply["operationTime"], Timestamp)
    killed = await db.command({"killCursors": "$cmd.aggregate", "cursors": [cursor["id"]]})
    assert killed["cursorsKilled"] == [cursor["id"]]
    with pytest.raises(OperationFailure) as info:
        await db.command({"getMore": cursor["id"], "collection": "$cmd.aggregate", "maxTimeMS": 10})
    assert info.value.code == 43


async def test_get_more_waits_for_a_write(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    await db.create_collection("posts")
    reply = await db.command({"aggregate": 1, "pipeline": [{"$changeStream": {}}], "cursor": {}})
    cursor_id = reply["cursor"]["id"]

    async def write_later() -> None:
        await asyncio.sleep(0.3)
        await db.posts.insert_one({"_id": "late"})

    writer = asyncio.create_task(write_later())
    more = await db.command({"getMore": cursor_id, "collection": "$cmd.aggregate", "maxTimeMS": int(TIMEOUT * 1000)})
    await writer
    assert [e["documentKey"] for e in more["cursor"]["nextBatch"]] == [{"_id": "late"}]
    await db.command({"killCursors": "$cmd.aggregate", "cursors": [cursor_id]})


async def test_collection_database_and_cluster_levels_see_their_scope(aclient: Client, db_name: str) -> None:
    other = db_name + "_other"
    db, odb = aclient[db_name], aclient[other]
    await db.create_collection("likes")
    await odb.create_collection("posts")
    coll_stream = await db.posts.watch(max_await_time_ms=100)
    db_stream = await db.watch(max_await_time_ms=100)
    cluster_stream = await aclient.watch(max_await_time_ms=100)
    await db.posts.insert_one({"_id": 1})
    await db.likes.insert_one({"_id": 2})
    await odb.posts.insert_one({"_id": 3})
    [a] = await take(coll_stream, 1)
    assert a["documentKey"] == {"_id": 1}
    assert await quiet(coll_stream) == []
    got = await take(db_stream, 2)
    assert [e["documentKey"]["_id"] for e in got] == [1, 2]
    assert await quiet(db_stream) == []
    mine = [e for e in await take_until(cluster_stream, lambda e: e["ns"]["db"] == other)
            if e["ns"]["db"] in (db_name, other)]
    assert [(e["ns"]["db"], e["documentKey"]["_id"]) for e in mine] == [(db_name, 1), (db_name, 2), (other, 3)]
    for s in (coll_stream, db_stream, cluster_stream):
        await s.close()
    await aclient.drop_database(other)


async def take_until(stream: Any, done: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while loop.time() < deadline:
        event = await stream.try_next()
        if event is not None:
            events.append(event)
            if done(event):
                return events
    raise AssertionError(f"condition not met; got {ops(events)}")


async def test_internal_databases_refuse_streams(aclient: Client) -> None:
    for name in ("admin", "local", "config"):
        with pytest.raises(OperationFailure):
            await aclient[name].watch()


# -- 2. event shapes and fullDocument / fullDocumentBeforeChange ----------------------------------------------

async def test_event_shapes(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    await db.create_collection("posts")
    stream = await db.posts.watch(max_await_time_ms=100)
    await db.posts.insert_one({"_id": 1, "title": "a", "tags": ["x", "y", "z"], "meta": {"n": 1, "m": 2}})
    await db.posts.update_one({"_id": 1}, {"$set": {"title": "b", "meta.n": 5}, "$unset": {"meta.m": ""},
                                           "$push": {"tags": "w"}})
    await db.posts.update_one({"_id": 1}, {"$pop": {"tags": 1}})
    await db.posts.replace_one({"_id": 1}, {"title": "c"})
    await db.posts.delete_one({"_id": 1})
    insert, update, pop, replace, delete = await take(stream, 5)

    for e in (insert, update, pop, replace, delete):
        assert set(e) >= {"_id", "operationType", "clusterTime", "wallTime", "ns", "documentKey"}
        assert isinstance(e["clusterTime"], Timestamp)
        assert e["ns"] == {"db": db_name, "coll": "posts"}
        assert e["documentKey"] == {"_id": 1}
        assert "lsid" not in e and "txnNumber" not in e
    assert insert["fullDocument"] == {"_id": 1, "title": "a", "tags": ["x", "y", "z"], "meta": {"n": 1, "m": 2}}
    assert "fullDocument" not in update
    assert update["updateDescription"] == {
        "updatedFields": {"title": "b", "meta.n": 5, "tags.3": "w"}, "removedFields": ["meta.m"],
        "truncatedArrays": [],
    }
    ud = pop["updateDescription"]
    assert ud["removedFields"] == []
    assert ud in (
        {"updatedFields": {}, "removedFields": [], "truncatedArrays": [{"field": "tags", "newSize": 3}]},
        {"updatedFields": {"tags": ["x", "y", "z"]}, "removedFields": [], "truncatedArrays": []},
    )
    assert replace["fullDocument"] == {"_id": 1, "title": "c"}
    assert "fullDocument" not in delete and "updateDescription" not in delete
    assert "fullDocumentBeforeChange" not in delete
    await stream.close()


async def test_no_op_update_produces_no_event(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    await db.posts.insert_one({"_id": 1, "n": 1})
    stream = await db.posts.watch(max_await_time_ms=100)
    result = await db.posts.update_one({"_id": 1}, {"$set": {"n": 1}})
    assert result.matched_count == 1 and result.modified_count == 0
    await db.posts.insert_one({"_id": 2})
    [event] = await take(stream, 1)
    assert event["operationType"] == "insert" and event["documentKey"] == {"_id": 2}
    await stream.close()


async def test_an_event_read_late_shows_the_change_as_it_was_made(aclient: Client, db_name: str) -> None:
    """Pins: an update's updatedFields and an insert's or a replace's fullDocument showed what later updates did
    to the same arrays and sub-documents, when the event was read after them."""
    db = aclient[db_name]
    await db.posts.insert_one({"_id": 0})
    stream = await db.posts.watch(max_await_time_ms=100)  # read only once all the writes are made
    await db.posts.insert_one({"_id": 1, "tags": ["a"], "sub": {"x": 1}})
    await db.posts.update_one({"_id": 1}, {"$set": {"more": ["m"], "other": {"o": 1}}})
    await db.posts.replace_one({"_id": 0}, {"list": [1]})
    await db.posts.update_one({"_id": 1}, {"$push": {"tags": "b", "more": "n"}, "$set": {"sub.y": 2, "other.p": 2}})
    await db.posts.update_one({"_id": 0}, {"$push": {"list": 2}})
    insert, update, replace, _, _ = await take(stream, 5)
    assert insert["fullDocument"] == {"_id": 1, "tags": ["a"], "sub": {"x": 1}}
    assert update["updateDescription"]["updatedFields"] == {"more": ["m"], "other": {"o": 1}}
    assert replace["fullDocument"] == {"_id": 0, "list": [1]}
    await stream.close()


async def test_stages_read_and_reshape_the_whole_document(aclient: Client, db_name: str) -> None:
    """$match and $addFields reach into fullDocument, and reshaping one stream leaves another's events alone."""
    db = aclient[db_name]
    matching = await db.posts.watch([{"$match": {"fullDocument.kind": "a", "fullDocument.n": {"$gte": 2}}}],
                                    max_await_time_ms=100)
    reshaping = await db.posts.watch([{"$addFields": {"fullDocument.extra": "$fullDocument.n"}}],
                                     max_await_time_ms=100)
    plain = await db.posts.watch(max_await_time_ms=100)
    for i, kind in enumerate(["a", "b", "a"], 1):
        await db.posts.insert_one({"_id": i, "kind": kind, "n": i})
    [only] = await take(matching, 1)
    assert only["fullDocument"] == {"_id": 3, "kind": "a", "n": 3}
    assert [e["fullDocument"]["extra"] for e in await take(reshaping, 3)] == [1, 2, 3]
    assert [e["fullDocument"] for e in await take(plain, 3)] == [{"_id": i, "kind": k, "n": i}
                                                                  for i, k in enumerate(["a", "b", "a"], 1)]
    for stream in (matching, reshaping, plain):
        await stream.close()


async def test_update_lookup_gives_current_document_or_null_after_delete(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    await db.posts.insert_one({"_id": 1, "n": 0})
    await db.posts.insert_one({"_id": 2, "n": 0})
    stream = await db.posts.watch(full_document="updateLookup", max_await_time_ms=100)
    await db.posts.update_one({"_id": 1}, {"$inc": {"n": 1}})
    await db.posts.update_one({"_id": 1}, {"$inc": {"n": 1}})  # lookup shows the current state: n == 2
    await db.posts.update_one({"_id": 2}, {"$inc": {"n": 1}})
    await db.posts.delete_one({"_id": 2})
    first, second, third, delete = await take(stream, 4)
    assert first["fullDocument"] == {"_id": 1, "n": 2}
    assert second["fullDocument"] == {"_id": 1, "n": 2}
    assert "fullDocument" in third and third["fullDocument"] is None
    assert delete["operationType"] == "delete"
    await stream.close()


async def test_images_exist_only_where_enabled(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    await db.create_collection("with_images", changeStreamPreAndPostImages={"enabled": True})
    await db.create_collection("without")
    for name in ("with_images", "without"):
        await db[name].insert_one({"_id": 1, "n": 0})
    stream = await db.watch(full_document="whenAvailable", full_document_before_change="whenAvailable",
                            max_await_time_ms=100)
    for name in ("with_images", "without"):
        await db[name].update_one({"_id": 1}, {"$inc": {"n": 1}})
        await db[name].update_one({"_id": 1}, {"$inc": {"n": 1}})
        await db[name].delete_one({"_id": 1})
    events = await take(stream, 6)
    on, on2, on_del, off, off2, off_del = events
    assert on["fullDocumentBeforeChange"] == {"_id": 1, "n": 0}
    assert on["fullDocument"] == {"_id": 1, "n": 1}  # point in time, not the current state
    assert on2["fullDocumentBeforeChange"] == {"_id": 1, "n": 1}
    assert on_del["fullDocumentBeforeChange"] == {"_id": 1, "n": 2}
    for e in (off, off2):
        assert e["fullDocument"] is None and e["fullDocumentBeforeChange"] is None
    assert off_del["fullDocumentBeforeChange"] is None
    await stream.close()


async def test_images_after_coll_mod_cover_only_later_writes(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    await db.posts.insert_one({"_id": 1, "n": 0})
    stream = await db.posts.watch(full_document_before_change="whenAvailable", max_await_time_ms=100)
    await db.posts.update_one({"_id": 1}, {"$inc": {"n": 1}})
    await db.command("collMod", "posts", changeStreamPreAndPostImages={"enabled": True})
    await db.posts.update_one({"_id": 1}, {"$inc": {"n": 1}})
    before, after = await take(stream, 2)
    assert before["fullDocumentBeforeChange"] is None
    assert after["fullDocumentBeforeChange"] == {"_id": 1, "n": 1}
    await stream.close()


@pytest.mark.parametrize("option", ["full_document", "full_document_before_change"])
async def test_required_image_missing_is_error_47(aclient: Client, db_name: str, option: str) -> None:
    db = aclient[db_name]
    await db.posts.insert_one({"_id": 1, "n": 0})
    stream = await db.posts.watch(**{option: "required"}, max_await_time_ms=100)
    await db.posts.update_one({"_id": 1}, {"$inc": {"n": 1}})
    with pytest.raises(OperationFailure) as info:
        await take(stream, 1)
    assert info.value.code == 47
    assert not stream.alive


# -- 3. transactions -------------------------------------------------------------------------------------

async def test_transaction_events_share_cluster_time_and_carry_session(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    for name in ("posts", "likes", "comments"):
        await db.create_collection(name)
    await db.posts.insert_one({"_id": "p"})
    stream = await db.watch(max_await_time_ms=100)
    async with aclient.start_session() as session:
        async with await session.start_transaction():
            await db.likes.insert_one({"_id": "l1", "postId": "p"}, session=session)
            await db.posts.update_one({"_id": "p"}, {"$inc": {"likes": 1}}, session=session)
            await db.comments.insert_one({"_id": "c1", "postId": "p"}, session=session)
        session_id = session.session_id["id"]
    async with aclient.start_session() as session:
        await session.start_transaction()
        await db.likes.insert_one({"_id": "aborted"}, session=session)
        await session.abort_transaction()
    await db.posts.insert_one({"_id": "after"})
    events = await take(stream, 4)
    txn, after = events[:3], events[3]
    assert [e["documentKey"]["_id"] for e in txn] == ["l1", "p", "c1"]
    assert len({e["clusterTime"] for e in txn}) == 1
    assert all(e["lsid"]["id"] == session_id and isinstance(e["txnNumber"], int) for e in txn)
    assert len({e["txnNumber"] for e in txn}) == 1
    tokens = [e["_id"]["_data"] for e in events]
    assert tokens == sorted(tokens) and len(set(tokens)) == 4
    assert after["documentKey"] == {"_id": "after"} and "lsid" not in after
    assert await db.likes.find_one({"_id": "aborted"}) is None
    await stream.close()


# -- 4. tokens and postBatchResumeToken -------------------------------------------------------------------

async def test_tokens_are_ordered_hex_that_start_with_cluster_time(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    stream = await db.watch(max_await_time_ms=100)
    for i in range(20):
        await db[("posts", "likes", "comments")[i % 3]].insert_one({"_id": i})
    events = await take(stream, 20)
    data = [e["_id"]["_data"] for e in events]
    assert data == sorted(data) and len(set(data)) == 20
    for e, d in zip(events, data, strict=True):
        assert d == d.upper() and all(c in "0123456789ABCDEF" for c in d)
        ts = e["clusterTime"]
        assert d[:18] == f"82{ts.time:08X}{ts.inc:08X}"
    await stream.close()


async def test_post_batch_resume_token_advances_on_empty_batches(aclient: Client, db_name: str) -> None:
    db, elsewhere = aclient[db_name], aclient[db_name + "_elsewhere"]
    await db.create_collection("posts")
    stream = await db.posts.watch(max_await_time_ms=100)
    first = stream.resume_token
    assert first is not None, "the PBRT of the empty first batch is cached at once"
    await elsewhere.noise.insert_one({"_id": 1})  # moves the oplog, matches nothing
    assert await stream.try_next() is None
    second = stream.resume_token
    assert second is not None and second["_data"] > first["_data"]
    await db.posts.insert_one({"_id": 1})
    [event] = await take(stream, 1)
    assert stream.resume_token is not None and stream.resume_token["_data"] >= event["_id"]["_data"]
    assert event["_id"]["_data"] > second["_data"]
    await stream.close()
    await aclient.drop_database(db_name + "_elsewhere")


async def test_resuming_from_a_high_water_mark_misses_nothing(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    stream = await db.watch(max_await_time_ms=100)
    assert await stream.try_next() is None
    token = stream.resume_token
    await stream.close()
    await db.posts.insert_one({"_id": 1})
    resumed = await db.watch(resume_after=token, max_await_time_ms=100)
    [event] = await take(resumed, 1)
    assert event["documentKey"] == {"_id": 1}
    await resumed.close()


# -- 5. resume options -------------------------------------------------------------------------------------

async def test_resume_after_and_start_after_are_exclusive(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    stream = await db.watch(max_await_time_ms=100)
    for i in range(3):
        await db.posts.insert_one({"_id": i})
    events = await take(stream, 3)
    await stream.close()
    for option in ("resume_after", "start_after"):
        resumed = await db.watch(**{option: events[0]["_id"]}, max_await_time_ms=100)
        again = await take(resumed, 2)
        assert [e["documentKey"]["_id"] for e in again] == [1, 2]
        assert [e["_id"] for e in again] == [e["_id"] for e in events[1:]]
        await resumed.close()


async def test_start_at_operation_time_is_inclusive(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    stream = await db.watch(max_await_time_ms=100)
    for i in range(3):
        await db.posts.insert_one({"_id": i})
    events = await take(stream, 3)
    await stream.close()
    resumed = await db.watch(start_at_operation_time=events[1]["clusterTime"], max_await_time_ms=100)
    again = await take(resumed, 2)
    assert [e["documentKey"]["_id"] for e in again] == [1, 2]
    await resumed.close()


async def test_only_one_resume_option(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    stream = await db.watch(max_await_time_ms=100)
    await db.posts.insert_one({"_id": 1})
    [event] = await take(stream, 1)
    await stream.close()
    both = {"resumeAfter": event["_id"], "startAtOperationTime": event["clusterTime"]}
    with pytest.raises(OperationFailure):  # the driver never sends both; the server refuses them
        await db.command({"aggregate": 1, "pipeline": [{"$changeStream": both}], "cursor": {}})


async def test_after_invalidate_start_after_works_and_resume_after_is_260(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    await db.posts.insert_one({"_id": 1})
    stream = await db.posts.watch(max_await_time_ms=100)
    await db.posts.drop()
    drop, invalidate = await take(stream, 2)
    assert (drop["operationType"], invalidate["operationType"]) == ("drop", "invalidate")
    assert set(invalidate) == {"_id", "operationType", "clusterTime", "wallTime"}
    assert not stream.alive
    with pytest.raises(OperationFailure) as info:
        await db.posts.watch(resume_after=invalidate["_id"])
    assert info.value.code == 260
    await db.posts.insert_one({"_id": 2})
    restarted = await db.posts.watch(start_after=invalidate["_id"], max_await_time_ms=100)
    [event] = await take(restarted, 1)
    assert event["operationType"] == "insert" and event["documentKey"] == {"_id": 2}
    await restarted.close()


# -- 6. a bounded oplog: 286 and 280 -------------------------------------------------------------------------

async def test_resume_point_older_than_the_oplog_is_286(mongo: Mongo, db_name: str) -> None:
    from realtime.standin import StandIn

    mongo.need_standin()
    small = StandIn(oplog_max_entries=10)
    small.start()
    client: Client = AsyncMongoClient(small.uri)
    try:
        db = client[db_name]
        stream = await db.watch(max_await_time_ms=100)
        await db.posts.insert_one({"_id": 0})
        [first] = await take(stream, 1)
        await stream.close()
        for i in range(1, 30):
            await db.posts.insert_one({"_id": i})
        for kwargs in ({"resume_after": first["_id"]}, {"start_after": first["_id"]},
                       {"start_at_operation_time": first["clusterTime"]}):
            with pytest.raises(OperationFailure) as info:
                await db.watch(**kwargs)
            assert info.value.code == 286
            assert info.value.has_error_label("NonResumableChangeStreamError")
    finally:
        await client.close()
        small.stop()


async def test_oplog_bounded_by_bytes(mongo: Mongo, db_name: str) -> None:
    from realtime.standin import StandIn

    mongo.need_standin()
    small = StandIn(oplog_max_bytes=20_000)
    small.start()
    client: Client = AsyncMongoClient(small.uri)
    try:
        db = client[db_name]
        stream = await db.watch(max_await_time_ms=100)
        await db.posts.insert_one({"_id": 0, "body": "x" * 5000})
        [first] = await take(stream, 1)
        for i in range(1, 4):
            await db.posts.insert_one({"_id": i, "body": "x" * 5000})
        await take(stream, 3)
        await stream.close()
        assert small.oplog.size_bytes <= 20_000
        with pytest.raises(OperationFailure) as info:
            await db.watch(resume_after=first["_id"])
        assert info.value.code == 286
    finally:
        await client.close()
        small.stop()


async def test_truncation_under_a_live_cursor_is_286(mongo: Mongo, db_name: str) -> None:
    standin = mongo.need_standin()
    db = AsyncMongoClient(standin.uri)[db_name]
    try:
        stream = await db.watch(max_await_time_ms=100)
        await db.posts.insert_one({"_id": 1})
        [event] = await take(stream, 1)
        await stream.close()
        standin.truncate_oplog()
        with pytest.raises(OperationFailure) as info:
            await db.watch(resume_after=event["_id"])
        assert info.value.code == 286
    finally:
        await db.client.close()


async def test_unknown_token_inside_the_window_is_280(mongo: Mongo, aclient: Client, db_name: str) -> None:
    mongo.need_standin()
    db = aclient[db_name]
    stream = await db.watch(max_await_time_ms=100)
    await db.posts.insert_one({"_id": 1})
    await db.posts.insert_one({"_id": 2})
    first, _ = await take(stream, 2)
    await stream.close()
    data = first["_id"]["_data"]
    forged = {"_data": data[:34] + "0" * (len(data) - 36) + "04"}  # same time, another event identity
    with pytest.raises(OperationFailure) as info:
        await db.watch(resume_after=forged)
    assert info.value.code == 280
    assert info.value.has_error_label("NonResumableChangeStreamError")


# -- 7. drop, rename, dropDatabase at each level -----------------------------------------------------------

async def test_drop_invalidates_only_collection_streams(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    await db.posts.insert_one({"_id": 1})
    coll_stream = await db.posts.watch(max_await_time_ms=100)
    db_stream = await db.watch(max_await_time_ms=100)
    await db.posts.drop()
    await db.likes.insert_one({"_id": 9})
    assert ops(await take(coll_stream, 2)) == ["drop", "invalidate"]
    assert not coll_stream.alive
    drop, insert = await take(db_stream, 2)
    assert drop["operationType"] == "drop" and drop["ns"] == {"db": db_name, "coll": "posts"}
    assert insert["operationType"] == "insert"
    assert db_stream.alive
    await db_stream.close()


async def test_rename_event_and_invalidation(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    await db.posts.insert_one({"_id": 1})
    old_stream = await db.posts.watch(max_await_time_ms=100)
    new_stream = await db.articles.watch(max_await_time_ms=100)
    db_stream = await db.watch(max_await_time_ms=100)
    await db.posts.rename("articles")
    await db.articles.insert_one({"_id": 2})
    for stream in (old_stream, new_stream):
        rename, invalidate = await take(stream, 2)
        assert (rename["operationType"], invalidate["operationType"]) == ("rename", "invalidate")
        assert rename["ns"] == {"db": db_name, "coll": "posts"}
        assert rename["to"] == {"db": db_name, "coll": "articles"}
    rename, insert = await take(db_stream, 2)
    assert rename["operationType"] == "rename" and insert["ns"]["coll"] == "articles"
    assert db_stream.alive
    await db_stream.close()
    assert [d async for d in db.articles.find({}, {"_id": 1})] == [{"_id": 1}, {"_id": 2}]


async def test_drop_database_at_each_level(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    await db.posts.insert_one({"_id": 1})
    await db.likes.insert_one({"_id": 1})
    coll_stream = await db.posts.watch(max_await_time_ms=100)
    db_stream = await db.watch(max_await_time_ms=100)
    cluster_stream = await aclient.watch(max_await_time_ms=100)
    await aclient.drop_database(db_name)
    assert ops(await take(coll_stream, 2)) == ["drop", "invalidate"]
    events = await take(db_stream, 4)
    assert ops(events) == ["drop", "drop", "dropDatabase", "invalidate"]
    assert sorted(e["ns"]["coll"] for e in events[:2]) == ["likes", "posts"]
    assert events[2]["ns"] == {"db": db_name}
    assert not db_stream.alive
    mine = [e for e in await take_until(cluster_stream, lambda e: e["operationType"] == "dropDatabase")
            if e.get("ns", {}).get("db") == db_name]
    assert ops(mine) == ["drop", "drop", "dropDatabase"]
    assert cluster_stream.alive
    await cluster_stream.close()


# -- 8. faults: hang-ups, resumable and non-resumable errors, stalls ---------------------------------------

async def fail_command(client: Client, commands: list[str], **data: Any) -> None:
    await client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1},
                                "data": {"failCommands": commands, **data}})


async def test_hang_up_on_get_more_resumes_without_loss(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    stream = await db.watch(max_await_time_ms=100)
    await db.posts.insert_one({"_id": 1})
    await take(stream, 1)
    await fail_command(aclient, ["getMore"], closeConnection=True)
    await db.posts.insert_one({"_id": 2})
    await db.posts.insert_one({"_id": 3})
    events = []
    for _ in range(int(TIMEOUT * 10)):
        try:
            event = await stream.try_next()
        except Exception as exc:  # the network error may surface once before the resume succeeds
            assert stream.alive, f"stream closed on {exc!r}"
            continue
        if event is not None:
            events.append(event)
        if len(events) == 2:
            break
    assert [e["documentKey"]["_id"] for e in events] == [2, 3]
    await stream.close()


async def test_labelled_error_resumes_and_unlabelled_error_raises(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    stream = await db.watch(max_await_time_ms=100)
    await fail_command(aclient, ["getMore"], errorCode=262, errorLabels=["ResumableChangeStreamError"])
    await db.posts.insert_one({"_id": 1})
    [event] = await take(stream, 1)
    assert event["documentKey"] == {"_id": 1}
    await fail_command(aclient, ["getMore"], errorCode=2, errorLabels=[])
    with pytest.raises(OperationFailure) as info:
        await take(stream, 1)
    assert info.value.code == 2
    assert not stream.alive


async def test_server_adds_the_resumable_label_to_resumable_codes(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    stream = await db.watch(max_await_time_ms=100)
    await fail_command(aclient, ["getMore"], errorCode=91)  # ShutdownInProgress, no labels given
    await db.posts.insert_one({"_id": 1})
    [event] = await take(stream, 1)
    assert event["documentKey"] == {"_id": 1}
    await stream.close()


async def test_bare_cursor_not_found_is_resumed(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    stream = await db.watch(max_await_time_ms=100)
    await fail_command(aclient, ["getMore"], errorCode=43, errorLabels=[])
    await db.posts.insert_one({"_id": 1})
    [event] = await take(stream, 1)
    assert event["documentKey"] == {"_id": 1}
    await stream.close()


@pytest.mark.parametrize("code", [286, 280, 260, 47])
async def test_non_resumable_codes_close_the_stream(aclient: Client, db_name: str, code: int) -> None:
    db = aclient[db_name]
    stream = await db.watch(max_await_time_ms=100)
    labels = ["NonResumableChangeStreamError"] if code in (280, 286) else []
    await fail_command(aclient, ["getMore"], errorCode=code, errorLabels=labels)
    with pytest.raises(OperationFailure) as info:
        await take(stream, 1)
    assert info.value.code == code
    assert not stream.alive


async def test_blocked_command_is_answered_late_not_lost(aclient: Client, db_name: str) -> None:
    db = aclient[db_name]
    await fail_command(aclient, ["insert"], blockConnection=True, blockTimeMS=300)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await db.posts.insert_one({"_id": 1})
    assert loop.time() - started >= 0.25
    assert await db.posts.count_documents({}) == 1


async def test_pause_stalls_every_command(mongo: Mongo, db_name: str) -> None:
    standin = mongo.need_standin()
    client: Client = AsyncMongoClient(standin.uri)
    try:
        await client.admin.command("ping")
        standin.pause(0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client[db_name].posts.insert_one({"_id": 1})
        assert loop.time() - started >= 0.25
    finally:
        await client.close()
