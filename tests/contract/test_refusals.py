"""What MongoDB 7.0 refuses, the stand-in refuses: never more lenient than the server (issue 14, item 1).

Each test states what a real server answers; with ``MONGODB_URI`` set the same tests run against one. The few
that pin the stand-in's own "not supported" answer skip against a real server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure, WriteConcernError, WriteError
from pymongo.write_concern import WriteConcern

from tests.conftest import Mongo

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]


@pytest.fixture
def db(client: MongoClient[Doc], db_name: str) -> Iterator[Database[Doc]]:
    yield client[db_name]
    client.drop_database(db_name)


@pytest.fixture
def coll(db: Database[Doc]) -> Collection[Doc]:
    return db["items"]


# -- write concerns a one-member replica set cannot meet --------------------------------------------------------
@pytest.mark.parametrize(("w", "code"), [(50, 100), (2, 100), ("noSuchTag", 79)])
def test_an_unsatisfiable_write_concern_is_a_write_concern_error(coll: Collection[Doc], w: Any, code: int,
                                                                 mongo: Mongo) -> None:
    """Pins: w: 50, w: 2 on one member and an unknown tag used to succeed silently."""
    if mongo.is_real and w == 2:
        pytest.skip("a real replica set may have two members")
    with pytest.raises(WriteConcernError) as info:
        coll.with_options(write_concern=WriteConcern(w=w)).insert_one({"_id": 1})
    assert info.value.code == code
    # The server applies the write before it finds it cannot wait for w: the document is there.
    assert coll.find_one({"_id": 1}) == {"_id": 1}


def test_majority_and_one_are_met(coll: Collection[Doc]) -> None:
    for w in (1, "majority"):
        coll.with_options(write_concern=WriteConcern(w=w)).insert_one({"w": w})
    assert coll.count_documents({}) == 2


# -- filters are parsed whole, whatever the collection holds --------------------------------------------------
@pytest.mark.parametrize("query", [{"x": {"$bad": 1}}, {"$bad": 1}, {"$or": []}, {"x": {"$in": 5}},
                                   {"$and": [1]}, {"x": {"$gt": 1, "$nope": 2}}])
def test_a_malformed_filter_fails_on_an_empty_collection(db: Database[Doc], query: Doc) -> None:
    """Pins: {x: {$bad: 1}} returned [] on an empty collection instead of BadValue."""
    with pytest.raises(OperationFailure) as info:
        list(db["empty"].find(query))
    assert info.value.code == 2
    with pytest.raises(OperationFailure) as info:
        db["empty"].count_documents(query)
    assert info.value.code == 2


def test_a_malformed_filter_fails_an_update_that_matches_nothing(coll: Collection[Doc]) -> None:
    with pytest.raises(WriteError) as info:
        coll.update_many({"x": {"$bad": 1}}, {"$set": {"y": 1}})
    assert info.value.code == 2


# -- _id and field names ---------------------------------------------------------------------------------------
def test_a_dollar_prefixed_field_inside_id_is_refused(coll: Collection[Doc]) -> None:
    """Pins: _id: {$a: 1} was stored."""
    with pytest.raises(WriteError) as info:
        coll.insert_one({"_id": {"$a": 1}})
    assert info.value.code == 52
    assert coll.count_documents({}) == 0


def test_an_array_id_is_refused(coll: Collection[Doc]) -> None:
    with pytest.raises(WriteError) as info:
        coll.insert_one({"_id": [1, 2]})
    assert info.value.code == 53


def test_a_top_level_dollar_prefixed_field_is_stored(coll: Collection[Doc]) -> None:
    """Pins: a top-level $-prefixed field (allowed since MongoDB 5.0) was refused."""
    coll.insert_one({"_id": 1, "$a": 1, "b": {"$c": 2}})
    assert coll.find_one({"_id": 1}) == {"_id": 1, "$a": 1, "b": {"$c": 2}}


# -- options are honoured or refused, never ignored -------------------------------------------------------------
def test_a_simple_collation_is_accepted(coll: Collection[Doc]) -> None:
    coll.insert_many([{"x": "b"}, {"x": "a"}])
    assert coll.distinct("x", collation={"locale": "simple"}) == ["a", "b"]


def test_a_language_collation_is_refused_by_the_stand_in(mongo: Mongo, coll: Collection[Doc]) -> None:
    """Pins: collation on distinct was silently ignored."""
    mongo.need_standin()
    coll.insert_many([{"x": "b"}, {"x": "B"}])
    for run in (lambda: coll.distinct("x", collation={"locale": "en", "strength": 2}),
                lambda: list(coll.find({}, collation={"locale": "fr"})),
                lambda: coll.count_documents({}, collation={"locale": "fr"})):
        with pytest.raises(OperationFailure, match="not supported by the realtime MongoDB stand-in"):
            run()


def test_distinct_values_come_in_bson_order(coll: Collection[Doc]) -> None:
    """Pins: distinct answered in insertion order; the server gathers the values in an ordered set."""
    coll.insert_many([{"x": 33}, {"x": "s"}, {"x": 11}, {"x": 22.5}, {"x": 11}])
    assert coll.distinct("x") == [11, 22.5, 33, "s"]


def test_a_hint_naming_no_index_fails(coll: Collection[Doc]) -> None:
    coll.insert_one({"x": 1})
    with pytest.raises(OperationFailure) as info:
        list(coll.find({}, hint="no_such_index"))
    assert info.value.code == 2
    assert [d["x"] for d in coll.find({}, hint=[("_id", 1)])] == [1]


def test_a_validator_is_refused_by_the_stand_in(mongo: Mongo, db: Database[Doc]) -> None:
    """Pins: create with a validator succeeded and the validator was never enforced."""
    mongo.need_standin()
    with pytest.raises(OperationFailure, match="not supported by the realtime MongoDB stand-in"):
        db.create_collection("checked", validator={"x": {"$gt": 0}})
    assert "checked" not in db.list_collection_names()


def test_a_partial_filter_that_is_not_an_object_is_refused(coll: Collection[Doc]) -> None:
    """partialFilterExpression must be an object (the argument checks of the earlier change refuse 5)."""
    with pytest.raises(OperationFailure) as info:
        coll.create_index("x", partialFilterExpression=5)
    assert info.value.code == 14


# -- a collection created in a transaction exists for others only once it commits -------------------------------
def test_a_collection_created_in_a_transaction_is_invisible_until_the_commit(client: MongoClient[Doc],
                                                                              db: Database[Doc]) -> None:
    """Pins: a collection created in a transaction was visible before the commit, and stayed after an abort."""
    db["other"].insert_one({"_id": 0})  # the database exists
    with client.start_session() as session:
        session.start_transaction()
        db["fresh"].insert_one({"_id": 1}, session=session)
        assert db["fresh"].find_one({}, session=session) == {"_id": 1}
        assert "fresh" not in db.list_collection_names()
        session.abort_transaction()
    assert "fresh" not in db.list_collection_names()
    with client.start_session() as session:
        session.start_transaction()
        db.create_collection("made", session=session, check_exists=False)
        assert "made" not in db.list_collection_names()
        session.commit_transaction()
    assert "made" in db.list_collection_names()


def test_indexes_on_an_existing_collection_cannot_be_built_in_a_transaction(client: MongoClient[Doc],
                                                                            coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1})
    with client.start_session() as session:
        session.start_transaction()
        with pytest.raises(OperationFailure) as info:
            coll.create_index("x", session=session)
        assert info.value.code == 263


def test_a_duplicate_key_made_by_find_one_and_update_names_the_index(coll: Collection[Doc]) -> None:
    """Pins: the findAndModify duplicate-key error lacked keyPattern and keyValue."""
    coll.create_index("email", unique=True)
    coll.insert_many([{"_id": 1, "email": "a"}, {"_id": 2, "email": "b"}])
    with pytest.raises(OperationFailure) as info:
        coll.find_one_and_update({"_id": 2}, {"$set": {"email": "a"}})
    assert info.value.code == 11000
    assert info.value.details is not None
    assert info.value.details["keyPattern"] == {"email": 1}
    assert info.value.details["keyValue"] == {"email": "a"}
    assert coll.find_one({"_id": 2}) == {"_id": 2, "email": "b"}


def test_a_duplicate_key_made_by_an_upsert_names_the_index(coll: Collection[Doc]) -> None:
    coll.create_index("x", unique=True)
    coll.insert_one({"_id": 1, "x": "foo"})
    with pytest.raises(OperationFailure) as info:
        coll.find_one_and_update({"_id": 2}, {"$set": {"x": "foo"}}, upsert=True)
    assert info.value.details is not None
    assert (info.value.details["keyPattern"], info.value.details["keyValue"]) == ({"x": 1}, {"x": "foo"})


def test_an_update_statement_with_sort_is_refused_whole(coll: Collection[Doc]) -> None:
    """Sort in an update statement is MongoDB 8.0's: 7.0's parser refuses the command (40415), it is no write error."""
    coll.insert_one({"_id": 1})
    with pytest.raises(OperationFailure) as info:
        statement = {"q": {}, "u": {"$set": {"a": 1}}, "sort": {"_id": 1}}
        coll.database.command({"update": coll.name, "updates": [statement]})
    assert info.value.code == 40415


# -- limits: nesting depth, namespace lengths, system collections ---------------------------------------------------
def nested(levels: int) -> Doc:
    doc: Doc = {}
    for _ in range(levels):
        doc = {"a": doc}
    return doc


def test_a_document_nested_too_deep_is_refused(coll: Collection[Doc]) -> None:
    """Pins: 120 levels of sub-documents were stored (MongoDB: Overflow, 15, past 100 levels)."""
    with pytest.raises(WriteError) as info:
        coll.insert_one(nested(120))
    assert info.value.code == 15
    coll.insert_one(nested(50))
    assert coll.count_documents({}) == 1


def test_namespaces_too_long_are_refused(client: MongoClient[Doc], db: Database[Doc]) -> None:
    """Pins: a 300-byte collection name and a 70-byte database name were accepted (InvalidNamespace, 73)."""
    with pytest.raises(OperationFailure) as info:
        db["x" * 300].insert_one({})
    assert info.value.code == 73
    with pytest.raises(OperationFailure) as info:
        client["d" * 70]["x"].insert_one({})
    assert info.value.code == 73


@pytest.mark.parametrize("write", ["insert", "update", "delete"])
def test_system_collections_are_not_written_by_clients(db: Database[Doc], write: str) -> None:
    """Pins: an insert into system.foo was stored."""
    target = db["system.foo"]
    with pytest.raises(OperationFailure) as info:
        {"insert": lambda: target.insert_one({"_id": 1}),
         "update": lambda: target.update_one({"_id": 1}, {"$set": {"x": 1}}, upsert=True),
         "delete": lambda: target.delete_one({"_id": 1})}[write]()
    assert info.value.code == 73
