"""showExpandedEvents: DDL events, collectionUUID, operationDescription and disambiguatedPaths, as MongoDB 7.0 shows
them to a stream that asks (and only then); and the read concerns a change stream accepts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from bson import Binary
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure
from pymongo.read_concern import ReadConcern

from tests.contract.helpers import ops, quiet, take

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]


@pytest.fixture
async def db(aclient: AsyncMongoClient[Doc], db_name: str) -> AsyncIterator[AsyncDatabase[Doc]]:
    yield aclient[db_name]
    await aclient.drop_database(db_name)


async def test_an_expanded_stream_shows_ddl_events(db: AsyncDatabase[Doc]) -> None:
    """Pins: showExpandedEvents was refused as not supported."""
    stream = await db.watch(show_expanded_events=True, max_await_time_ms=100)
    await db.create_collection("c", check_exists=False)
    await db.c.insert_one({"_id": 1})
    await db.c.create_index("x", name="x_1")
    await db.command({"collMod": "c"})
    await db.c.drop_index("x_1")
    await db.c.rename("d")
    events = await take(stream, 6)
    assert ops(events) == ["create", "insert", "createIndexes", "modify", "dropIndexes", "rename"]
    assert all(isinstance(e["collectionUUID"], Binary) for e in events)
    assert len({e["collectionUUID"] for e in events}) == 1
    assert events[2]["operationDescription"]["indexes"][0]["name"] == "x_1"
    assert events[5]["operationDescription"]["to"] == {"db": db.name, "coll": "d"}
    await stream.close()


async def test_a_plain_stream_shows_none_of_it(db: AsyncDatabase[Doc]) -> None:
    stream = await db.watch(max_await_time_ms=100)
    await db.create_collection("c", check_exists=False)
    await db.c.create_index("x")
    await db.c.insert_one({"_id": 1})
    [event] = await take(stream, 1)
    assert event["operationType"] == "insert"
    assert "collectionUUID" not in event
    assert await quiet(stream) == []
    await stream.close()


async def test_disambiguated_paths_tell_indices_from_numeric_field_names(db: AsyncDatabase[Doc]) -> None:
    await db.c.insert_one({"_id": 1, "a": {"1": 1}, "b": [{"1": 1}], "c": 1})
    stream = await db.c.watch(show_expanded_events=True, max_await_time_ms=100)
    plain = await db.c.watch(max_await_time_ms=100)
    await db.c.update_one({"_id": 1}, {"$set": {"a.1": 2, "b.0.1": 2, "c": 2}})
    [event] = await take(stream, 1)
    assert event["updateDescription"]["disambiguatedPaths"] == {"a.1": ["a", "1"], "b.0.1": ["b", 0, "1"]}
    [event] = await take(plain, 1)
    assert "disambiguatedPaths" not in event["updateDescription"]
    await stream.close()
    await plain.close()


async def test_a_change_stream_takes_only_majority_read_concern(db: AsyncDatabase[Doc]) -> None:
    """Pins: a change stream with readConcern local was opened (the server refuses it)."""
    with pytest.raises(OperationFailure):
        await db.get_collection("c", read_concern=ReadConcern("local")).watch()
    stream = await db.get_collection("c", read_concern=ReadConcern("majority")).watch()
    await stream.close()
