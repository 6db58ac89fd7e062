"""Command arguments of the wrong type, and OP_MSG checksums: the stand-in answers as MongoDB does.

A command whose argument has a type MongoDB does not accept there is answered with an error document carrying
MongoDB's code (TypeMismatch 14, BadValue 2, FailedToParse 9, ...), never with an internal error, a log line
about one, or a dropped connection. An OP_MSG whose CRC-32C checksum does not match its contents closes the
connection. Raw OP_MSG over a socket here, so that no driver stands between the arguments and the server.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import bson
import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from realtime.standin import StandIn
from realtime.standin.crc32c import crc32c
from tests.conftest import TIMEOUT, Mongo

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]
Path = tuple[str | int, ...]
DB = "fuzz"


# -- a client that sends exactly what it is given -------------------------------------------------------------
class Closed(Exception):
    """The server closed the connection."""


class RawClient:
    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        self.request_id = 0

    def close(self) -> None:
        self.sock.close()

    def message(self, command: Doc, checksum: int | None = None) -> bytes:
        """An OP_MSG carrying ``command``; with ``checksum``, that value as its CRC-32C (None: none)."""
        self.request_id += 1
        flags = 0 if checksum is None else 1
        body = struct.pack("<I", flags) + b"\x00" + bson.encode(command)
        length = 16 + len(body) + (0 if checksum is None else 4)
        data = struct.pack("<iiii", length, self.request_id, 0, 2013) + body
        return data if checksum is None else data + struct.pack("<I", checksum)

    def send(self, data: bytes) -> Doc:
        self.sock.sendall(data)
        header = self._read(16)
        length, _, _, opcode = struct.unpack("<iiii", header)
        assert opcode == 2013
        body = self._read(length - 16)
        assert body[4] == 0
        return bson.decode(body[5:], CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO))

    def command(self, command: Doc) -> Doc:
        return self.send(self.message(command))

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed()
            data += chunk
        return data


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Server:
    standin: StandIn
    client: RawClient
    log: Records

    def run(self, command: Doc) -> Doc:
        """Run a command; then check the connection is still open, and reset what a command could leave set."""
        self.log.records.clear()
        reply = self.client.command(command)
        assert self.client.command({"configureFailPoint": "failCommand", "mode": "off", "$db": "admin"})["ok"] == 1
        assert not self.log.records, [r.getMessage() for r in self.log.records]
        return reply


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    standin = StandIn()
    standin.start()
    records = Records()
    logger = logging.getLogger("realtime.standin")
    logger.addHandler(records)
    client = RawClient(standin.address)
    try:
        assert client.command({"insert": "c", "documents": [{"_id": 1, "x": 1}], "$db": DB})["ok"] == 1
        yield Server(standin, client, records)
    finally:
        client.close()
        logger.removeHandler(records)
        standin.stop()


# -- the commands, and the types MongoDB accepts for their arguments ------------------------------------------
NUM = ("long", "int", "decimal", "double")
BOOLISH = ("bool", *NUM)
STR, OBJ, ARR, BOOL, LONG = ("string",), ("object",), ("array",), ("bool",), ("long",)
COLLECTION = ("string", "binData")  # a name, or a collection UUID
HINT = ("string", "object")  # an index name or key pattern
UUID4 = Binary(uuid.uuid4().bytes, 4)


@dataclass(frozen=True)
class Case:
    command: Doc  # well formed, every argument of an accepted type
    args: dict[Path, tuple[str, ...]]  # where arguments go, and the BSON types MongoDB accepts there
    required: frozenset[Path] = frozenset()


# Arguments any command may carry (the parent of a nested one is added when it is absent).
GENERIC: dict[Path, tuple[str, ...]] = {
    ("$db",): STR, ("lsid",): OBJ, ("lsid", "id"): ("binData",), ("txnNumber",): LONG, ("autocommit",): BOOL,
    ("startTransaction",): BOOL, ("maxTimeMS",): NUM, ("readConcern",): OBJ, ("readConcern", "level"): STR,
    ("readConcern", "atClusterTime"): ("timestamp",),
}
PARENTS: dict[Path, Any] = {("lsid",): {"id": UUID4}, ("readConcern",): {"level": "local"}}

def _name(case: Case) -> str:
    name = next(iter(case.command))
    return name + "-stream" if "$changeStream" in str(case.command) else name


CASES: dict[str, Case] = {_name(c): c for c in [
    Case({"find": "c", "filter": {}, "projection": {"x": 1}, "sort": {"x": 1}, "skip": 0, "limit": 0,
          "batchSize": 2, "singleBatch": False},
         {("find",): COLLECTION, ("filter",): OBJ, ("projection",): OBJ, ("sort",): OBJ, ("skip",): NUM,
          ("limit",): NUM,
          ("batchSize",): NUM, ("singleBatch",): BOOLISH, ("allowDiskUse",): BOOLISH, ("hint",): HINT,
          ("collation",): OBJ, ("let",): OBJ, ("min",): OBJ, ("max",): OBJ},
         frozenset({("find",)})),
    Case({"getMore": Int64(42), "collection": "c", "batchSize": 1},
         {("getMore",): LONG, ("collection",): STR, ("batchSize",): NUM}, frozenset({("getMore",), ("collection",)})),
    Case({"killCursors": "c", "cursors": [Int64(42)]},
         {("killCursors",): STR, ("cursors",): ARR, ("cursors", 0): LONG}, frozenset({("killCursors",), ("cursors",)})),
    Case({"insert": "c", "documents": [{"x": 2}], "ordered": True},
         {("insert",): STR, ("documents",): ARR, ("documents", 0): OBJ, ("ordered",): BOOL,
          ("bypassDocumentValidation",): BOOLISH},
         frozenset({("insert",), ("documents",)})),
    Case({"update": "c", "updates": [{"q": {"x": 2}, "u": {"$set": {"y": 1}}, "multi": False, "upsert": False}],
          "ordered": True},
         {("update",): STR, ("updates",): ARR, ("updates", 0): OBJ, ("updates", 0, "q"): OBJ,
          ("updates", 0, "u"): ("object", "array"), ("updates", 0, "multi"): BOOL, ("updates", 0, "upsert"): BOOL,
          ("updates", 0, "arrayFilters"): ARR, ("updates", 0, "collation"): OBJ,
          ("updates", 0, "hint"): HINT,
          ("ordered",): BOOL, ("let",): OBJ},
         frozenset({("update",), ("updates",), ("updates", 0, "q"), ("updates", 0, "u")})),
    Case({"delete": "c", "deletes": [{"q": {"nothing": 1}, "limit": 1}]},
         {("delete",): STR, ("deletes",): ARR, ("deletes", 0): OBJ, ("deletes", 0, "q"): OBJ,
          ("deletes", 0, "limit"): NUM,
          ("deletes", 0, "collation"): OBJ, ("deletes", 0, "hint"): HINT, ("ordered",): BOOL},
         frozenset({("delete",), ("deletes",), ("deletes", 0, "q"), ("deletes", 0, "limit")})),
    Case({"findAndModify": "c", "query": {"x": -1}, "update": {"$set": {"z": 1}}, "new": True, "fields": {"z": 1},
          "sort": {"x": 1}, "upsert": False},
         {("findAndModify",): STR, ("query",): OBJ, ("sort",): OBJ, ("update",): ("object", "array"), ("new",): BOOLISH,
          ("fields",): OBJ, ("upsert",): BOOLISH, ("arrayFilters",): ARR, ("collation",): OBJ, ("let",): OBJ,
          ("hint",): HINT},
         frozenset({("findAndModify",)})),
    Case({"count": "c", "query": {}, "limit": 5, "skip": 0},
         {("count",): STR, ("query",): OBJ, ("limit",): NUM, ("skip",): NUM, ("collation",): OBJ,
          ("hint",): HINT},
         frozenset({("count",)})),
    Case({"distinct": "c", "key": "x", "query": {}},
         {("distinct",): STR, ("key",): STR, ("query",): OBJ, ("collation",): OBJ},
         frozenset({("distinct",), ("key",)})),
    Case({"aggregate": "c", "pipeline": [{"$match": {}}], "cursor": {"batchSize": 1}},
         {("aggregate",): ("string", *NUM), ("pipeline",): ARR, ("pipeline", 0): OBJ, ("cursor",): OBJ,
          ("cursor", "batchSize"): NUM, ("allowDiskUse",): BOOL, ("let",): OBJ, ("collation",): OBJ, ("hint",): HINT},
         frozenset({("aggregate",), ("pipeline",)})),
    Case({"aggregate": "c", "pipeline": [{"$changeStream": {"fullDocument": "default"}}], "cursor": {}},
         {("pipeline", 0, "$changeStream"): OBJ, ("pipeline", 0, "$changeStream", "fullDocument"): STR,
          ("pipeline", 0, "$changeStream", "fullDocumentBeforeChange"): STR,
          ("pipeline", 0, "$changeStream", "resumeAfter"): OBJ, ("pipeline", 0, "$changeStream", "startAfter"): OBJ,
          ("pipeline", 0, "$changeStream", "startAtOperationTime"): ("timestamp",),
          ("pipeline", 0, "$changeStream", "showExpandedEvents"): BOOL,
          ("pipeline", 0, "$changeStream", "allChangesForCluster"): BOOL},
         frozenset({("pipeline", 0, "$changeStream")})),
    Case({"create": "made", "changeStreamPreAndPostImages": {"enabled": True}},
         {("create",): STR, ("changeStreamPreAndPostImages",): OBJ, ("changeStreamPreAndPostImages", "enabled"): BOOL,
          ("validator",): OBJ, ("collation",): OBJ, ("capped",): BOOLISH, ("size",): NUM},
         frozenset({("create",), ("changeStreamPreAndPostImages", "enabled")})),
    Case({"collMod": "c", "changeStreamPreAndPostImages": {"enabled": False}},
         {("collMod",): STR, ("changeStreamPreAndPostImages",): OBJ, ("changeStreamPreAndPostImages", "enabled"): BOOL,
          ("validator",): OBJ},
         frozenset({("collMod",), ("changeStreamPreAndPostImages", "enabled")})),
    Case({"drop": "gone"}, {("drop",): STR}, frozenset({("drop",)})),
    Case({"renameCollection": f"{DB}.none", "to": f"{DB}.none2", "$db": "admin"},
         {("renameCollection",): STR, ("to",): STR, ("dropTarget",): BOOLISH},
         frozenset({("renameCollection",), ("to",)})),
    Case({"listCollections": 1, "filter": {}, "nameOnly": False, "cursor": {}},
         {("filter",): OBJ, ("nameOnly",): BOOLISH, ("cursor",): OBJ, ("cursor", "batchSize"): NUM}),
    Case({"listDatabases": 1, "nameOnly": True, "$db": "admin"}, {("nameOnly",): BOOLISH, ("filter",): OBJ}),
    Case({"createIndexes": "c", "indexes": [{"key": {"x": 1}, "name": "x_1"}]},
         {("createIndexes",): STR, ("indexes",): ARR, ("indexes", 0): OBJ, ("indexes", 0, "key"): OBJ,
          ("indexes", 0, "name"): STR, ("indexes", 0, "unique"): BOOLISH, ("indexes", 0, "sparse"): BOOLISH,
          ("indexes", 0, "partialFilterExpression"): OBJ, ("indexes", 0, "expireAfterSeconds"): NUM},
         frozenset({("createIndexes",), ("indexes",), ("indexes", 0, "key"), ("indexes", 0, "name")})),
    Case({"listIndexes": "c", "cursor": {}}, {("listIndexes",): STR, ("cursor",): OBJ, ("cursor", "batchSize"): NUM},
         frozenset({("listIndexes",)})),
    Case({"dropIndexes": "c", "index": "none_1"}, {("dropIndexes",): STR, ("index",): ("string", "array", "object")},
         frozenset({("dropIndexes",), ("index",)})),
    Case({"endSessions": [{"id": UUID4}], "$db": "admin"},
         {("endSessions",): ARR, ("endSessions", 0): OBJ, ("endSessions", 0, "id"): ("binData",)},
         frozenset({("endSessions",), ("endSessions", 0, "id")})),
    Case({"commitTransaction": 1, "lsid": {"id": UUID4}, "txnNumber": Int64(5), "autocommit": False,
          "$db": "admin"}, {}),
    Case({"abortTransaction": 1, "lsid": {"id": UUID4}, "txnNumber": Int64(5), "autocommit": False,
          "$db": "admin"}, {}),
    Case({"configureFailPoint": "failCommand", "mode": {"times": 1}, "$db": "admin",
          "data": {"failCommands": ["noSuchCommand"], "errorCode": 2, "errorLabels": [], "closeConnection": False,
                   "blockConnection": False, "blockTimeMS": 0}},
         {("configureFailPoint",): STR, ("mode",): HINT, ("mode", "times"): NUM, ("data",): OBJ,
          ("data", "failCommands"): ARR, ("data", "failCommands", 0): STR, ("data", "errorCode"): NUM,
          ("data", "errorLabels"): ARR, ("data", "closeConnection"): BOOLISH, ("data", "blockConnection"): BOOLISH,
          ("data", "blockTimeMS"): NUM, ("data", "appName"): STR},
         frozenset({("configureFailPoint",), ("mode",)})),
    Case({"hello": 1, "client": {"application": {"name": "fuzz"}}},
         {("client",): OBJ, ("client", "application"): OBJ, ("client", "application", "name"): STR,
          ("helloOk",): BOOLISH}),
    Case({"getLog": "*", "$db": "admin"}, {("getLog",): STR}, frozenset({("getLog",)})),
    Case({"realtimeStandIn": "status", "$db": "admin"},
         {("realtimeStandIn",): STR, ("keepLast",): NUM, ("seconds",): NUM}, frozenset({("realtimeStandIn",)})),
    Case({"ping": 1}, {}),
    Case({"buildInfo": 1}, {}),
    Case({"dbStats": 1}, {}),
    Case({"serverStatus": 1, "$db": "admin"}, {}),
]}

ALL_TYPES = ("double", "string", "object", "array", "binData", "objectId", "bool", "date", "null", "regex",
             "javascript", "int", "timestamp", "long", "decimal", "minKey", "maxKey")

# One value of each type, for the exhaustive test; strategies for each type, for the random ones.
ONE: dict[str, Any] = {
    "double": 1.5, "string": "x", "object": {"a": 1}, "array": [1], "binData": b"\x01", "objectId": ObjectId(),
    "bool": True, "date": dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "null": None, "regex": Regex("a"),
    "javascript": Code("1"), "int": 7, "timestamp": Timestamp(1, 1), "long": Int64(7),
    "decimal": Decimal128("1.5"), "minKey": MinKey(), "maxKey": MaxKey(),
}
SCALARS = st.integers(-3, 3) | st.text(alphabet="ab$", max_size=3) | st.none() | st.booleans() | st.floats()
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "double": st.floats(),
    "string": st.text(max_size=8),
    "object": st.recursive(
        st.dictionaries(st.text(alphabet="ab$.", min_size=1, max_size=3), SCALARS, max_size=2),
        lambda inner: st.dictionaries(st.text(alphabet="ab$.", min_size=1, max_size=3),
                                      SCALARS | inner | st.lists(SCALARS | inner, max_size=2), max_size=2),
        max_leaves=4),
    "array": st.lists(SCALARS, max_size=2),
    "binData": st.binary(max_size=8) | st.just(UUID4),
    "objectId": st.builds(ObjectId),
    "bool": st.booleans(),
    "date": st.datetimes(timezones=st.just(dt.UTC)) | st.builds(DatetimeMS, st.integers(-(2**62), 2**62)),
    "null": st.none(),
    "regex": st.builds(Regex, st.text(alphabet="ab.*", max_size=3)),
    "javascript": st.builds(Code, st.text(max_size=3)),
    "int": st.integers(-(2**31), 2**31 - 1),
    "timestamp": st.builds(Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    "long": st.builds(Int64, st.integers(-(2**63), 2**63 - 1)),
    "decimal": st.sampled_from(["0", "1", "-1", "2.5", "NaN", "-Infinity", "1E+6000"]).map(Decimal128),
    "minKey": st.just(MinKey()),
    "maxKey": st.just(MaxKey()),
}


def with_value(case: Case, path: Path, value: Any) -> Doc:
    """The case's command with ``value`` at ``path`` (its missing parents made valid first)."""
    command: Any = bson.decode(bson.encode({**case.command, "$db": case.command.get("$db", DB)}))
    node = command
    for i, key in enumerate(path[:-1]):
        if isinstance(node, dict) and key not in node:
            node[key] = bson.decode(bson.encode({"v": PARENTS[path[: i + 1]]}))["v"]
        node = node[key]
    node[path[-1]] = value
    return dict(command)


def targets(case: Case) -> dict[Path, tuple[str, ...]]:
    return {**GENERIC, **case.args}


def wrong_types(case: Case, path: Path) -> list[str]:
    """The types MongoDB refuses at ``path``: all but the accepted ones, and null unless the argument is required
    (a null optional argument counts as absent)."""
    accepted = targets(case)[path]
    required = path in case.required or path in (("$db",), ("lsid", "id"))
    return [t for t in ALL_TYPES if t not in accepted and (t != "null" or required)]


def assert_error(reply: Doc) -> None:
    assert reply["ok"] == 0, reply
    assert isinstance(reply["code"], int) and reply["code"] != 1, reply  # 1 is InternalError
    assert isinstance(reply["codeName"], str) and isinstance(reply["errmsg"], str), reply


EXAMPLES = int(os.environ.get("REALTIME_FUZZ_EXAMPLES", "300"))  # raise it to search longer
EXHAUSTIVE = [(name, path) for name, case in CASES.items() for path in targets(case) if wrong_types(case, path)]


@pytest.mark.parametrize(("name", "path"), EXHAUSTIVE, ids=[f"{n}:{'.'.join(map(str, p))}" for n, p in EXHAUSTIVE])
def test_every_argument_of_a_wrong_type_is_a_mongodb_error(server: Server, name: str, path: Path) -> None:
    """Regression: arguments of a wrong type raised Python exceptions inside the stand-in (InternalError, logged)."""
    case = CASES[name]
    for kind in wrong_types(case, path):
        assert_error(server.run(with_value(case, path, ONE[kind])))


@st.composite
def wrong_commands(draw: st.DrawFn) -> Doc:
    case = CASES[draw(st.sampled_from(sorted(CASES)))]
    path = draw(st.sampled_from([p for p in targets(case) if wrong_types(case, p)]))
    return with_value(case, path, draw(VALUES[draw(st.sampled_from(wrong_types(case, path)))]))


@st.composite
def any_commands(draw: st.DrawFn) -> Doc:
    """A command with one argument of any type and value, the accepted ones included (not the stand-in's own
    fault-injection action, which may pause it or hang up on purpose)."""
    name = draw(st.sampled_from(sorted(CASES)))
    case = CASES[name]
    path = draw(st.sampled_from([p for p in targets(case) if p != ("realtimeStandIn",)]))
    return with_value(case, path, draw(VALUES[draw(st.sampled_from(ALL_TYPES))]))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=wrong_commands())
def test_random_commands_with_wrong_argument_types_get_mongodb_errors(server: Server, command: Doc) -> None:
    assert_error(server.run(command))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=any_commands())
def test_random_argument_values_never_cause_an_internal_error(server: Server, command: Doc) -> None:
    reply = server.run(command)
    if reply["ok"] != 1:
        assert_error(reply)


def test_kill_cursors_with_a_string_is_type_mismatch_naming_the_field(client: MongoClient[Doc]) -> None:
    """Regression: killCursors with cursors: "x" logged an internal ValueError (int("x")) in the stand-in."""
    with pytest.raises(OperationFailure) as info:
        client.test.command({"killCursors": "c", "cursors": "x"})
    assert (info.value.code, info.value.details and info.value.details["codeName"]) == (14, "TypeMismatch")
    assert "'killCursors.cursors'" in str(info.value)


# -- checksums ------------------------------------------------------------------------------------------------
def test_a_message_with_its_checksum_is_answered(server: Server) -> None:
    client = RawClient(server.standin.address)
    try:
        unsigned = client.message({"ping": 1, "$db": "admin"}, checksum=0)[:-4]
        assert client.send(unsigned + struct.pack("<I", crc32c(unsigned)))["ok"] == 1
    finally:
        client.close()


def test_a_wrong_checksum_closes_the_connection(mongo: Mongo, server: Server, client: MongoClient[Doc]) -> None:
    """Regression: the stand-in ignored OP_MSG checksums, and answered messages whose checksum did not match."""
    raw = RawClient(server.standin.address)
    server.log.records.clear()
    try:
        unsigned = raw.message({"ping": 1, "$db": "admin"}, checksum=0)[:-4]
        with pytest.raises(Closed):
            raw.send(unsigned + struct.pack("<I", crc32c(unsigned) ^ 1))
    finally:
        raw.close()
    assert any("checksum" in r.getMessage() for r in server.log.records)
    server.log.records.clear()
    assert server.client.command({"ping": 1, "$db": "admin"})["ok"] == 1  # other connections carry on


# -- values the server takes that Python's datetime cannot hold --------------------------------------------------
def test_dates_outside_pythons_range_are_stored_and_read_back(mongo: Mongo, db_name: str) -> None:
    """Regression: a BSON date after year 9999 failed to decode and the stand-in dropped the connection."""
    far, before = DatetimeMS(2**62), DatetimeMS(-(2**62))
    with MongoClient[Doc](mongo.uri, datetime_conversion="DATETIME_AUTO",
                          serverSelectionTimeoutMS=int(TIMEOUT * 1000)) as client:
        coll = client[db_name]["dates"]
        try:
            coll.insert_one({"_id": 1, "d": far})
            coll.update_one({"_id": 1}, {"$set": {"e": before}})
            assert coll.find_one({"d": far}) == {"_id": 1, "d": far, "e": before}
        finally:
            client.drop_database(db_name)
