"""``maxTimeMS`` bounds a read as on MongoDB 7.0: past it, ``MaxTimeMSExpired`` (50, "operation exceeded time
limit"), for the command and for the getMores of its cursor, which spend what the command left.

Made deterministic the way the drivers' own tests make it, with the server's ``maxTimeAlwaysTimeOut`` fail point
(every operation that has a time limit exceeds it at once); and, for the limit itself, with a read that scans a
collection far bigger than its 1 ms allow (a regex that no document matches, on no index).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from bson import Int64
from pymongo import IndexModel, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import CursorNotFound, ExecutionTimeout, OperationFailure

from tests.conftest import Mongo

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]
SLOW = {"s": {"$regex": "no document holds this"}}  # scans every document


@pytest.fixture
def db(client: MongoClient[Doc], db_name: str) -> Iterator[Database[Doc]]:
    client[db_name]["items"].insert_many([{"_id": i, "s": f"item {i}"} for i in range(10)])
    yield client[db_name]
    client.drop_database(db_name)


@pytest.fixture
def always_time_out(client: MongoClient[Doc]) -> Iterator[None]:
    client.admin.command({"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "alwaysOn"})
    try:
        yield
    finally:
        client.admin.command({"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "off"})


@pytest.fixture(scope="module")
def big(mongo: Mongo) -> Iterator[Collection[Doc]]:
    """20,000 documents: scanning them all takes far longer than 1 ms, on a server as on the stand-in."""
    client: MongoClient[Doc] = MongoClient(mongo.uri)
    coll = client["t_max_time_big"]["big"]
    coll.insert_many([{"_id": i, "s": f"value {i} of many"} for i in range(20_000)])
    yield coll
    client.drop_database("t_max_time_big")
    client.close()


def timed_out(action: Any) -> ExecutionTimeout:
    with pytest.raises(ExecutionTimeout) as info:
        action()
    assert info.value.code == 50
    assert info.value.details is not None
    assert info.value.details["errmsg"] == "operation exceeded time limit"
    assert info.value.details["codeName"] == "MaxTimeMSExpired"
    return info.value


READS = {
    "find": lambda c: c.find({}).max_time_ms(60_000).to_list(),
    "find_one": lambda c: c.find_one({}, max_time_ms=60_000),
    "aggregate": lambda c: c.aggregate([{"$match": {}}], maxTimeMS=60_000).to_list(),
    "count": lambda c: c.database.command({"count": c.name, "maxTimeMS": 60_000}),
    "count_documents": lambda c: c.count_documents({}, maxTimeMS=60_000),
    "distinct": lambda c: c.distinct("s", maxTimeMS=60_000),
    "create_index": lambda c: c.create_index("s", maxTimeMS=60_000),
    "create_indexes": lambda c: c.create_indexes([IndexModel("s")], maxTimeMS=60_000),
    "drop_indexes": lambda c: c.drop_indexes(maxTimeMS=60_000),
    "list_indexes": lambda c: c.database.command({"listIndexes": c.name, "maxTimeMS": 60_000}),
    "insert": lambda c: c.database.command({"insert": c.name, "documents": [{"_id": 99}], "maxTimeMS": 60_000}),
}


@pytest.mark.parametrize("name", list(READS))
def test_max_time_always_time_out_fails_what_has_a_time_limit(db: Database[Doc], always_time_out: None,
                                                              name: str) -> None:
    """Pins: the stand-in refused the fail point as unknown, and never answered 50."""
    timed_out(lambda: READS[name](db["items"]))
    assert db["items"].find_one({"_id": 99}) is None


def test_max_time_always_time_out_spares_what_has_no_time_limit(db: Database[Doc], always_time_out: None) -> None:
    assert len(db["items"].find({}).to_list()) == 10
    assert db["items"].count_documents({}) == 10
    assert db.command({"find": "items", "maxTimeMS": 0})["cursor"]["firstBatch"]  # 0: no limit


def test_a_get_more_spends_what_its_find_left(client: MongoClient[Doc], db: Database[Doc]) -> None:
    """Pins: a getMore on the cursor of a find with maxTimeMS was never timed out."""
    cursor = db["items"].find({}, batch_size=2).max_time_ms(60_000)
    assert next(cursor)["_id"] == 0
    client.admin.command({"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "alwaysOn"})
    try:
        timed_out(lambda: cursor.to_list())
    finally:
        client.admin.command({"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "off"})


def test_a_get_more_that_timed_out_has_ended_its_cursor(client: MongoClient[Doc], db: Database[Doc]) -> None:
    reply = db.command({"find": "items", "batchSize": 2, "maxTimeMS": 60_000})
    cursor_id = reply["cursor"]["id"]
    client.admin.command({"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": {"times": 1}})
    timed_out(lambda: db.command({"getMore": cursor_id, "collection": "items"}))
    with pytest.raises(CursorNotFound):
        db.command({"getMore": cursor_id, "collection": "items"})


def test_a_get_more_of_a_cursor_without_time_limit_is_not_timed_out(db: Database[Doc],
                                                                     always_time_out: None) -> None:
    cursor = db["items"].find({}, batch_size=2)
    assert [d["_id"] for d in cursor] == list(range(10))


def test_a_get_more_takes_no_time_limit_of_its_own_on_a_non_await_cursor(db: Database[Doc]) -> None:
    """Pins: the stand-in took it; the server answers BadValue (its limit is its find's)."""
    reply = db.command({"find": "items", "batchSize": 2})
    with pytest.raises(OperationFailure) as info:
        db.command({"getMore": reply["cursor"]["id"], "collection": "items", "maxTimeMS": Int64(1000)})
    assert info.value.code == 2
    assert info.value.details is not None
    assert info.value.details["errmsg"] == "cannot set maxTimeMS on getMore command for a non-awaitData cursor"


SLOW_READS = {
    "find": lambda c: c.find(SLOW).max_time_ms(1).to_list(),
    "aggregate": lambda c: c.aggregate([{"$match": SLOW}], maxTimeMS=1).to_list(),
    "count": lambda c: c.database.command({"count": c.name, "query": SLOW, "maxTimeMS": 1}),
    "distinct": lambda c: c.distinct("s", SLOW, maxTimeMS=1),
}


@pytest.mark.parametrize("name", list(SLOW_READS))
def test_a_read_that_runs_past_its_time_limit_fails(big: Collection[Doc], name: str) -> None:
    """Pins: a find, aggregate, count or distinct that ran longer than its maxTimeMS answered as if it had none."""
    timed_out(lambda: SLOW_READS[name](big))


def test_the_same_read_within_its_time_limit_answers(big: Collection[Doc]) -> None:
    assert big.find(SLOW).max_time_ms(600_000).to_list() == []
    assert big.count_documents({}, maxTimeMS=600_000) == 20_000
