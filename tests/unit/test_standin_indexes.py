"""The stand-in's indexes: a filter answered through them gives what a scan of every document gives.

Two mongomock collections get the same documents and the same writes: one in an IndexedStore with indexes,
whose filters the planner answers, the other in mongomock's own store, scanned. Values mix the type brackets
(ints, doubles, booleans, strings, null and missing, ObjectIds, dates, sub-documents, arrays of values and of
sub-documents, values no range can order), so equality across types (``1 == 1.0 == True`` for mongomock),
multikey entries and range bounds are all exercised.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any
from unittest import mock

import mongomock
import pytest
from bson import Binary, Decimal128, Int64, MinKey, ObjectId, Timestamp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from realtime.standin import indexes
from realtime.standin.errors import CommandError
from realtime.standin.indexes import IndexedStore
from realtime.standin.oplog import Oplog
from realtime.standin.store import Store, Transaction

ScanStore = IndexedStore.__bases__[0]  # mongomock's own CollectionStore
INDEXES = {"a_1": [("a", 1)], "a_1_b_-1": [("a", 1), ("b", -1)], "c.d_1": [("c.d", 1)], "b_1": [("b", 1)],
           "b_1_c.d_1": [("b", 1), ("c.d", 1)]}
PATHS = ["a", "a", "b", "c.d", "c", "_id"]
OIDS = [ObjectId("65a000000000000000000001"), ObjectId("65a000000000000000000002")]
DATES = [dt.datetime(2026, 1, 1, 12, 0, 0, 1000 * ms, tzinfo=dt.UTC) for ms in (0, 1, 2)]

# Few values, so that filters meet documents' values often; every bracket, and values equal across brackets.
POOL = [0, 1, 2, -1, 1.0, 2.5, 0.0, float("inf"), Int64(1), Int64(2**40), True, False, None, "", "a", "b", "1",
        str(OIDS[0]), *OIDS, *DATES, Decimal128("1"), Binary(b"x", 0), b"x", float("nan")]
scalars = st.sampled_from(POOL)
values = st.one_of(
    scalars, scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from(["x", "d"]), scalars, max_size=2),
    st.lists(st.lists(scalars, max_size=2), min_size=1, max_size=2),
)
MISSING = object()
maybe = st.one_of(st.just(MISSING), values)
sub = st.one_of(st.just(MISSING), st.none(), scalars, scalars, st.fixed_dictionaries({}, optional={"d": values}),
                st.lists(st.fixed_dictionaries({}, optional={"d": scalars}), max_size=3))


@st.composite
def documents(draw: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(0, 30))):
        doc: dict[str, Any] = {"_id": draw(st.sampled_from([i, float(i) + 0.5, f"id{i}", {"k": i}]))}
        for name, strategy in (("a", maybe), ("b", maybe), ("c", sub)):
            value = draw(strategy)
            if value is not MISSING:
                doc[name] = value
        out.append(doc)
    return out


@dataclass(frozen=True)
class Seen:
    """In a drawn filter, the documents' ``n``-th scalar value (filled in by :func:`resolve`): so that filters often
    name values the documents hold."""

    n: int


def resolve(value: Any, seen: list[Any]) -> Any:
    if isinstance(value, Seen):
        return seen[value.n % len(seen)] if seen else None
    if isinstance(value, dict):
        return {k: resolve(v, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, seen) for v in value]
    return value


def scalars_in(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in scalars_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in scalars_in(v)]
    return [value]


def for_docs(filter: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
    return resolve(filter, [v for doc in docs for k, x in doc.items() if k != "_id" for v in scalars_in(x)])


_range = st.sampled_from(["$gt", "$gte", "$lt", "$lte"])
_scalars = st.one_of(scalars, st.builds(Seen, st.integers(0, 200)))
_values = st.one_of(_scalars, _scalars, st.lists(_scalars, max_size=3), st.lists(st.lists(_scalars, max_size=2),
                                                                                  min_size=1, max_size=1),
                    st.dictionaries(st.sampled_from(["x", "d"]), _scalars, max_size=2))
condition = st.one_of(
    _values,
    st.builds(lambda v: {"$eq": v}, _values),
    st.builds(lambda vs: {"$in": vs}, st.lists(_values, max_size=3)),
    st.dictionaries(_range, _scalars, min_size=1, max_size=2),
    st.dictionaries(_range, _scalars, min_size=1, max_size=2),
    st.builds(lambda v: {"$ne": v}, _scalars),
    st.builds(lambda v, w: {"$gte": v, "$ne": w}, _scalars, _scalars),
    st.just({"$exists": True}),
    st.just({}),
)
clause = st.builds(lambda path, c: {path: c}, st.sampled_from(PATHS), condition)
filters = st.recursive(  # (with Seen values in them: see for_docs)
    st.builds(lambda clauses: {k: v for c in clauses for k, v in c.items()}, st.lists(clause, min_size=1, max_size=3)),
    lambda inner: st.one_of(st.builds(lambda fs: {"$and": fs}, st.lists(inner, min_size=1, max_size=3)),
                            st.builds(lambda fs: {"$or": fs}, st.lists(inner, min_size=1, max_size=3)),
                            st.builds(lambda f, g: {**f, "$or": [g]}, inner, inner)),
    max_leaves=6,
)


def always_planned() -> Any:
    """Plans are used however many documents they read (a scan is not cheaper here: it is what they are held to)."""
    return mock.patch.object(indexes, "SCAN_SHARE", math.inf)


def pair(docs: list[dict[str, Any]]) -> tuple[Any, Any]:
    """The indexed collection and the scanned one, holding the same documents in the same order."""
    client = mongomock.MongoClient()
    indexed, scanned = client.db.indexed, client.db.scanned
    client.db._store._collections["scanned"] = ScanStore("scanned")
    for name, key in INDEXES.items():
        indexed._store.create_index(name, {"key": key})
    for doc in docs:
        for coll in (indexed, scanned):
            coll.insert_one(dict(doc))
    assert isinstance(indexed._store, IndexedStore) and not isinstance(scanned._store, IndexedStore)
    return indexed, scanned


def outcome(fn: Any) -> Any:
    try:
        return ("ok", fn())
    except Exception as exc:  # mongomock's own errors: compared by type
        return ("error", type(exc).__name__)


def ids(docs: Any) -> list[Any]:
    return [d["_id"] for d in docs]


def scan_ids(coll: Any, filter: dict[str, Any]) -> list[Any]:
    return [d["_id"] for d in coll._store.documents if mongomock.filtering.filter_applies(filter, d)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), filters, st.sampled_from([None, [("a", 1)], [("b", -1), ("_id", 1)]]), st.integers(0, 2),
       st.integers(0, 3))
def test_a_find_through_the_indexes_gives_what_a_scan_gives(docs: list[dict[str, Any]], filter: dict[str, Any],
                                                           sort: Any, skip: int, limit: int) -> None:
    with always_planned():
        check_find(docs, for_docs(filter, docs), sort, skip, limit)


def check_find(docs: list[dict[str, Any]], filter: dict[str, Any], sort: Any, skip: int, limit: int) -> None:
    indexed, scanned = pair(docs)
    # (as mongomock gives it to the store: datetimes as the naive UTC ones it stores)
    plan = indexed._store.plan(mongomock.helpers.patch_datetime_awareness_in_document(filter))
    event("planned" if plan is not None else "scanned")

    def find(coll: Any) -> Any:
        cursor = coll.find(filter)
        if sort:
            cursor = cursor.sort(sort)
        return ids(cursor.skip(skip).limit(limit))

    expected = outcome(lambda: find(scanned))
    if expected[0] == "error":
        # mongomock failed to compare a value (a Decimal128 with a number, say) on a document the planned condition
        # leaves out, but that the scan read for another condition first: no answer to compare with.
        return
    if plan is not None:  # what the plan names holds every match
        matches = {repr(d["_id"]) for d in scanned.find(filter)}
        named = {repr(indexed._store._documents[k]["_id"]) for k in indexed._store.candidates(plan)}
        assert matches <= named
    assert outcome(lambda: find(indexed)) == expected
    assert outcome(lambda: indexed.count_documents(filter)) == outcome(lambda: scanned.count_documents(filter))


updates = st.one_of(
    st.builds(lambda v: {"$set": {"a": v}}, values), st.builds(lambda v: {"$set": {"c.d": v}}, scalars),
    st.builds(lambda v: {"$push": {"b": v}}, scalars), st.just({"$unset": {"a": ""}}),
    st.just({"$inc": {"n": 1}}), st.builds(lambda v: {"$set": {"b": [v, v]}}, scalars),
)
writes = st.one_of(
    st.tuples(st.just("update_one"), filters, updates), st.tuples(st.just("update_many"), filters, updates),
    st.tuples(st.just("delete_one"), filters), st.tuples(st.just("delete_many"), filters),
    st.tuples(st.just("replace_one"), filters, st.fixed_dictionaries({"a": values, "b": values})),
    st.tuples(st.just("insert_one"), st.fixed_dictionaries({"a": values}, optional={"c": sub, "b": values})),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.lists(writes, max_size=8), filters)
def test_writes_keep_the_indexes_in_step_with_the_documents(docs: list[dict[str, Any]], ops: list[tuple[Any, ...]],
                                                          filter: dict[str, Any]) -> None:
    ops = [tuple(for_docs(part, docs) if isinstance(part, dict) else part for part in op) for op in ops]
    filter = for_docs(filter, docs)
    with always_planned():
        check_writes(docs, ops, filter)


def check_writes(docs: list[dict[str, Any]], ops: list[tuple[Any, ...]], filter: dict[str, Any]) -> None:
    indexed, scanned = pair(docs)
    for op in ops:
        name, *args = op
        if name == "insert_one":
            args = [dict(args[0], _id=ObjectId())]
        results = [outcome(lambda coll=coll, name=name, args=args: repr(
            getattr(coll, name)(*[dict(a) for a in args]).raw_result)) for coll in (indexed, scanned)]
        if results == [("ok", results[0][1]), ("error", "NotImplementedError")]:
            return  # the scan failed comparing a document the indexes left out (see the test above)
        assert results[0] == results[1]  # the same writes succeed and fail, with the same counts
        assert ids(indexed.find()) == ids(scanned.find())
        assert list(indexed.find()) == list(scanned.find())
    assert indexed._store.check() == []
    expected = outcome(lambda: ids(scanned.find(filter)))
    if expected[0] == "ok":
        assert outcome(lambda: ids(indexed.find(filter))) == expected


SMALL = [0, 1, 2, 1.0, 2.5, True, False, None, "a", "b", str(OIDS[0]), OIDS[0], DATES[0], DATES[1]]
small = st.sampled_from(SMALL)
_one = st.one_of(small, st.builds(Seen, st.integers(0, 50)))
one_condition = st.one_of(
    _one, st.lists(_one, max_size=2), st.builds(lambda v: {"$eq": v}, _one),
    st.builds(lambda vs: {"$in": vs}, st.lists(_one, max_size=3)),
    st.dictionaries(_range, _one, min_size=1, max_size=2), st.dictionaries(_range, _one, min_size=2, max_size=2),
)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.just(MISSING), small, small, st.lists(small, max_size=3)),
                          st.one_of(st.just(MISSING), small, st.fixed_dictionaries({"x": small}))), max_size=12),
       one_condition)
def test_one_condition_on_an_indexed_field(fields: list[tuple[Any, Any]], condition: Any) -> None:
    """One condition on the first field of a compound index (whose second field some documents lack, or cannot
    have: ``b.x`` under a scalar ``b``), its value mostly one the documents hold: ranges' bounds, equality across
    brackets, null and missing, arrays."""
    docs = [{"_id": i, **({"a": a} if a is not MISSING else {}), **({"b": b} if b is not MISSING else {})}
            for i, (a, b) in enumerate(fields)]
    filter = {"a": resolve(condition, [v for a, _ in fields if a is not MISSING for v in scalars_in(a)])}
    with always_planned():
        client = mongomock.MongoClient()
        indexed, scanned = client.db.indexed, client.db.scanned
        client.db._store._collections["scanned"] = ScanStore("scanned")
        indexed._store.create_index("a_1_b.x_1", {"key": [("a", 1), ("b.x", 1)]})
        for doc in docs:
            indexed.insert_one(dict(doc))
            scanned.insert_one(dict(doc))
        expected = outcome(lambda: ids(scanned.find(filter)))
        planned = indexed._store.plan(mongomock.helpers.patch_datetime_awareness_in_document(filter)) is not None
        event("planned" if planned else "scanned")
        assert outcome(lambda: ids(indexed.find(filter))) == expected


def test_the_planner_uses_the_indexes() -> None:
    """The equivalence above is not vacuous: these filters are answered from an index, reading few entries."""
    indexed, _ = pair([{"_id": i, "a": i % 10, "b": f"s{i % 7}", "c": [{"d": i}, {"d": -i}]} for i in range(1000)])
    store = indexed._store
    cases = {
        "a_1": [{"a": 3}, {"a": {"$in": [1, 2]}}, {"a": {"$gte": 8}}, {"a": 3.0}],
        "a_1_b_-1": [{"a": 3, "b": "s2"}, {"a": {"$eq": 4}, "b": "s1"}, {"a": {"$in": [1, 2]}, "b": {"$gt": "s5"}},
                     {"$and": [{"a": 3}, {"b": {"$in": ["s1", "s2"]}}]}],
        "c.d_1": [{"c.d": 5}, {"c.d": {"$lt": -995}}],
        "_id_": [{"_id": 5}, {"_id": {"$in": [1, 2, 3000]}}],
    }
    for name, filters_ in cases.items():
        for filter in filters_:
            plan = store.plan(filter)
            assert plan is not None, filter
            assert plan.describe()["indexName"] == name, filter
            assert plan.cost <= 200, filter
            assert ids(indexed.find(filter)) == scan_ids(indexed, filter)
    union = store.plan({"$or": [{"a": 1}, {"_id": 5}]})
    assert union is not None and union.describe()["stage"] == "OR"
    for unplanned in ({}, {"n": 1}, {"a": {"$ne": 1}}, {"a": {"$exists": True}}, {"$or": [{"a": 1}, {"n": 2}]},
                      {"a": {"$gte": 0}}):  # the last: every document, cheaper scanned
        assert store.plan(unplanned) is None, unplanned


@pytest.mark.parametrize("value", [1, 1.0, True, Int64(1)])
def test_numbers_equal_to_a_boolean_are_found_as_a_scan_finds_them(value: Any) -> None:
    """mongomock's equality is Python's: 1, 1.0 and True are equal there, in separate brackets here."""
    indexed, scanned = pair([{"_id": 1, "a": 1}, {"_id": 2, "a": 1.0}, {"_id": 3, "a": True}, {"_id": 4, "a": [True]},
                             {"_id": 5, "a": "1"}])
    assert ids(indexed.find({"a": value})) == ids(scanned.find({"a": value})) != []
    assert ids(indexed.find({"a": {"$in": [value]}})) == ids(scanned.find({"a": {"$in": [value]}}))


def test_an_object_id_finds_its_hex_string_in_an_array_as_a_scan_does() -> None:
    """Another of mongomock's equalities: an ObjectId equals its hex string inside an array."""
    indexed, scanned = pair([{"_id": 1, "a": [str(OIDS[0])]}, {"_id": 2, "a": str(OIDS[0])}, {"_id": 3, "a": OIDS[0]}])
    with always_planned():
        assert ids(indexed.find({"a": OIDS[0]})) == ids(scanned.find({"a": OIDS[0]})) == [1, 3]


@pytest.mark.parametrize("value", [Decimal128("1"), Timestamp(1, 1), MinKey()])
def test_a_range_meets_the_values_mongomock_cannot_compare_as_a_scan_does(value: Any) -> None:
    """A scan fails on them ("not supported" from the stand-in); the index reads them too, so it fails alike rather
    than leave them out of the answer."""
    indexed, scanned = pair([{"_id": 1, "a": 5}, {"_id": 2, "a": value}, {"_id": 3, "a": "x"}])
    with always_planned():
        assert indexed._store.plan({"a": {"$gt": 0}}) is not None
        assert outcome(lambda: ids(indexed.find({"a": {"$gt": 0}}))) == outcome(
            lambda: ids(scanned.find({"a": {"$gt": 0}}))) == ("error", "NotImplementedError")


def test_the_stand_ins_own_writes_keep_the_indexes_in_step() -> None:
    """What the stand-in does besides mongomock's writes: upserts, replacements, a failed update put back, a
    duplicate key refused, a transaction's writes undone, a rename."""
    store = Store(Oplog())
    locks: dict[Any, Any] = {}
    store.ensure("db", "c")
    mc = store._mcoll("db", "c")
    mc._store.create_index("a_1", {"key": [("a", 1)]})
    mc._store.create_index("u_1", {"key": [("u", 1)], "unique": True})
    for i in range(20):
        store.insert("db", "c", {"_id": i, "a": i % 3, "u": i, "t": ["x", i]}, None, locks)
    store.update("db", "c", {"a": 1}, {"$set": {"a": 5}}, upsert=False, multi=True, array_filters=None, txn=None,
                 locks=locks)
    store.update("db", "c", {"a": 7}, {"$set": {"u": 100}}, upsert=True, multi=False, array_filters=None, txn=None,
                 locks=locks)
    store.update("db", "c", {"_id": 2}, {"a": 9, "u": 2}, upsert=False, multi=False, array_filters=None, txn=None,
                 locks=locks)
    with pytest.raises(CommandError) as refused:  # the index must see the updated value to refuse it
        store.update("db", "c", {"_id": 3}, {"$set": {"u": 4}}, upsert=False, multi=False, array_filters=None,
                     txn=None, locks=locks)
    assert refused.value.code == 11000
    with pytest.raises(CommandError):  # too big: mongomock changed it in place, the stand-in puts it back
        store.update("db", "c", {"_id": 5}, {"$set": {"a": 6, "big": "x" * (17 << 20)}}, upsert=False, multi=False,
                     array_filters=None, txn=None, locks=locks)
    txn = Transaction({"id": b"s"}, 1)
    store.insert("db", "c", {"_id": 50, "a": 5, "u": 50}, txn, locks)
    store.update("db", "c", {"a": 0}, {"$set": {"a": 8}}, upsert=False, multi=True, array_filters=None, txn=txn,
                 locks=locks)
    store.delete("db", "c", {"a": 5}, limit=0, txn=txn, locks=locks)
    store.abort(txn, locks)
    assert mc._store.check() == []
    assert sorted(ids(mc.find({"a": 5}))) == [1, 4, 7, 10, 13, 16, 19]  # (the ones the abort put back: last)
    assert ids(mc.find({"a": 5})) == scan_ids(mc, {"a": 5})
    assert ids(mc.find({"a": 6})) == []
    store.rename("db", "c", "d", drop_target=False)
    moved = store._mcoll("db", "d")
    assert moved._store.check() == []
    with always_planned():
        assert moved._store.plan({"a": 0}) is not None
        assert sorted(ids(moved.find({"a": {"$in": [0, 9]}}))) == [0, 2, 3, 6, 9, 12, 15, 18]
        assert ids(moved.find({"a": {"$in": [0, 9]}})) == scan_ids(moved, {"a": {"$in": [0, 9]}})
