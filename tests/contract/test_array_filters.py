"""arrayFilters and the all-positional $[] (issue 14, item 4): documented as supported, they failed with "not
implemented in mongomock yet" or a Python error. Each assertion is what MongoDB 7.0 answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import WriteError

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]


@pytest.fixture
def coll(client: MongoClient[Doc], db_name: str) -> Iterator[Collection[Doc]]:
    coll: Collection[Doc] = client[db_name]["grades"]
    coll.insert_one({"_id": 1, "g": [{"s": 5, "m": 0}, {"s": 9, "m": 0}, {"s": 8}], "y": [[1, 2], [3]]})
    yield coll
    client.drop_database(db_name)


def test_array_filters_pick_the_elements_to_update(coll: Collection[Doc]) -> None:
    """Pins: arrayFilters failed with "Array filters are not implemented in mongomock yet"."""
    result = coll.update_one({"_id": 1}, {"$set": {"g.$[x].m": 1}}, array_filters=[{"x.s": {"$gte": 8}}])
    assert (result.matched_count, result.modified_count) == (1, 1)
    assert coll.find_one({"_id": 1}, {"g": 1}) == {"_id": 1, "g": [{"s": 5, "m": 0}, {"s": 9, "m": 1},
                                                                   {"s": 8, "m": 1}]}


def test_nested_placeholders_and_all_positional(coll: Collection[Doc]) -> None:
    """Pins: $[] leaked a Python error."""
    coll.update_one({"_id": 1}, {"$inc": {"y.$[].$[v]": 10}}, array_filters=[{"v": {"$gt": 1}}])
    coll.update_one({"_id": 1}, {"$set": {"g.$[].t": True}})
    doc = coll.find_one({"_id": 1})
    assert doc is not None
    assert doc["y"] == [[1, 12], [13]]
    assert all(element["t"] is True for element in doc["g"])


def test_array_filters_in_update_many_and_find_one_and_update(coll: Collection[Doc]) -> None:
    coll.insert_one({"_id": 2, "g": [{"s": 1}, {"s": 10}], "y": []})
    coll.update_many({}, {"$set": {"g.$[hi].top": True}}, array_filters=[{"hi.s": {"$gte": 9}}])
    assert [d["g"] for d in coll.find({}, {"g": 1}).sort("_id", 1)] == [
        [{"s": 5, "m": 0}, {"s": 9, "m": 0, "top": True}, {"s": 8}], [{"s": 1}, {"s": 10, "top": True}]]
    after = coll.find_one_and_update({"_id": 2}, {"$unset": {"g.$[e].top": ""}}, array_filters=[{"e.top": True}],
                                     return_document=ReturnDocument.AFTER)
    assert after is not None and after["g"] == [{"s": 1}, {"s": 10}]


@pytest.mark.parametrize(("update", "filters", "code"), [
    ({"$set": {"g.$[z].m": 1}}, [], 2),            # no filter for the identifier
    ({"$set": {"g.$[].m": 1}}, [{"q": 1}], 9),     # a filter the update does not use
    ({"$set": {"nope.$[].m": 1}}, None, 2),        # the array is not there
    ({"$set": {"g.2.s.$[]": 1}}, None, 2),         # not an array
])
def test_what_the_server_refuses(coll: Collection[Doc], update: Doc, filters: list[Doc] | None, code: int) -> None:
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, update, array_filters=filters)
    assert info.value.code == code
