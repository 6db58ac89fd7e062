"""Shapes of what the server answers (issue 14, item 5), as MongoDB 7.0 gives them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]


@pytest.fixture
def coll(client: MongoClient[Doc], db_name: str) -> Iterator[Collection[Doc]]:
    yield client[db_name]["items"]
    client.drop_database(db_name)


def test_project_of_a_dotted_path_makes_a_sub_document(coll: Collection[Doc]) -> None:
    """Pins: $project of a dotted path with a computed value made a field literally named with the dot."""
    coll.insert_one({"_id": 1, "a": {"b": 1, "c": 2}})
    [doc] = coll.aggregate([{"$project": {"x": "lit", "a.b": 1, "n.v": "db.coll"}}])
    assert doc == {"_id": 1, "x": "lit", "a": {"b": 1}, "n": {"v": "db.coll"}}


def test_a_change_stream_projection_of_a_dotted_path(coll: Collection[Doc]) -> None:
    with coll.watch([{"$project": {"operationType": "insert", "ns.viewOn": "db.coll"}}],
                    max_await_time_ms=100) as stream:
        coll.insert_one({"_id": 1})
        event = None
        for _ in range(50):
            event = stream.try_next()
            if event is not None:
                break
    assert event is not None
    assert {k: v for k, v in event.items() if k != "_id"} == {"operationType": "insert", "ns": {"viewOn": "db.coll"}}


def test_pipeline_style_updates(coll: Collection[Doc]) -> None:
    """Pins: an aggregation pipeline as the update was refused."""
    coll.insert_one({"_id": 1, "a": 1, "array": ["foo", {"a": "bar"}, 1, 2, 3]})
    with coll.watch(max_await_time_ms=100) as stream:
        result = coll.update_one({"_id": 1}, [{"$set": {"array": ["foo", {"a": "bar"}]}}, {"$unset": "a"}])
        assert result.modified_count == 1
        event = None
        for _ in range(50):
            event = stream.try_next()
            if event is not None:
                break
    assert event is not None and event["operationType"] == "update"
    assert event["updateDescription"]["removedFields"] == ["a"]
    assert event["updateDescription"]["truncatedArrays"] == [{"field": "array", "newSize": 2}]
    upserted = coll.update_one({"_id": 9, "k": "v"}, [{"$set": {"b": {"$concat": ["$k", "!"]}}}], upsert=True)
    assert upserted.upserted_id == 9
    assert coll.find_one({"_id": 9}) == {"_id": 9, "k": "v", "b": "v!"}


def test_a_pipeline_update_that_drops_id_keeps_the_documents(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "t": {"u": 1}})
    coll.update_one({"_id": 1}, [{"$replaceRoot": {"newRoot": "$t"}}, {"$addFields": {"foo": 1}}])
    assert coll.find_one({"_id": 1}) == {"_id": 1, "u": 1, "foo": 1}
