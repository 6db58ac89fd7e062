"""Contract tests of the CRUD commands producers use, as real MongoDB 7.0 answers them through PyMongo.

Every assertion here states what a real server does: with ``MONGODB_URI`` set the same tests run against
one. The few that check the stand-in's own answers to what it does not implement (or to garbage on the
wire) skip against a real server.
"""

from __future__ import annotations

import datetime as dt
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId, Timestamp
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, WriteError

from tests.conftest import TIMEOUT, Mongo

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]


@pytest.fixture
def db(client: MongoClient[Doc], db_name: str) -> Iterator[Database[Doc]]:
    yield client[db_name]
    client.drop_database(db_name)


@pytest.fixture
def coll(db: Database[Doc]) -> Collection[Doc]:
    return db["items"]


def ids(coll: Collection[Doc], filter: Doc | None = None, **kwargs: Any) -> list[Any]:
    return [d["_id"] for d in coll.find(filter or {}, **kwargs)]


def one(coll: Collection[Doc], _id: Any) -> Doc:
    doc = coll.find_one({"_id": _id})
    assert doc is not None
    return doc


# -- inserts -------------------------------------------------------------------------------------------
def test_insert_one_generates_an_object_id_stored_first(coll: Collection[Doc]) -> None:
    result = coll.insert_one({"b": 1, "a": 2})
    assert isinstance(result.inserted_id, ObjectId)
    stored = coll.find_one({"_id": result.inserted_id})
    assert stored is not None
    assert list(stored) == ["_id", "b", "a"]
    assert stored == {"_id": result.inserted_id, "b": 1, "a": 2}


def test_insert_one_keeps_a_given_id(coll: Collection[Doc]) -> None:
    result = coll.insert_one({"_id": "k1", "v": [1, {"x": None}]})
    assert result.inserted_id == "k1"
    assert one(coll, "k1") == {"_id": "k1", "v": [1, {"x": None}]}


def test_insert_many(coll: Collection[Doc]) -> None:
    result = coll.insert_many([{"_id": i, "n": i} for i in range(5)])
    assert result.inserted_ids == [0, 1, 2, 3, 4]
    assert ids(coll, sort=[("_id", ASCENDING)]) == [0, 1, 2, 3, 4]


def test_insert_many_ordered_stops_at_a_duplicate_id(coll: Collection[Doc]) -> None:
    with pytest.raises(BulkWriteError) as info:
        coll.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 1}, {"_id": 3}], ordered=True)
    details = info.value.details
    assert details["nInserted"] == 2
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(2, 11000)]
    assert sorted(ids(coll)) == [1, 2]


def test_insert_many_unordered_goes_on_past_a_duplicate_id(coll: Collection[Doc]) -> None:
    with pytest.raises(BulkWriteError) as info:
        coll.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 1}, {"_id": 3}], ordered=False)
    details = info.value.details
    assert details["nInserted"] == 3
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(2, 11000)]
    assert sorted(ids(coll)) == [1, 2, 3]


def test_insert_one_duplicate_id_raises_duplicate_key(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 7, "v": "first"})
    with pytest.raises(DuplicateKeyError) as info:
        coll.insert_one({"_id": 7, "v": "second"})
    assert info.value.code == 11000
    assert one(coll, 7)["v"] == "first"


# -- update operators -----------------------------------------------------------------------------------
def test_set_replaces_and_adds_fields(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": 1, "b": "x"})
    result = coll.update_one({"_id": 1}, {"$set": {"a": 2, "c": [1, 2]}})
    assert (result.matched_count, result.modified_count) == (1, 1)
    assert one(coll, 1) == {"_id": 1, "a": 2, "b": "x", "c": [1, 2]}


def test_set_dotted_path_creates_sub_documents(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": {"keep": True}})
    coll.update_one({"_id": 1}, {"$set": {"a.b.c": 5, "x.y": "z"}})
    assert one(coll, 1) == {"_id": 1, "a": {"keep": True, "b": {"c": 5}}, "x": {"y": "z"}}


def test_unset_removes_fields(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": 1, "b": {"c": 1, "d": 2}})
    result = coll.update_one({"_id": 1}, {"$unset": {"a": "", "b.c": ""}})
    assert result.modified_count == 1
    assert one(coll, 1) == {"_id": 1, "b": {"d": 2}}


def test_unset_of_a_missing_field_modifies_nothing(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": 1})
    result = coll.update_one({"_id": 1}, {"$unset": {"nope": ""}})
    assert (result.matched_count, result.modified_count) == (1, 0)
    assert one(coll, 1) == {"_id": 1, "a": 1}


def test_inc(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "n": 5, "f": 1.5})
    coll.update_one({"_id": 1}, {"$inc": {"n": -2, "f": 1, "new": 3}})
    doc = one(coll, 1)
    assert doc == {"_id": 1, "n": 3, "f": 2.5, "new": 3}
    assert isinstance(doc["f"], float)


def test_inc_of_a_non_numeric_field_fails(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "s": "text"})
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {"$inc": {"s": 1}})
    assert info.value.code == 14  # TypeMismatch
    assert one(coll, 1) == {"_id": 1, "s": "text"}


def test_inc_with_a_non_numeric_argument_fails(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "n": 1})
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {"$inc": {"n": "2"}})
    assert info.value.code == 14  # TypeMismatch
    assert one(coll, 1) == {"_id": 1, "n": 1}


def test_mul(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "i": 3, "f": 1.5})
    coll.update_one({"_id": 1}, {"$mul": {"i": 4, "f": 3, "missing_int": 7, "missing_float": 2.5}})
    doc = one(coll, 1)
    assert doc == {"_id": 1, "i": 12, "f": 4.5, "missing_int": 0, "missing_float": 0.0}
    assert type(doc["i"]) is int
    assert type(doc["f"]) is float
    assert type(doc["missing_int"]) is int  # zero of the multiplier's type
    assert type(doc["missing_float"]) is float


def test_mul_int_by_float_gives_a_double(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "i": 3})
    coll.update_one({"_id": 1}, {"$mul": {"i": 0.5}})
    doc = one(coll, 1)
    assert doc["i"] == 1.5
    assert type(doc["i"]) is float


def test_min_and_max(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "lo": 5, "hi": 5})
    result = coll.update_one({"_id": 1}, {"$min": {"lo": 3, "new_lo": 9}, "$max": {"hi": 8, "new_hi": -1}})
    assert result.modified_count == 1
    assert one(coll, 1) == {"_id": 1, "lo": 3, "hi": 8, "new_lo": 9, "new_hi": -1}
    unchanged = coll.update_one({"_id": 1}, {"$min": {"lo": 4}, "$max": {"hi": 7}})
    assert (unchanged.matched_count, unchanged.modified_count) == (1, 0)
    assert one(coll, 1)["lo"] == 3
    assert one(coll, 1)["hi"] == 8


def test_push(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "arr": [1]})
    coll.update_one({"_id": 1}, {"$push": {"arr": 2, "fresh": "a"}})
    coll.update_one({"_id": 1}, {"$push": {"arr": {"$each": [3, 4]}}})
    coll.update_one({"_id": 1}, {"$push": {"arr": [5, 6]}})  # without $each the array is one element
    assert one(coll, 1) == {"_id": 1, "arr": [1, 2, 3, 4, [5, 6]], "fresh": ["a"]}


def test_push_onto_a_non_array_fails(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "arr": 5})
    with pytest.raises(WriteError):
        coll.update_one({"_id": 1}, {"$push": {"arr": 6}})
    assert one(coll, 1) == {"_id": 1, "arr": 5}


@pytest.mark.parametrize(("update", "code"), [
    pytest.param({"$addToSet": {"v": 6}}, 2, id="addToSet"),  # BadValue
    pytest.param({"$pull": {"v": 5}}, 2, id="pull"),  # BadValue
    pytest.param({"$pop": {"v": 1}}, 14, id="pop"),  # TypeMismatch
])
def test_array_operators_on_a_non_array_fail(coll: Collection[Doc], update: Doc, code: int) -> None:
    coll.insert_one({"_id": 1, "v": 5})
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, update)
    assert info.value.code == code
    assert one(coll, 1) == {"_id": 1, "v": 5}


def test_a_failing_update_changes_nothing(coll: Collection[Doc]) -> None:
    # One document's update is all or nothing: the $set does not survive the failing $push.
    coll.insert_one({"_id": 1, "a": 1, "arr": 5})
    with pytest.raises(WriteError):
        coll.update_one({"_id": 1}, {"$set": {"a": 2}, "$push": {"arr": 6}})
    assert one(coll, 1) == {"_id": 1, "a": 1, "arr": 5}


def test_pull(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "arr": [1, 2, 3, 2, 4, 5], "objs": [{"k": 1}, {"k": 2}, {"k": 3}]})
    coll.update_one({"_id": 1}, {"$pull": {"arr": 2, "objs": {"k": {"$gte": 2}}}})
    assert one(coll, 1) == {"_id": 1, "arr": [1, 3, 4, 5], "objs": [{"k": 1}]}
    coll.update_one({"_id": 1}, {"$pull": {"arr": {"$gt": 3}}})
    assert one(coll, 1)["arr"] == [1, 3]


def test_add_to_set_does_not_duplicate(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "tags": ["a", "b"]})
    first = coll.update_one({"_id": 1}, {"$addToSet": {"tags": "c"}})
    again = coll.update_one({"_id": 1}, {"$addToSet": {"tags": "a"}})
    assert first.modified_count == 1
    assert (again.matched_count, again.modified_count) == (1, 0)
    coll.update_one({"_id": 1}, {"$addToSet": {"tags": {"$each": ["b", "d", "d"]}}})
    assert one(coll, 1)["tags"] == ["a", "b", "c", "d"]


def test_pop(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "arr": [1, 2, 3, 4]})
    coll.update_one({"_id": 1}, {"$pop": {"arr": 1}})
    assert one(coll, 1)["arr"] == [1, 2, 3]
    coll.update_one({"_id": 1}, {"$pop": {"arr": -1}})
    assert one(coll, 1)["arr"] == [2, 3]


def test_rename(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "old": "v", "sub": {"x": 1}})
    coll.update_one({"_id": 1}, {"$rename": {"old": "new", "sub.x": "sub.y"}})
    assert one(coll, 1) == {"_id": 1, "new": "v", "sub": {"y": 1}}


def test_rename_onto_an_existing_field_overwrites_it(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": "from", "b": "to", "c": 3})
    result = coll.update_one({"_id": 1}, {"$rename": {"a": "b"}})
    assert result.modified_count == 1
    assert one(coll, 1) == {"_id": 1, "b": "from", "c": 3}


def test_rename_of_a_missing_field_modifies_nothing(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": 1})
    result = coll.update_one({"_id": 1}, {"$rename": {"nope": "other"}})
    assert (result.matched_count, result.modified_count) == (1, 0)
    assert one(coll, 1) == {"_id": 1, "a": 1}


def test_set_on_insert_applies_only_when_upserting(coll: Collection[Doc]) -> None:
    update = {"$set": {"seen": 1}, "$setOnInsert": {"created": "first"}}
    inserted = coll.update_one({"_id": "u"}, update, upsert=True)
    assert inserted.upserted_id == "u"
    assert one(coll, "u") == {"_id": "u", "seen": 1, "created": "first"}
    updated = coll.update_one({"_id": "u"}, {"$set": {"seen": 2}, "$setOnInsert": {"created": "second"}},
                              upsert=True)
    assert updated.upserted_id is None
    assert (updated.matched_count, updated.modified_count) == (1, 1)
    assert one(coll, "u") == {"_id": "u", "seen": 2, "created": "first"}


def test_current_date(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1})
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    coll.update_one({"_id": 1}, {"$currentDate": {"d": True, "explicit": {"$type": "date"},
                                                  "ts": {"$type": "timestamp"}}})
    doc = one(coll, 1)
    assert isinstance(doc["d"], dt.datetime)
    assert isinstance(doc["explicit"], dt.datetime)
    assert isinstance(doc["ts"], Timestamp)
    # PyMongo hands out naive UTC datetimes; allow for a server clock a little off ours.
    assert abs((doc["d"] - before).total_seconds()) < 60
    assert abs(doc["ts"].time - before.replace(tzinfo=dt.UTC).timestamp()) < 60


def test_conflicting_operators_on_one_path_fail(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": 1})
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {"$set": {"a": 2}, "$inc": {"a": 1}})
    assert info.value.code == 40  # ConflictingUpdateOperators
    assert one(coll, 1) == {"_id": 1, "a": 1}


def test_conflicting_paths_in_one_operator_fail(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": {"b": 1}})
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {"$set": {"a": {}, "a.b": 2}})
    assert info.value.code == 40  # ConflictingUpdateOperators
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {"$rename": {"x": "a.b"}, "$unset": {"a": ""}})
    assert info.value.code == 40
    assert one(coll, 1) == {"_id": 1, "a": {"b": 1}}


def test_set_of_id_to_its_own_value_is_allowed(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": 1})
    result = coll.update_one({"_id": 1}, {"$set": {"_id": 1, "a": 2}})
    assert (result.matched_count, result.modified_count) == (1, 1)
    assert one(coll, 1) == {"_id": 1, "a": 2}


def test_set_of_id_fails_as_immutable(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": 1})
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {"$set": {"_id": 2}})
    assert info.value.code == 66  # ImmutableField
    assert ids(coll) == [1]


# -- replacement, upsert, multi ---------------------------------------------------------------------------
def test_replace_one_keeps_id(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": 1, "b": 2})
    result = coll.replace_one({"a": 1}, {"c": 3})
    assert (result.matched_count, result.modified_count) == (1, 1)
    stored = one(coll, 1)
    assert stored == {"_id": 1, "c": 3}
    assert list(stored) == ["_id", "c"]


def test_replace_one_with_the_same_id_is_allowed(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": 1})
    coll.replace_one({"_id": 1}, {"_id": 1, "a": 2})
    assert one(coll, 1) == {"_id": 1, "a": 2}


def test_replace_one_changing_id_fails(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": 1})
    with pytest.raises(WriteError) as info:
        coll.replace_one({"_id": 1}, {"_id": 2, "a": 2})
    assert info.value.code == 66  # ImmutableField
    assert ids(coll) == [1]
    assert one(coll, 1) == {"_id": 1, "a": 1}


def test_replace_one_upsert(coll: Collection[Doc]) -> None:
    result = coll.replace_one({"_id": "r"}, {"v": 1}, upsert=True)
    assert result.upserted_id == "r"
    assert result.matched_count == 0
    assert one(coll, "r") == {"_id": "r", "v": 1}


def test_update_one_upsert_creates_doc_from_query_equalities(coll: Collection[Doc]) -> None:
    result = coll.update_one({"name": "x", "meta.kind": "k", "n": {"$gt": 1}}, {"$set": {"v": 1}}, upsert=True)
    assert result.matched_count == 0
    assert result.modified_count == 0
    assert isinstance(result.upserted_id, ObjectId)
    stored = one(coll, result.upserted_id)
    assert stored == {"_id": result.upserted_id, "name": "x", "meta": {"kind": "k"}, "v": 1}
    assert next(iter(stored)) == "_id"


def test_update_one_upsert_matching_an_existing_doc_updates_it(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "name": "x"})
    result = coll.update_one({"name": "x"}, {"$set": {"v": 1}}, upsert=True)
    assert result.upserted_id is None
    assert (result.matched_count, result.modified_count) == (1, 1)
    assert coll.count_documents({}) == 1


def test_update_one_touches_only_one_doc(coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": i, "g": "a", "v": 0} for i in range(3)])
    result = coll.update_one({"g": "a"}, {"$set": {"v": 1}})
    assert (result.matched_count, result.modified_count) == (1, 1)
    assert coll.count_documents({"v": 1}) == 1


def test_update_many_counts_matched_and_modified(coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": 1, "g": "a", "v": 0}, {"_id": 2, "g": "a", "v": 1}, {"_id": 3, "g": "a", "v": 0},
                      {"_id": 4, "g": "b", "v": 0}])
    result = coll.update_many({"g": "a"}, {"$set": {"v": 1}})
    assert (result.matched_count, result.modified_count) == (3, 2)
    assert sorted(ids(coll, {"v": 1})) == [1, 2, 3]
    assert one(coll, 4)["v"] == 0


def test_update_many_with_no_match(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1})
    result = coll.update_many({"nope": 1}, {"$set": {"v": 1}})
    assert (result.matched_count, result.modified_count) == (0, 0)
    assert result.upserted_id is None


def test_noop_update_modifies_nothing(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": 1, "s": {"x": [1, 2]}})
    result = coll.update_one({"_id": 1}, {"$set": {"a": 1, "s.x": [1, 2]}})
    assert (result.matched_count, result.modified_count) == (1, 0)
    replaced = coll.replace_one({"_id": 1}, {"a": 1, "s": {"x": [1, 2]}})
    assert (replaced.matched_count, replaced.modified_count) == (1, 0)


# -- deletes --------------------------------------------------------------------------------------------
def test_delete_one_and_delete_many(coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": i, "g": "a" if i < 4 else "b"} for i in range(6)])
    assert coll.delete_one({"g": "a"}).deleted_count == 1
    assert coll.count_documents({"g": "a"}) == 3
    assert coll.delete_many({"g": "a"}).deleted_count == 3
    assert coll.delete_one({"g": "a"}).deleted_count == 0
    assert coll.delete_many({"nope": 1}).deleted_count == 0
    assert sorted(ids(coll)) == [4, 5]
    assert coll.delete_many({}).deleted_count == 2
    assert coll.count_documents({}) == 0


def test_delete_on_a_missing_collection(db: Database[Doc]) -> None:
    assert db["never_created"].delete_many({}).deleted_count == 0


# -- find ---------------------------------------------------------------------------------------------
@pytest.fixture
def people(coll: Collection[Doc]) -> Collection[Doc]:
    coll.insert_many([
        {"_id": 1, "name": "ann", "age": 30, "tags": ["a", "b"], "addr": {"city": "Oslo", "zip": 100}},
        {"_id": 2, "name": "bob", "age": 25, "tags": ["b"], "addr": {"city": "Rome", "zip": 200}},
        {"_id": 3, "name": "cat", "age": 35, "tags": [], "addr": {"city": "Oslo", "zip": 300}},
        {"_id": 4, "name": "dan", "age": "unknown"},
        {"_id": 5, "name": "eve", "age": None, "addr": {"city": "Paris"}},
    ])
    return coll


def test_find_comparisons(people: Collection[Doc]) -> None:
    # Comparisons stay within a BSON type: the string and the null are never > or < a number.
    assert sorted(ids(people, {"age": {"$gt": 25}})) == [1, 3]
    assert sorted(ids(people, {"age": {"$gte": 25}})) == [1, 2, 3]
    assert sorted(ids(people, {"age": {"$lt": 30}})) == [2]
    assert sorted(ids(people, {"age": {"$lte": 30}})) == [1, 2]
    assert sorted(ids(people, {"age": {"$gt": 20, "$lt": 35}})) == [1, 2]


def test_find_ne_matches_missing_fields(people: Collection[Doc]) -> None:
    assert sorted(ids(people, {"addr.city": {"$ne": "Oslo"}})) == [2, 4, 5]
    assert sorted(ids(people, {"age": {"$ne": None}})) == [1, 2, 3, 4]


def test_find_null_matches_missing_fields(people: Collection[Doc]) -> None:
    assert sorted(ids(people, {"age": None})) == [5]
    assert sorted(ids(people, {"addr.zip": None})) == [4, 5]


def test_find_dotted_paths(people: Collection[Doc]) -> None:
    assert sorted(ids(people, {"addr.city": "Oslo"})) == [1, 3]
    assert sorted(ids(people, {"addr.zip": {"$gte": 200}})) == [2, 3]
    assert ids(people, {"addr": {"city": "Paris"}}) == [5]  # whole sub-document equality
    assert ids(people, {"addr": {"city": "Oslo"}}) == []


def test_find_arrays(people: Collection[Doc]) -> None:
    assert sorted(ids(people, {"tags": "b"})) == [1, 2]
    assert ids(people, {"tags": ["b"]}) == [2]
    assert ids(people, {"tags": []}) == [3]
    assert ids(people, {"tags": {"$size": 2}}) == [1]
    assert sorted(ids(people, {"tags": {"$all": ["a", "b"]}})) == [1]


def test_find_in_and_nin(people: Collection[Doc]) -> None:
    assert sorted(ids(people, {"name": {"$in": ["ann", "dan", "zed"]}})) == [1, 4]
    assert sorted(ids(people, {"tags": {"$in": ["a", "x"]}})) == [1]
    assert sorted(ids(people, {"addr.city": {"$nin": ["Oslo", "Rome"]}})) == [4, 5]


def test_find_exists(people: Collection[Doc]) -> None:
    assert sorted(ids(people, {"addr": {"$exists": True}})) == [1, 2, 3, 5]
    assert ids(people, {"addr": {"$exists": False}}) == [4]
    assert sorted(ids(people, {"age": {"$exists": True}})) == [1, 2, 3, 4, 5]  # null counts as present
    assert sorted(ids(people, {"addr.zip": {"$exists": False}})) == [4, 5]


def test_find_logical_operators(people: Collection[Doc]) -> None:
    assert ids(people, {"$and": [{"addr.city": "Oslo"}, {"age": {"$gt": 30}}]}) == [3]
    assert sorted(ids(people, {"$or": [{"name": "bob"}, {"age": {"$gte": 35}}]})) == [2, 3]
    # $not also matches documents whose value is not a number or is missing.
    assert sorted(ids(people, {"age": {"$not": {"$gt": 25}}})) == [2, 4, 5]
    assert sorted(ids(people, {"$nor": [{"name": "ann"}, {"addr.city": "Oslo"}]})) == [2, 4, 5]


def test_find_sort_skip_limit(people: Collection[Doc]) -> None:
    young_first = [1, 2, 3]
    assert ids(people, {"age": {"$type": "number"}}, sort=[("age", ASCENDING)]) == [2, 1, 3]
    assert ids(people, {"_id": {"$in": young_first}}, sort=[("age", DESCENDING)]) == [3, 1, 2]
    assert ids(people, sort=[("_id", DESCENDING)], skip=1, limit=2) == [4, 3]
    assert ids(people, sort=[("addr.city", ASCENDING), ("_id", DESCENDING)]) == [4, 3, 1, 5, 2]
    assert ids(people, sort=[("_id", ASCENDING)], skip=10) == []
    assert len(list(people.find({}, limit=3))) == 3


def test_find_projection_inclusion(people: Collection[Doc]) -> None:
    assert people.find_one({"_id": 1}, {"name": 1}) == {"_id": 1, "name": "ann"}
    assert people.find_one({"_id": 1}, {"name": 1, "_id": 0}) == {"name": "ann"}
    assert people.find_one({"_id": 1}, {"addr.city": 1}) == {"_id": 1, "addr": {"city": "Oslo"}}
    assert people.find_one({"_id": 4}, {"addr": 1}) == {"_id": 4}


def test_find_projection_exclusion(people: Collection[Doc]) -> None:
    assert people.find_one({"_id": 2}, {"tags": 0, "addr": 0}) == {"_id": 2, "name": "bob", "age": 25}
    assert people.find_one({"_id": 2}, {"addr.zip": 0, "_id": 0}) == {
        "name": "bob", "age": 25, "tags": ["b"], "addr": {"city": "Rome"}}


def test_find_one_returns_none_when_nothing_matches(people: Collection[Doc]) -> None:
    assert people.find_one({"name": "zed"}) is None


def test_find_on_a_missing_collection_is_empty(db: Database[Doc]) -> None:
    assert list(db["never_created"].find()) == []


def test_find_more_than_one_batch_returns_everything(coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": i, "n": i % 7} for i in range(250)])
    assert ids(coll, sort=[("_id", ASCENDING)]) == list(range(250))
    assert len(list(coll.find({"n": {"$lt": 3}}))) == len([i for i in range(250) if i % 7 < 3])
    assert [d["_id"] for d in coll.find().sort("_id", DESCENDING).batch_size(10)] == list(range(249, -1, -1))


# -- findAndModify --------------------------------------------------------------------------------------
def test_find_one_and_update_returns_before_or_after(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "n": 1})
    before = coll.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}})
    assert before == {"_id": 1, "n": 1}
    after = coll.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER)
    assert after == {"_id": 1, "n": 3}
    assert coll.find_one_and_update({"_id": 2}, {"$inc": {"n": 1}}) is None
    assert coll.count_documents({}) == 1


def test_find_one_and_update_with_sort_and_projection(coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": i, "q": "job", "p": p, "state": "new"} for i, p in [(1, 5), (2, 9), (3, 1)]])
    taken = coll.find_one_and_update({"q": "job", "state": "new"}, {"$set": {"state": "taken"}},
                                     sort=[("p", DESCENDING)], projection={"p": 1, "_id": 0},
                                     return_document=ReturnDocument.AFTER)
    assert taken == {"p": 9}
    assert one(coll, 2)["state"] == "taken"
    assert coll.count_documents({"state": "new"}) == 2


def test_find_one_and_update_that_fails_on_its_projection_writes_nothing(client: MongoClient[Doc],
                                                                        coll: Collection[Doc]) -> None:
    """Pins: a projection the stand-in cannot apply failed after the update was made (and a transaction went on to
    commit it). A findAndModify either succeeds with its update or fails without it."""
    coll.insert_one({"_id": 1, "arr": [1, 2, 3], "n": 0})
    try:
        got = coll.find_one_and_update({"_id": 1, "arr": 2}, {"$inc": {"n": 1}}, projection={"arr.$": 1},
                                       return_document=ReturnDocument.AFTER)
    except OperationFailure:
        assert one(coll, 1)["n"] == 0
    else:
        assert got == {"_id": 1, "arr": [2]} and one(coll, 1)["n"] == 1
    n = one(coll, 1)["n"]
    with client.start_session() as session:
        session.start_transaction()
        try:
            coll.find_one_and_update({"_id": 1, "arr": 2}, {"$inc": {"n": 100}}, projection={"arr.$": 1},
                                     session=session)
        except OperationFailure:
            with pytest.raises(OperationFailure) as failed:
                session.commit_transaction()
            assert failed.value.code == 251  # NoSuchTransaction: the statement's failure ended it
            assert one(coll, 1)["n"] == n
        else:
            session.commit_transaction()
            assert one(coll, 1)["n"] == n + 100


def test_find_one_and_update_upsert(coll: Collection[Doc]) -> None:
    before = coll.find_one_and_update({"_id": "a", "kind": "k"}, {"$set": {"v": 1}}, upsert=True)
    assert before is None
    assert one(coll, "a") == {"_id": "a", "kind": "k", "v": 1}
    after = coll.find_one_and_update({"_id": "b"}, {"$set": {"v": 2}}, upsert=True,
                                     return_document=ReturnDocument.AFTER)
    assert after == {"_id": "b", "v": 2}


def test_find_one_and_delete(coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": 1, "p": 3}, {"_id": 2, "p": 7}, {"_id": 3, "p": 5}])
    assert coll.find_one_and_delete({"p": {"$gt": 4}}, sort=[("p", ASCENDING)]) == {"_id": 3, "p": 5}
    assert sorted(ids(coll)) == [1, 2]
    assert coll.find_one_and_delete({"_id": 99}) is None
    assert coll.count_documents({}) == 2


def test_find_one_and_replace(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 1, "a": 1})
    assert coll.find_one_and_replace({"a": 1}, {"b": 2}) == {"_id": 1, "a": 1}
    assert one(coll, 1) == {"_id": 1, "b": 2}
    after = coll.find_one_and_replace({"_id": 1}, {"c": 3}, return_document=ReturnDocument.AFTER)
    assert after == {"_id": 1, "c": 3}
    upserted = coll.find_one_and_replace({"_id": 2}, {"d": 4}, upsert=True, return_document=ReturnDocument.AFTER)
    assert upserted == {"_id": 2, "d": 4}


# -- counting and distinct ------------------------------------------------------------------------------
def test_count_documents(people: Collection[Doc]) -> None:
    assert people.count_documents({}) == 5
    assert people.count_documents({"addr.city": "Oslo"}) == 2
    assert people.count_documents({"nope": 1}) == 0
    assert people.count_documents({}, skip=1, limit=2) == 2
    assert people.count_documents({}, skip=4) == 1


def test_count_documents_on_a_missing_collection(db: Database[Doc]) -> None:
    assert db["never_created"].count_documents({}) == 0


def test_estimated_document_count(people: Collection[Doc], db: Database[Doc]) -> None:
    assert people.estimated_document_count() == 5
    assert db["never_created"].estimated_document_count() == 0


def test_distinct(people: Collection[Doc]) -> None:
    assert sorted(people.distinct("addr.city")) == ["Oslo", "Paris", "Rome"]
    assert sorted(people.distinct("tags", {"_id": {"$in": [1, 2]}})) == ["a", "b"]  # array elements, each once
    assert people.distinct("name", {"addr.city": "Oslo"}) in (["ann", "cat"], ["cat", "ann"])
    assert people.distinct("nope") == []


# -- aggregate ------------------------------------------------------------------------------------------
@pytest.fixture
def orders(coll: Collection[Doc]) -> Collection[Doc]:
    coll.insert_many([
        {"_id": 1, "cust": "a", "qty": 2, "status": "paid"},
        {"_id": 2, "cust": "b", "qty": 5, "status": "paid"},
        {"_id": 3, "cust": "a", "qty": 1, "status": "paid"},
        {"_id": 4, "cust": "c", "qty": 9, "status": "open"},
        {"_id": 5, "cust": "b", "qty": 3, "status": "paid"},
    ])
    return coll


def test_aggregate_match_group_sort_limit(orders: Collection[Doc]) -> None:
    out = list(orders.aggregate([
        {"$match": {"status": "paid"}},
        {"$group": {"_id": "$cust", "total": {"$sum": "$qty"}, "n": {"$sum": 1}}},
        {"$sort": {"total": -1}},
        {"$limit": 1},
    ]))
    assert out == [{"_id": "b", "total": 8, "n": 2}]


def test_aggregate_project(orders: Collection[Doc]) -> None:
    out = list(orders.aggregate([
        {"$match": {"cust": "a"}},
        {"$sort": {"_id": 1}},
        {"$project": {"_id": 0, "cust": 1, "double": {"$multiply": ["$qty", 2]}}},
    ]))
    assert out == [{"cust": "a", "double": 4}, {"cust": "a", "double": 2}]


def test_aggregate_count(orders: Collection[Doc]) -> None:
    assert list(orders.aggregate([{"$match": {"status": "paid"}}, {"$count": "paid"}])) == [{"paid": 4}]
    assert list(orders.aggregate([{"$match": {"status": "nope"}}, {"$count": "n"}])) == []


def test_aggregate_group_over_nothing_gives_nothing(orders: Collection[Doc]) -> None:
    pipeline: list[Doc] = [{"$match": {"status": "nope"}}, {"$group": {"_id": None, "n": {"$sum": 1}}}]
    assert list(orders.aggregate(pipeline)) == []


def test_aggregate_on_a_missing_collection_is_empty(db: Database[Doc]) -> None:
    assert list(db["never_created"].aggregate([{"$match": {}}])) == []


# -- collections, databases, indexes --------------------------------------------------------------------
def test_create_list_and_drop_collections(client: MongoClient[Doc], db: Database[Doc], db_name: str) -> None:
    db.create_collection("one")
    db["two"].insert_one({"x": 1})  # created implicitly
    assert sorted(db.list_collection_names()) == ["one", "two"]
    assert db_name in client.list_database_names()
    db.drop_collection("one")
    assert db.list_collection_names() == ["two"]
    db["two"].drop()
    assert db.list_collection_names() == []
    assert list(db["two"].find()) == []


def test_create_collection_with_pre_and_post_images(db: Database[Doc]) -> None:
    db.create_collection("imaged", changeStreamPreAndPostImages={"enabled": True})
    [info] = list(db.list_collections(filter={"name": "imaged"}))
    assert info["type"] == "collection"
    assert info["options"]["changeStreamPreAndPostImages"] == {"enabled": True}


def test_coll_mod_enables_pre_and_post_images(db: Database[Doc]) -> None:
    db.create_collection("later")
    [info] = list(db.list_collections(filter={"name": "later"}))
    assert "changeStreamPreAndPostImages" not in info["options"]
    db.command("collMod", "later", changeStreamPreAndPostImages={"enabled": True})
    [info] = list(db.list_collections(filter={"name": "later"}))
    assert info["options"]["changeStreamPreAndPostImages"]["enabled"] is True


def test_coll_mod_on_a_missing_collection_fails(db: Database[Doc]) -> None:
    with pytest.raises(OperationFailure) as info:
        db.command("collMod", "never_created", changeStreamPreAndPostImages={"enabled": True})
    assert info.value.code == 26  # NamespaceNotFound


def test_unique_index_rejects_duplicates(coll: Collection[Doc]) -> None:
    name = coll.create_index("email", unique=True)
    assert name == "email_1"
    indexes = coll.index_information()
    assert set(indexes) == {"_id_", "email_1"}
    assert indexes["email_1"]["key"] == [("email", 1)]
    assert indexes["email_1"]["unique"] is True
    coll.insert_one({"_id": 1, "email": "a@x"})
    with pytest.raises(DuplicateKeyError) as info:
        coll.insert_one({"_id": 2, "email": "a@x"})
    assert info.value.code == 11000
    details = info.value.details
    assert details is not None
    assert details["keyPattern"] == {"email": 1}
    assert details["keyValue"] == {"email": "a@x"}
    assert ids(coll) == [1]


def test_unique_index_rejects_duplicates_made_by_update(coll: Collection[Doc]) -> None:
    coll.create_index("email", unique=True)
    coll.insert_many([{"_id": 1, "email": "a@x"}, {"_id": 2, "email": "b@x"}])
    with pytest.raises(DuplicateKeyError) as info:
        coll.update_one({"_id": 2}, {"$set": {"email": "a@x"}})
    assert info.value.code == 11000
    assert one(coll, 2)["email"] == "b@x"


def test_unique_index_over_existing_duplicates_fails(coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": 1, "k": "same"}, {"_id": 2, "k": "same"}])
    with pytest.raises(OperationFailure) as info:
        coll.create_index("k", unique=True)
    assert info.value.code == 11000
    assert "same" in str(info.value)  # the duplicate key is named
    assert set(coll.index_information()) == {"_id_"}


def test_unique_index_over_missing_fields(coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 3, "k": 1}])
    with pytest.raises(OperationFailure) as info:  # a missing field is null: two nulls collide
        coll.create_index("k", unique=True)
    assert info.value.code == 11000
    coll.create_index("k", unique=True, sparse=True)  # a sparse index leaves them out
    assert coll.index_information()["k_1"]["sparse"] is True


def test_unique_index_over_duplicates_a_partial_filter_leaves_out(coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": 1, "k": "a", "live": False}, {"_id": 2, "k": "a", "live": False},
                      {"_id": 3, "k": "a", "live": True}, {"_id": 4, "k": {"x": [1]}, "live": True}])
    coll.create_index("k", unique=True, partialFilterExpression={"live": True})
    coll.insert_one({"_id": 6, "k": "a", "live": False})  # outside the filter: no constraint
    with pytest.raises(DuplicateKeyError):  # two live documents with the same sub-document
        coll.insert_one({"_id": 5, "k": {"x": [1]}, "live": True})
    coll.drop_index("k_1")
    coll.update_one({"_id": 1}, {"$set": {"live": True}})  # now two live documents share "a"
    with pytest.raises(OperationFailure) as info:
        coll.create_index("k", unique=True, partialFilterExpression={"live": True})
    assert info.value.code == 11000
    assert set(coll.index_information()) == {"_id_"}


def test_a_bad_partial_filter_is_refused(coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": 1, "k": 1}, {"_id": 2, "k": 1}])
    with pytest.raises(OperationFailure) as info:
        coll.create_index("k", unique=True, partialFilterExpression={"k": {"$nosuch": 1}})
    assert info.value.code in (2, 67)  # BadValue (the stand-in), CannotCreateIndex (some servers)
    assert "$nosuch" in str(info.value)
    assert set(coll.index_information()) == {"_id_"}


def test_an_index_name_taken_by_another_index_is_refused(coll: Collection[Doc]) -> None:
    coll.create_index("k", name="mine")
    coll.create_index("k", name="mine")  # the same index again: fine
    with pytest.raises(OperationFailure) as info:
        coll.create_index("j", name="mine")
    assert info.value.code == 86  # IndexKeySpecsConflict
    with pytest.raises(OperationFailure) as info:
        coll.create_index("k", name="mine", unique=True)
    assert info.value.code == 85  # IndexOptionsConflict


# -- what the stand-in does not implement ----------------------------------------------------------------
def test_unknown_command_fails_with_command_not_found(db: Database[Doc]) -> None:
    # Real MongoDB answers the same way, so this one runs against both.
    with pytest.raises(OperationFailure) as info:
        db.command("noSuchCommand")
    assert info.value.code == 59  # CommandNotFound
    assert "noSuchCommand" in str(info.value)


def test_unsupported_update_operator_fails_naming_it(mongo: Mongo, coll: Collection[Doc]) -> None:
    if mongo.is_real:
        pytest.skip("real MongoDB implements $bit")
    coll.insert_one({"_id": 1, "flags": 1})
    with pytest.raises(OperationFailure) as info:
        coll.update_one({"_id": 1}, {"$bit": {"flags": {"or": 2}}})
    assert "$bit" in str(info.value)
    assert one(coll, 1) == {"_id": 1, "flags": 1}


# -- garbage on the wire (the stand-in's own robustness) -----------------------------------------------------
def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closes the connection (rather than answering or leaving it open)."""
    sock.settimeout(TIMEOUT)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("message", [
    pytest.param(struct.pack("<iiii", 20, 1, 0, 2013) + b"\xde\xad\xbe\xef", id="op-msg-too-short"),
    pytest.param(struct.pack("<iiii", 24, 1, 0, 9999) + b"\x00" * 8, id="unknown-opcode"),
    pytest.param(struct.pack("<iiii", 3, 1, 0, 2013), id="length-below-header"),
    pytest.param(b"\xff" * 16, id="negative-length"),
    pytest.param(struct.pack("<iiii", 26, 1, 0, 2013) + b"\x00\x00\x00\x00\x00" + b"\x05\x00\x00\x00\x01",
                 id="bad-bson"),
])
def test_garbage_closes_only_that_connection(mongo: Mongo, client: MongoClient[Doc], message: bytes) -> None:
    standin = mongo.need_standin()
    host, _, port = standin.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(message)
        assert _closed_by_peer(sock)
    assert client.admin.command("ping")["ok"] == 1
    with MongoClient[Doc](mongo.uri, serverSelectionTimeoutMS=int(TIMEOUT * 1000)) as fresh:
        assert fresh.admin.command("ping")["ok"] == 1


# -- transactions ---------------------------------------------------------------------------------------
def test_transaction_commit_makes_writes_visible(client: MongoClient[Doc], coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": 1, "v": 1}, {"_id": 2, "v": 2}])
    with client.start_session() as session:
        with session.start_transaction():
            coll.insert_one({"_id": 3, "v": 3}, session=session)
            coll.update_one({"_id": 1}, {"$set": {"v": 10}}, session=session)
            coll.delete_one({"_id": 2}, session=session)
            assert sorted(ids(coll, session=session)) == [1, 3]  # the transaction sees its own writes
        assert not session.in_transaction
    assert list(coll.find(sort=[("_id", ASCENDING)])) == [{"_id": 1, "v": 10}, {"_id": 3, "v": 3}]


def test_transaction_abort_rolls_writes_back(client: MongoClient[Doc], coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": 1, "v": 1}, {"_id": 2, "v": 2}])
    with client.start_session() as session:
        session.start_transaction()
        coll.insert_one({"_id": 3, "v": 3}, session=session)
        coll.update_one({"_id": 1}, {"$set": {"v": 10}, "$unset": {"gone": ""}}, session=session)
        coll.delete_one({"_id": 2}, session=session)
        coll.update_one({"_id": 1}, {"$inc": {"v": 1}}, session=session)
        session.abort_transaction()
    assert list(coll.find(sort=[("_id", ASCENDING)])) == [{"_id": 1, "v": 1}, {"_id": 2, "v": 2}]


def test_with_transaction_commits(client: MongoClient[Doc], coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": "acct", "balance": 10})

    def move(session: Any) -> None:
        coll.update_one({"_id": "acct"}, {"$inc": {"balance": -3}}, session=session)
        coll.insert_one({"_id": "log1", "amount": 3}, session=session)

    with client.start_session() as session:
        session.with_transaction(move)
    assert one(coll, "acct")["balance"] == 7
    assert one(coll, "log1") == {"_id": "log1", "amount": 3}


# -- the async driver -----------------------------------------------------------------------------------
async def test_async_crud_round_trip(aclient: AsyncMongoClient[Doc], db: Database[Doc]) -> None:
    acoll = aclient[db.name]["items"]
    inserted = await acoll.insert_one({"a": 1})
    assert isinstance(inserted.inserted_id, ObjectId)
    await acoll.insert_many([{"_id": i, "n": i} for i in range(250)])
    result = await acoll.update_many({"n": {"$gte": 200}}, {"$set": {"big": True}})
    assert (result.matched_count, result.modified_count) == (50, 50)
    docs = await acoll.find({"n": {"$exists": True}}).sort("_id", ASCENDING).to_list()
    assert [d["_id"] for d in docs] == list(range(250))
    assert await acoll.count_documents({"big": True}) == 50
    deleted = await acoll.delete_many({"big": True})
    assert deleted.deleted_count == 50
    assert await acoll.find_one({"_id": inserted.inserted_id}) == {"_id": inserted.inserted_id, "a": 1}


async def test_async_transaction_abort(aclient: AsyncMongoClient[Doc], db: Database[Doc]) -> None:
    acoll = aclient[db.name]["items"]
    await acoll.insert_one({"_id": 1, "v": 1})
    async with aclient.start_session() as session:
        await session.start_transaction()
        await acoll.update_one({"_id": 1}, {"$set": {"v": 2}}, session=session)
        await acoll.insert_one({"_id": 2}, session=session)
        await session.abort_transaction()
    assert await acoll.find({}).to_list() == [{"_id": 1, "v": 1}]
