"""Update operators as MongoDB 7.0 applies and refuses them: arithmetic types and overflow, the positional ``$``,
update paths, ``$rename`` through arrays, and TTL indexes. A client error is the server's code, never an internal
error (code 1); with ``MONGODB_URI`` set the same tests run against a real server.

Messages and codes from mongodb/mongo: src/mongo/db/update/arithmetic_node.cpp (overflow), field_checker.cpp
(empty paths, 56), positional_node.cpp and update_driver.cpp (the positional operator), rename_node.cpp.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from bson import Decimal128, Int64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure, WriteError

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


def is_long(coll: Collection[Doc], _id: Any, field: str) -> bool:
    """Whether a stored field is a BSON long (PyMongo decodes a long as Int64, an int as int)."""
    doc = coll.find_one({"_id": _id})
    assert doc is not None
    return type(doc[field]) is Int64


# -- $inc and $mul: result types and overflow ------------------------------------------------------------------
def test_inc_past_int32_promotes_to_long(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "x": 2**31 - 1})
    coll.update_one({"_id": 1}, {"$inc": {"x": 1}})
    assert coll.find_one({"_id": 1}) == {"_id": 1, "x": 2**31}
    assert is_long(coll, 1, "x")


def test_inc_of_a_long_stays_a_long(coll: Collection[Doc]) -> None:
    """Pins: a long plus an int was stored as an int32 when it fitted (mongomock's sum is a plain int)."""
    coll.insert_one({"_id": 1, "x": Int64(5)})
    coll.update_one({"_id": 1}, {"$inc": {"x": 1}})
    assert is_long(coll, 1, "x")
    coll.update_one({"_id": 1}, {"$mul": {"x": 2}})
    assert is_long(coll, 1, "x")


@pytest.mark.parametrize(("op", "start", "by"), [("$inc", Int64(2**63 - 1), 1), ("$inc", Int64(-(2**63)), -1),
                                                 ("$inc", 42, Int64(2**63 - 1)), ("$mul", Int64(2**62), 4),
                                                 ("$mul", Int64(2**40), Int64(2**40))])
def test_arithmetic_past_int64_is_refused_and_writes_nothing(coll: Collection[Doc], op: str, start: Any,
                                                             by: Any) -> None:
    """Pins: the stand-in answered an internal error (an int BSON cannot encode reached the store)."""
    coll.insert_one({"_id": 1, "x": start})
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {op: {"x": by}})
    assert info.value.code == 2
    assert f"Failed to apply {op} operations to current value" in str(info.value)
    assert coll.find_one({"_id": 1}) == {"_id": 1, "x": start}


def test_arithmetic_types_follow_the_operands(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "i": 2, "d": 1.5, "m": Decimal128("1.1"), "l": Int64(3)})
    coll.update_one({"_id": 1}, {"$inc": {"i": 0.5, "m": 1, "new": Int64(7)}, "$mul": {"d": 2, "l": 2.0,
                                                                                      "zero": Decimal128("3")}})
    assert coll.find_one({"_id": 1}) == {"_id": 1, "i": 2.5, "d": 3.0, "m": Decimal128("2.1"), "l": 6.0,
                                         "new": 7, "zero": Decimal128("0")}
    assert is_long(coll, 1, "new")


def test_mul_with_a_non_numeric_argument_is_refused_on_an_empty_match(coll: Collection[Doc]) -> None:
    """The server parses the update before it looks for documents."""
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {"$mul": {"x": "2"}})
    assert info.value.code == 14


def test_inc_through_an_array_index(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": [Int64(2**63 - 1), 1]})
    coll.update_one({"_id": 1}, {"$inc": {"a.1": 2**31 - 1}})
    assert coll.find_one({"_id": 1}) == {"_id": 1, "a": [2**63 - 1, 2**31]}
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {"$inc": {"a.0": 1}})
    assert info.value.code == 2


# -- the positional operator -------------------------------------------------------------------------------------
def test_positional_without_the_array_in_the_filter_is_refused(coll: Collection[Doc]) -> None:
    """Pins: the stand-in set an element anyway, or answered an internal error."""
    coll.insert_one({"_id": 1, "a": [1, 2]})
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {"$set": {"a.$": 5}})
    assert info.value.code == 2
    assert "The positional operator did not find the match needed from the query." in str(info.value)
    assert coll.find_one({"_id": 1}) == {"_id": 1, "a": [1, 2]}


def test_positional_sets_the_element_the_filter_matched(coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": 1, "a": [1, 2, 3]}, {"_id": 2, "a": [{"x": 1}, {"x": 2}]}])
    coll.update_one({"_id": 1, "a": 2}, {"$set": {"a.$": 20}})
    coll.update_one({"_id": 2, "a.x": 2}, {"$inc": {"a.$.x": 5}})
    coll.update_one({"_id": 2, "a": {"$elemMatch": {"x": 1}}}, {"$set": {"a.$.y": True}})
    assert coll.find_one({"_id": 1}) == {"_id": 1, "a": [1, 20, 3]}
    assert coll.find_one({"_id": 2}) == {"_id": 2, "a": [{"x": 1, "y": True}, {"x": 7}]}


def test_positional_in_an_upsert_insert_is_refused(coll: Collection[Doc]) -> None:
    """Pins: an internal error."""
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 9, "a": 1}, {"$set": {"a.$": 5}}, upsert=True)
    assert info.value.code == 2
    assert coll.count_documents({}) == 0


@pytest.mark.parametrize(("path", "code"), [("a.$.b.$", 2), ("$.a", 2), ("", 56), ("a..b", 56), ("a.", 56)])
def test_malformed_update_paths_are_refused_on_an_empty_match(coll: Collection[Doc], path: str, code: int) -> None:
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {"$set": {path: 1}})
    assert info.value.code == code


def test_an_update_cannot_create_a_dollar_prefixed_field(coll: Collection[Doc]) -> None:
    """Pins: an internal error."""
    coll.insert_one({"_id": 1, "b": {}})
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {"$set": {"b.$x": 1}})
    assert info.value.code == 52


# -- $rename ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rename", "which"), [({"b": "a.0"}, "destination"), ({"a.0": "z"}, "source")])
def test_rename_into_or_out_of_an_array_is_refused(coll: Collection[Doc], rename: Doc, which: str) -> None:
    """Pins: refused as "not supported by the stand-in", though the server refuses it too."""
    coll.insert_one({"_id": 1, "a": [1, 2], "b": 3})
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {"$rename": rename})
    assert info.value.code == 2
    assert f"The {which} field cannot be an array element" in str(info.value)


@pytest.mark.parametrize("rename", [{"b": 1}, {"a.$": "z"}, {"b": "z.$"}])
def test_rename_needs_a_plain_string_target(coll: Collection[Doc], rename: Doc) -> None:
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1, "a": 1}, {"$rename": rename})
    assert info.value.code == 2


# -- TTL indexes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["not a date", [dt.datetime(2020, 1, 1)], None, dt.datetime(2020, 1, 1),
                                   [1, "x"]])
def test_a_ttl_collection_takes_any_document(coll: Collection[Doc], value: Any) -> None:
    """Pins: an insert with a past date (or an array of them) answered an internal error: mongomock expired the
    document before the insert could read it back."""
    coll.create_index("at", expireAfterSeconds=3600)
    coll.insert_one({"_id": 1, "at": value})
    coll.insert_one({"_id": 2})
    assert coll.count_documents({}) == 2


def test_the_ttl_monitor_deletes_expired_dates_only(mongo: Mongo, coll: Collection[Doc]) -> None:
    standin = mongo.need_standin()
    coll.create_index("at", expireAfterSeconds=60)
    old, new = dt.datetime(2020, 1, 1), dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(days=1)
    coll.insert_many([{"_id": 1, "at": old}, {"_id": 2, "at": [new, old]}, {"_id": 3, "at": new},
                      {"_id": 4, "at": "x"}, {"_id": 5}])
    with coll.watch() as stream:
        assert standin.expire_documents() == 2
        events = [stream.next() for _ in range(2)]
    assert sorted(e["documentKey"]["_id"] for e in events) == [1, 2]
    assert {e["operationType"] for e in events} == {"delete"}
    assert sorted(d["_id"] for d in coll.find()) == [3, 4, 5]


# -- no input makes an internal error -------------------------------------------------------------------------------
_KEYS = st.sampled_from(["a", "b", "a.0", "a.b", "a.$", "b.$", "$", "a.$[]", "a.$[x]", "", "a..b", "$x", "_id",
                         "a.1.c", "c.d.e", "a.-1", "b.0"])
_VALUES = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=False),
                    st.text(max_size=3), st.none(), st.booleans(), st.lists(st.integers(-3, 3), max_size=3),
                    st.dictionaries(st.sampled_from(["a", "b", "$each", "$slice", "$in"]), st.integers(-2, 2),
                                    max_size=2))
_OPERATORS = st.sampled_from(["$set", "$unset", "$inc", "$mul", "$min", "$max", "$push", "$pull", "$pullAll",
                              "$addToSet", "$pop", "$rename", "$setOnInsert", "$currentDate", "$bad"])
_UPDATES = st.dictionaries(_OPERATORS, st.dictionaries(_KEYS, _VALUES, max_size=2), min_size=1, max_size=2)
_FILTERS = st.dictionaries(st.sampled_from(["a", "b", "a.b", "_id", "$and", "a.0"]),
                           st.one_of(st.integers(0, 3), st.dictionaries(st.sampled_from(["$gt", "$in", "$elemMatch",
                                                                                         "$exists", "$bad"]),
                                                                        st.integers(0, 3), max_size=1)),
                           max_size=2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(update=_UPDATES, query=_FILTERS, upsert=st.booleans())
def test_no_update_answers_an_internal_error(coll: Collection[Doc], update: Doc, query: Doc, upsert: bool) -> None:
    coll.delete_many({})
    coll.insert_many([{"_id": 1, "a": [1, {"b": 2}, [3]], "b": {"c": 1}}, {"_id": 2, "a": 5, "b": [1, 2]}])
    try:
        coll.update_many(query, update, upsert=upsert)
    except (OperationFailure, WriteError) as exc:
        assert exc.code not in (None, 1), exc.details
