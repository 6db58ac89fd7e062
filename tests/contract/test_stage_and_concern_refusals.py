"""Aggregation stage arguments and write concerns MongoDB 7.0 refuses as it parses a command, before any document is
read: the stand-in refuses them with the same codes (it ran many of them, or answered an internal error).

Codes from mongodb/mongo: src/mongo/db/pipeline/document_source_{limit,skip,sample,group,unwind,sort,match,
add_fields}.cpp, src/mongo/db/query/projection_parser.cpp, src/mongo/db/write_concern_idl.cpp and
write_concern_options.cpp (FailedToParse 9).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]


@pytest.fixture
def db(client: MongoClient[Doc], db_name: str) -> Iterator[Database[Doc]]:
    yield client[db_name]
    client.drop_database(db_name)


@pytest.fixture
def coll(db: Database[Doc]) -> Collection[Doc]:
    db["items"].insert_many([{"_id": 1, "a": [1, 2]}, {"_id": 2, "a": []}])
    return db["items"]


@pytest.mark.parametrize(("stage", "code"), [
    ({"$limit": 0}, 15958), ({"$limit": -1}, 15958), ({"$limit": "a"}, 15957), ({"$limit": 1.5}, 2),
    ({"$skip": -1}, 15956), ({"$skip": "a"}, 15972),
    ({"$sample": {}}, 28749), ({"$sample": 1}, 28745), ({"$sample": {"size": "x"}}, 28746),
    ({"$sample": {"size": -1}}, 28747), ({"$sample": {"size": 1, "x": 1}}, 28748),
    ({"$group": {"n": {"$sum": 1}}}, 15955), ({"$group": 1}, 15947), ({"$group": {"_id": 1, "n": 1}}, 40234),
    ({"$group": {"_id": 1, "n": {"$bad": 1}}}, 15952), ({"$group": {"_id": 1, "a.b": {"$sum": 1}}}, 40235),
    ({"$unwind": "a"}, 28818), ({"$unwind": {"path": "a"}}, 28818), ({"$unwind": {}}, 28812),
    ({"$unwind": 5}, 15981), ({"$unwind": {"path": 5}}, 28808), ({"$unwind": {"path": "$a", "x": 1}}, 28811),
    ({"$sort": {"a": 0}}, 15975), ({"$sort": {"a": "x"}}, 15974), ({"$sort": {}}, 15976), ({"$sort": 1}, 15973),
    ({"$project": {"a": 1, "b": 0}}, 31254), ({"$project": {"b": 0, "a": 1}}, 31253), ({"$project": {}}, 51272),
    ({"$project": 1}, 15969), ({"$match": 1}, 15959), ({"$addFields": 1}, 40272), ({"$set": []}, 40272),
])
def test_a_malformed_stage_is_refused(coll: Collection[Doc], stage: Doc, code: int) -> None:
    """Pins: $limit: -1, $sort: {a: 0} and $addFields: 1 answered internal errors; $skip: -1 and $limit: 0 ran."""
    with pytest.raises(OperationFailure) as info:
        list(coll.aggregate([stage]))
    assert info.value.code == code, info.value.details


def test_well_formed_stages_still_run(coll: Collection[Doc]) -> None:
    pipeline = [{"$match": {}}, {"$unwind": {"path": "$a"}}, {"$project": {"_id": 0, "a": 1}}, {"$sort": {"a": -1}},
                {"$skip": 0}, {"$limit": 5}]
    assert list(coll.aggregate(pipeline)) == [{"a": 2}, {"a": 1}]
    grouped = list(coll.aggregate([{"$group": {"_id": None, "n": {"$sum": 1}}}]))
    assert grouped == [{"_id": None, "n": 2}]


@pytest.mark.parametrize(("concern", "code"), [
    ({"w": -1}, 9), ({"w": 51}, 9), ({"w": {}}, 9), ({"w": {"dc": "x"}}, 9), ({"w": [1]}, 9),
    ({"wtimeout": "x"}, 14), ({"j": "yes"}, 14), ({"foo": 1}, 9), ({"j": True, "fsync": True}, 9),
])
def test_a_malformed_write_concern_is_refused(db: Database[Doc], concern: Doc, code: int) -> None:
    """Pins: each of these was accepted and the write applied."""
    with pytest.raises(OperationFailure) as info:
        db.command({"insert": "wc", "documents": [{"_id": 1}], "writeConcern": concern})
    assert info.value.code == code, info.value.details
    assert db["wc"].count_documents({}) == 0


@pytest.mark.parametrize("concern", [{"w": "majority"}, {"w": 1, "j": True}, {"w": 0}, {"wtimeout": 100},
                                     {"fsync": True}, {}])
def test_a_well_formed_write_concern_is_met(db: Database[Doc], concern: Doc) -> None:
    db.command({"insert": "wc", "documents": [{"_id": 1}], "writeConcern": concern})
    assert db["wc"].count_documents({}) == 1
