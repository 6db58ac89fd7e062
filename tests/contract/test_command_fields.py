"""A field a command does not know is refused as MongoDB 7.0's IDL parser refuses it (40415); a known field of the
wrong type is TypeMismatch (14), whether the stand-in reads it or not; a command MongoDB parses leniently stays
lenient, and the generic arguments every command takes are accepted everywhere.

From mongodb/mongo: the strict parsers generated from src/mongo/db/query/find_command.idl,
src/mongo/db/ops/write_ops.idl, src/mongo/db/pipeline/aggregate_command.idl, ... and the generic arguments of
src/mongo/idl/generic_argument.idl. Raw commands through ``Database.command``, which adds what PyMongo adds to
every command ($db, lsid, $clusterTime).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from bson import Binary, Int64
from pymongo import MongoClient
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import OperationFailure

from tests.conftest import Mongo

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]


@pytest.fixture
def client(mongo: Mongo) -> Iterator[MongoClient[Doc]]:
    """A client of the test's own: the sessions its raw commands number are used by nothing else."""
    c: MongoClient[Doc] = MongoClient(mongo.uri, retryWrites=False)
    yield c
    c.close()


@pytest.fixture
def db(client: MongoClient[Doc], db_name: str) -> Iterator[Database[Doc]]:
    client[db_name]["items"].insert_one({"_id": 0, "x": 1})
    yield client[db_name]
    client.drop_database(db_name)


def refusal(db: Database[Doc], command: Doc) -> OperationFailure:
    with pytest.raises(OperationFailure) as info:
        db.command(command)
    return info.value


def refusal_in(db: Database[Doc], command: Doc, session: ClientSession) -> OperationFailure:
    """The error of a raw command on ``session`` (whose txnNumber and autocommit the command gives)."""
    with pytest.raises(OperationFailure) as info:
        db.command(command, session=session)
    return info.value


# One well-formed command of each kind MongoDB parses strictly, as its IDL declares it.
STRICT: list[Doc] = [
    {"find": "items", "filter": {}},
    {"count": "items"},
    {"distinct": "items", "key": "x"},
    {"aggregate": "items", "pipeline": [], "cursor": {}},
    {"insert": "items", "documents": [{"_id": 1}]},
    {"update": "items", "updates": [{"q": {"_id": 0}, "u": {"$set": {"y": 1}}}]},
    {"delete": "items", "deletes": [{"q": {"_id": 0}, "limit": 1}]},
    {"findAndModify": "items", "query": {"_id": 0}, "update": {"$set": {"y": 1}}},
    {"create": "made"},
    {"collMod": "items"},
    {"drop": "items"},
    {"dropDatabase": 1},
    {"listCollections": 1},
    {"listIndexes": "items"},
    {"createIndexes": "items", "indexes": [{"key": {"x": 1}, "name": "x_1"}]},
    {"dropIndexes": "items", "index": "*"},
    {"killCursors": "items", "cursors": [Int64(12345)]},
    {"getMore": Int64(12345), "collection": "items"},
]


@pytest.mark.parametrize("command", STRICT, ids=[next(iter(c)) for c in STRICT])
def test_an_unknown_field_is_refused_naming_it(db: Database[Doc], command: Doc) -> None:
    """Pins: {find: "items", foo: 1} ran, the field ignored, where MongoDB 7.0 answers 40415."""
    name = next(iter(command))
    error = refusal(db, {**command, "foo": 1})
    assert error.code == 40415
    assert error.details is not None and error.details["errmsg"] == f"BSON field '{name}.foo' is an unknown field."
    assert db["items"].find_one({"_id": 0}) == {"_id": 0, "x": 1}  # nothing ran
    assert db["items"].find_one({"_id": 1}) is None


@pytest.mark.parametrize("command", [{"listDatabases": 1, "foo": 1}, {"renameCollection": "x.items", "to": "x.b",
                                                                    "foo": 1}, {"endSessions": [], "foo": 1}])
def test_an_unknown_field_of_an_admin_command_is_refused(client: MongoClient[Doc], command: Doc) -> None:
    name = next(iter(command))
    error = refusal(client.admin, command)
    assert (error.code, error.details and error.details["errmsg"]) == (
        40415, f"BSON field '{name}.foo' is an unknown field.")


def test_an_unknown_field_of_a_transaction_command_is_refused(client: MongoClient[Doc], db: Database[Doc]) -> None:
    with client.start_session() as session:
        txn = {"txnNumber": Int64(1), "autocommit": False}
        db.command({"insert": "items", "documents": [{"_id": 2}], "startTransaction": True, **txn}, session=session)
        error = refusal_in(client.admin, {"commitTransaction": 1, "foo": 1, **txn}, session)
        assert (error.code, error.details and error.details["errmsg"]) == (
            40415, "BSON field 'commitTransaction.foo' is an unknown field.")
        client.admin.command({"abortTransaction": 1, **txn}, session=session)
    assert db["items"].find_one({"_id": 2}) is None


@pytest.mark.parametrize(("command", "path"), [
    ({"update": "items", "updates": [{"q": {}, "u": {"$set": {"y": 1}}, "foo": 1}]}, "update.updates.foo"),
    ({"update": "items", "updates": [{"q": {}, "u": {"$set": {"y": 1}}, "sort": {"x": 1}}]}, "update.updates.sort"),
    ({"delete": "items", "deletes": [{"q": {}, "limit": 0, "foo": 1}]}, "delete.deletes.foo"),
])
def test_an_unknown_field_of_a_write_statement_is_refused(db: Database[Doc], command: Doc, path: str) -> None:
    """An update or delete statement is a strict IDL struct too (UpdateOpEntry, DeleteOpEntry)."""
    error = refusal(db, command)
    assert (error.code, error.details and error.details["errmsg"]) == (
        40415, f"BSON field '{path}' is an unknown field.")
    assert db["items"].find_one({"_id": 0}) == {"_id": 0, "x": 1}


def test_the_generic_arguments_are_accepted_by_a_strict_command(db: Database[Doc]) -> None:
    """What drivers and tools add to any command: none of it is an unknown field."""
    reply = db.command({"find": "items", "filter": {}, "comment": {"why": "test"}, "maxTimeMS": 5000,
                        "readConcern": {"level": "local"}, "apiVersion": "1", "apiStrict": False,
                        "$readPreference": {"mode": "primary"}, "$audit": {}, "$client": {},
                        "clientOperationKey": Binary(uuid.uuid4().bytes, 4)})
    assert reply["cursor"]["firstBatch"] == [{"_id": 0, "x": 1}]
    reply = db.command({"insert": "items", "documents": [{"_id": 3}], "comment": "c", "writeConcern": {"w": 1}})
    assert reply["n"] == 1


@pytest.mark.parametrize("command", [{"ping": 1, "foo": 1}, {"buildInfo": 1, "foo": 1},
                                     {"hello": 1, "backpressure": "2", "foo": 1}, {"isMaster": 1, "foo": 1},
                                     {"serverStatus": 1, "foo": 1}, {"killAllSessions": [], "foo": 1}])
def test_a_command_mongodb_parses_leniently_ignores_unknown_fields(client: MongoClient[Doc], command: Doc) -> None:
    """Not every command is strict: the handshake carries fields newer servers read (PyMongo 4.20's backpressure),
    and a 7.0 server ignores them."""
    assert client.admin.command(command)["ok"] == 1


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("limit", "x", "expected types '[long, int, decimal, double]'"),
    ("noCursorTimeout", "yes", "expected types '[bool, long, int, decimal, double]'"),
    ("allowPartialResults", [], "expected types '[bool, long, int, decimal, double]'"),
    ("term", "1", "expected types '[long, int, decimal, double]'"),
    ("readOnce", {}, "expected types '[bool, long, int, decimal, double]'"),
])
def test_a_known_field_of_the_wrong_type_is_type_mismatch(db: Database[Doc], field: str, value: Any,
                                                          expected: str) -> None:
    """Pins: fields the stand-in does not read (noCursorTimeout, term, ...) were taken whatever their type."""
    error = refusal(db, {"find": "items", field: value})
    assert error.code == 14
    assert error.details is not None
    kind = {str: "string", list: "array", dict: "object"}[type(value)]
    assert error.details["errmsg"] == f"BSON field 'find.{field}' is the wrong type '{kind}', {expected}"


@pytest.mark.parametrize(("command", "option"), [
    ({"find": "items", "returnKey": True}, "the find option 'returnKey'"),
    ({"find": "items", "showRecordId": True}, "the find option 'showRecordId'"),
    ({"find": "items", "collectionUUID": Binary(uuid.uuid4().bytes, 4)}, "the find option 'collectionUUID'"),
    ({"aggregate": "items", "pipeline": [], "cursor": {}, "needsMerge": True}, "the aggregate option 'needsMerge'"),
    ({"update": "items", "updates": [{"q": {}, "u": {"$set": {"y": 1}}, "upsertSupplied": True}]},
     "the update option 'updates.upsertSupplied'"),
])
def test_a_known_field_that_would_change_the_result_is_not_ignored(mongo: Mongo, db: Database[Doc], command: Doc,
                                                                   option: str) -> None:
    """A field MongoDB knows and the stand-in does not implement is refused as not supported, never ignored."""
    if mongo.is_real:
        pytest.skip("pins the stand-in's own answer for what it does not implement")
    error = refusal(db, command)
    assert error.code == 2
    assert error.details is not None
    assert error.details["errmsg"] == f"{option} is not supported by the realtime MongoDB stand-in"


def test_a_field_that_asks_for_nothing_is_accepted(db: Database[Doc]) -> None:
    reply = db.command({"find": "items", "returnKey": False, "showRecordId": False, "tailable": False})
    assert reply["cursor"]["firstBatch"] == [{"_id": 0, "x": 1}]


@pytest.mark.parametrize("command", [{"find": "items"}, {"count": "items"}, {"distinct": "items", "key": "x"},
                                     {"aggregate": "items", "pipeline": [], "cursor": {}}, {"listIndexes": "items"}])
def test_a_read_takes_no_write_concern(db: Database[Doc], command: Doc) -> None:
    """Pins: a writeConcern on a read was ignored; MongoDB answers InvalidOptions."""
    error = refusal(db, {**command, "writeConcern": {"w": 1}})
    assert (error.code, error.details and error.details["errmsg"]) == (72, "Command does not support writeConcern")


def test_a_statement_of_a_transaction_takes_no_write_concern(client: MongoClient[Doc], db: Database[Doc]) -> None:
    with client.start_session() as session:
        error = refusal_in(db, {"insert": "items", "documents": [{"_id": 4}], "txnNumber": Int64(1),
                                "startTransaction": True, "autocommit": False, "writeConcern": {"w": 1}}, session)
    assert (error.code, error.details and error.details["errmsg"]) == (
        72, "writeConcern is not allowed within a multi-statement transaction")
    assert db["items"].find_one({"_id": 4}) is None


@pytest.mark.parametrize(("projection", "code", "message"), [
    ({"x": 1, "y": 0}, 31254, "Cannot do exclusion on field y in inclusion projection"),
    ({"y": 0, "x": 1}, 31253, "Cannot do inclusion on field x in exclusion projection"),
])
def test_a_find_projection_mixing_inclusion_and_exclusion_is_refused(db: Database[Doc], projection: Doc, code: int,
                                                                     message: str) -> None:
    """Pins: mongomock's own message ("You cannot currently mix including and excluding fields.") with code 2."""
    error = refusal(db, {"find": "items", "projection": projection})
    assert (error.code, error.details and error.details["errmsg"]) == (code, message)


def test_a_find_projection_of_one_kind_is_taken(db: Database[Doc]) -> None:
    assert db.command({"find": "items", "projection": {"_id": 0, "x": 1}})["cursor"]["firstBatch"] == [{"x": 1}]
    assert db.command({"find": "items", "projection": {"x": 0, "s": {"$slice": 1}}})["cursor"]["firstBatch"] == [
        {"_id": 0}]
