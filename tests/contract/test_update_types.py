"""Update operators over values of any BSON type, as MongoDB 7.0 applies them: ``$min``/``$max`` compare by BSON's
type order, paths through scalars are the server's PathNotViable (28) or no-ops, malformed operands get the
parser's codes; no answer carries a Python exception's text.

Codes and messages from mongodb/mongo src/mongo/db/update/: compare_node.cpp ($min, $max),
update_leaf_node.cpp (checkViability), path_support.cpp (findLongestPrefix), push_node.cpp, addtoset_node.cpp,
pull_all_node.cpp, pop_node.cpp, current_date_node.cpp, pattern_cmp.cpp. With ``MONGODB_URI`` set the same tests
run against a real server.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure, WriteError

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]
DATE = dt.datetime(2024, 5, 1, 12, 0)  # naive UTC, as PyMongo decodes dates
OID = ObjectId("65a1b2c3d4e5f60718293a4b")


@pytest.fixture
def db(client: MongoClient[Doc], db_name: str) -> Iterator[Database[Doc]]:
    yield client[db_name]
    client.drop_database(db_name)


@pytest.fixture
def coll(db: Database[Doc]) -> Collection[Doc]:
    return db["items"]


def after(coll: Collection[Doc], doc: Doc, update: Doc) -> Doc:
    """The document ``update`` makes of ``doc``."""
    coll.delete_many({})
    coll.insert_one(doc)
    coll.update_one({"_id": doc["_id"]}, update)
    found = coll.find_one({"_id": doc["_id"]})
    assert found is not None
    return found


def refused(coll: Collection[Doc], doc: Doc, update: Doc) -> WriteError:
    coll.delete_many({})
    coll.insert_one(doc)
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": doc["_id"]}, update)
    assert coll.find_one({"_id": doc["_id"]}) == doc  # nothing written
    return info.value


# -- $min and $max by BSON's type order -------------------------------------------------------------------------
# numbers < strings < objects < arrays < binData < ObjectId < bool < date < timestamp < regex, null below all but
# MinKey, MaxKey above all.
ORDERED = [MinKey(), None, 5, "s", {"a": 1}, [1], b"\x01", OID, True, DATE, Timestamp(10, 1),
           Regex("a"), MaxKey()]


@pytest.mark.parametrize("low", range(len(ORDERED) - 1))
def test_min_and_max_across_types_follow_the_bson_order(coll: Collection[Doc], low: int) -> None:
    """Pins: $min and $max between values of different types answered a Python TypeError ("'<' not supported
    between instances of 'int' and 'str'")."""
    small, big = ORDERED[low], ORDERED[low + 1]
    assert after(coll, {"_id": 1, "f": small}, {"$max": {"f": big}})["f"] == big
    assert after(coll, {"_id": 1, "f": small}, {"$min": {"f": big}})["f"] == small
    assert after(coll, {"_id": 1, "f": big}, {"$min": {"f": small}})["f"] == small
    assert after(coll, {"_id": 1, "f": big}, {"$max": {"f": small}})["f"] == big


def test_min_and_max_compare_numbers_by_value_whatever_their_types(coll: Collection[Doc]) -> None:
    found = after(coll, {"_id": 1, "i": 5, "d": 2.5, "l": Int64(7)},
                  {"$max": {"i": 5.0, "d": Decimal128("2.6")}, "$min": {"l": Decimal128("7")}})
    assert found == {"_id": 1, "i": 5, "d": Decimal128("2.6"), "l": Int64(7)}  # an equal value changes nothing
    assert type(found["i"]) is int


def test_min_and_max_compare_documents_and_arrays_field_by_field(coll: Collection[Doc]) -> None:
    found = after(coll, {"_id": 1, "o": {"a": 1, "b": 2}, "a": [1, 2]},
                  {"$max": {"o": {"a": 1, "b": "x"}}, "$min": {"a": [1, 2, 0]}})
    assert found == {"_id": 1, "o": {"a": 1, "b": "x"}, "a": [1, 2]}  # a prefix is below the longer array


def test_min_and_max_on_a_missing_field_set_it(coll: Collection[Doc]) -> None:
    assert after(coll, {"_id": 1}, {"$min": {"a.b": "s"}, "$max": {"c": Decimal128("1")}}) == {
        "_id": 1, "a": {"b": "s"}, "c": Decimal128("1")}


# -- paths that go through a scalar -----------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["$set", "$inc", "$min", "$max", "$push", "$addToSet", "$currentDate"])
def test_an_operator_that_would_create_a_field_under_a_scalar_is_path_not_viable(coll: Collection[Doc],
                                                                                 op: str) -> None:
    """Pins: "invalid literal for int() with base 10", "'int' object is not subscriptable" and the like."""
    arg = True if op == "$currentDate" else 1
    error = refused(coll, {"_id": 1, "a": 5, "l": [1, 2]}, {op: {"a.b": arg}})
    assert (error.code, error.details and error.details["errmsg"]) == (28, "Cannot create field 'b' in element {a: 5}")
    error = refused(coll, {"_id": 1, "a": 5, "l": [1, 2]}, {op: {"l.x": arg}})
    assert (error.code, error.details and error.details["errmsg"]) == (
        28, "Cannot create field 'x' in element {l: [ 1, 2 ]}")


@pytest.mark.parametrize("update", [{"$unset": {"a.b": ""}}, {"$pull": {"a.b": 1}}, {"$pullAll": {"a.b": [1]}},
                                    {"$pop": {"a.b": 1}}, {"$unset": {"l.x": ""}}])
def test_an_operator_that_only_removes_is_a_no_op_through_a_scalar(coll: Collection[Doc], update: Doc) -> None:
    doc = {"_id": 1, "a": 5, "l": [1, 2]}
    assert after(coll, doc, update) == doc


def test_a_rename_from_under_a_scalar_is_path_not_viable(coll: Collection[Doc]) -> None:
    error = refused(coll, {"_id": 1, "a": 5}, {"$rename": {"a.b": "c"}})
    assert (error.code, error.details and error.details["errmsg"]) == (
        28, "cannot use the part (a of a.b) to traverse the element ({a: 5})")
    error = refused(coll, {"_id": 1, "a": 5, "c": 1}, {"$rename": {"c": "a.b"}})
    assert (error.code, error.details and error.details["errmsg"]) == (28, "Cannot create field 'b' in element {a: 5}")


# -- malformed operands, whatever the document --------------------------------------------------------------------
@pytest.mark.parametrize(("update", "code", "message"), [
    ({"$pop": {"a": 2}}, 9, "$pop expects 1 or -1, found: 2"),
    ({"$pop": {"a": 1.5}}, 9, "Expected an integer: a: 1.5"),
    ({"$pop": {"a": "x"}}, 9, 'Expected a number in: a: "x"'),
    ({"$push": {"a": {"$each": 5}}}, 2, "The argument to $each in $push must be an array but it was of type: int"),
    ({"$push": {"a": {"$each": [1], "$slice": 1.5}}}, 2,
     "The value for $slice must be an integer value but was given type: double"),
    ({"$push": {"a": {"$each": [1], "$position": "x"}}}, 2,
     "The value for $position must be an integer value, not of type: string"),
    ({"$push": {"a": {"$each": [1], "$sort": 2}}}, 2, "The $sort element value must be either 1 or -1"),
    ({"$push": {"a": {"$each": [1], "$sort": {}}}}, 2, "The $sort pattern is empty when it should be a set of fields."),
    ({"$push": {"a": {"$each": [1], "$bad": 1}}}, 2, "Unrecognized clause in $push: $bad"),
    ({"$addToSet": {"a": {"$each": 5}}}, 14,
     "The argument to $each in $addToSet must be an array but it was of type int"),
    ({"$pullAll": {"a": 5}}, 2, "$pullAll requires an array argument but was given a int"),
    ({"$currentDate": {"a": 5}}, 2, "int is not valid type for $currentDate. Please use a boolean ('true') or a $type "
                                    "expression ({$type: 'timestamp/date'})."),
    ({"$currentDate": {"a": {"$type": "day"}}}, 2, "The '$type' string field is required to be 'date' or "
                                                   "'timestamp': {$currentDate: {field : {$type: 'date'}}}"),
    ({"$pull": {"a": {"$bad": 1}}}, 2, "unknown operator: $bad"),
])
def test_a_malformed_operand_is_refused_on_any_document(coll: Collection[Doc], update: Doc, code: int,
                                                        message: str) -> None:
    """Pins: several were applied (a bad $currentDate set a date), others answered Python's text."""
    for doc in ({"_id": 1}, {"_id": 1, "a": [3, 1, 2]}):
        error = refused(coll, doc, update)
        assert (error.code, error.details and error.details["errmsg"]) == (code, message)


# -- arrays: BSON equality and order -------------------------------------------------------------------------------
def test_add_to_set_and_pull_all_take_equal_numbers_as_one(coll: Collection[Doc]) -> None:
    assert after(coll, {"_id": 1, "a": [1, "x"]}, {"$addToSet": {"a": {"$each": [1.0, Int64(1), 2, 2.0]}}}) == {
        "_id": 1, "a": [1, "x", 2]}
    assert after(coll, {"_id": 1, "a": [1, 1.0, Int64(1), 2, Decimal128("2")]}, {"$pullAll": {"a": [1]}}) == {
        "_id": 1, "a": [2, Decimal128("2")]}


def test_push_sorts_mixed_types_in_bson_order(coll: Collection[Doc]) -> None:
    found = after(coll, {"_id": 1, "a": [DATE, "b"]},
                  {"$push": {"a": {"$each": [True, None, 2.5, Decimal128("1"), {"k": 1}], "$sort": 1}}})
    assert found["a"] == [None, Decimal128("1"), 2.5, "b", {"k": 1}, True, DATE]
    found = after(coll, {"_id": 1, "a": [{"k": 2}, {"k": 1}]},
                  {"$push": {"a": {"$each": [{"k": 3}, {}], "$sort": {"k": -1}, "$slice": 3, "$position": 0}}})
    assert found["a"] == [{"k": 3}, {"k": 2}, {"k": 1}]


def test_push_and_add_to_set_create_a_field_under_a_missing_one(coll: Collection[Doc]) -> None:
    assert after(coll, {"_id": 1}, {"$push": {"a.0": 1}, "$addToSet": {"b.c": 2}}) == {
        "_id": 1, "a": {"0": [1]}, "b": {"c": [2]}}


# -- nothing answers Python's text -----------------------------------------------------------------------------------
PYTHON_TEXT = re.compile(r"not supported between instances|object is not|unhashable|invalid literal|argument of type"
                         r"|indices must be|is not iterable|has no attribute|object does not support|bytes-like|"
                         r"^'[^']*'$")
_KEYS = st.sampled_from(["f", "f.x", "f.0", "f.1.k", "g", "g.h", "o.a"])
_SCALARS = st.sampled_from([5, Int64(7), 2.5, Decimal128("3.5"), "s", True, None, DATE, OID, Timestamp(1, 1),
                            Regex("a"), MinKey(), MaxKey(), Binary(b"\x01", 0)])
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3), st.dictionaries(
    st.sampled_from(["k", "$each", "$slice", "$sort", "$position", "$type", "$gt"]),
    st.one_of(_SCALARS, st.lists(_SCALARS, max_size=2)), max_size=2))
_OPERATORS = st.sampled_from(["$set", "$unset", "$inc", "$mul", "$min", "$max", "$push", "$pull", "$pullAll",
                              "$addToSet", "$pop", "$rename", "$setOnInsert", "$currentDate"])
_UPDATES = st.dictionaries(_OPERATORS, st.dictionaries(_KEYS, _VALUES, min_size=1, max_size=2), min_size=1,
                           max_size=2)
_DOCS = st.fixed_dictionaries({"_id": st.just(1)}, optional={"f": _VALUES, "o": st.just({"a": 1})})


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_DOCS, update=_UPDATES, upsert=st.booleans())
def test_no_update_answers_python_exception_text(coll: Collection[Doc], doc: Doc, update: Doc, upsert: bool) -> None:
    """Pins: mongomock's exceptions became answers ("'<' not supported between instances of 'str' and 'int'")."""
    coll.delete_many({})
    coll.insert_one(doc)
    handler = Warnings()
    logger = logging.getLogger("realtime.standin")
    logger.addHandler(handler)
    try:
        coll.update_one({"_id": 1 if not upsert else 2}, update, upsert=upsert)
    except (OperationFailure, WriteError) as exc:
        message = str(exc.details and exc.details.get("errmsg"))
        assert exc.code not in (None, 1), exc.details
        assert not PYTHON_TEXT.search(message), message
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, handler.messages
