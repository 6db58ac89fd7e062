"""Snapshot reads through the indexes and their history give what reading the oplog back gives.

A snapshot read (``readConcern: {level: "snapshot", atClusterTime}``) rebuilds the documents a filter matched at a
past cluster time. With an index on the filter's field it finds them through the index and the history of the
collection's changes; without one it reads the oplog back from the newest entry. Random histories (inserts,
updates, replacements, deletes, transactions committed, aborted and left open, an index created part-way, an oplog
that drops its oldest entries) are read at every cluster time, both ways, and must give the same documents.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from bson import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime.standin.errors import CommandError
from realtime.standin.oplog import ClusterClock, Oplog
from realtime.standin.store import Locked, Store, Transaction

VALUES = [0, 1, 2, 1.0, "x", None, [1, 2], [2]]
values = st.sampled_from(VALUES)
operations = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 9), values),
    st.tuples(st.just("update"), st.integers(0, 9), values),
    st.tuples(st.just("update_many"), values, values),
    st.tuples(st.just("replace"), st.integers(0, 9), values),
    st.tuples(st.just("delete"), st.integers(0, 9)),
    st.tuples(st.just("delete_many"), values),
    st.tuples(st.just("txn"), st.sampled_from(["commit", "abort", "open"]), st.integers(0, 9), values),
    st.tuples(st.just("index")),
)
queries = st.one_of(
    st.builds(lambda v: {"a": v}, values), st.builds(lambda vs: {"a": {"$in": vs}}, st.lists(values, max_size=3)),
    st.builds(lambda v: {"a": {"$gte": v}}, st.sampled_from([0, 1, 1.5, "x"])),
    st.builds(lambda v, w: {"$or": [{"a": v}, {"_id": w}]}, values, st.integers(0, 9)),
    st.builds(lambda w: {"_id": {"$in": [w, w + 1]}}, st.integers(0, 9)),
    st.builds(lambda v: {"a": v, "b": {"$ne": 3}}, values),
)


class Clock(ClusterClock):
    """One second per change: every change its own cluster time, whatever the machine's speed."""

    def __init__(self) -> None:
        self.seconds = 1_000
        super().__init__(lambda: self.seconds)

    def tick(self) -> Timestamp:
        self.seconds += 1
        return super().tick()


def run(ops: list[tuple[Any, ...]], max_entries: int) -> tuple[Store, list[Timestamp], list[Transaction]]:
    """A store after ``ops``, the cluster time after each, and the transactions left open."""
    store = Store(Oplog(max_entries=max_entries, clock=Clock()))
    locks: dict[Any, Transaction] = {}
    store.ensure("db", "c")
    times, open_txns = [store.oplog.latest_ts], []
    number = 0
    for op in ops:
        kind, *args = op
        try:
            if kind == "insert":
                store.insert("db", "c", {"_id": args[0], "a": args[1], "b": 3}, None, locks)
            elif kind == "update":
                store.update("db", "c", {"_id": args[0]}, {"$set": {"a": args[1]}}, upsert=False, multi=False,
                             array_filters=None, txn=None, locks=locks)
            elif kind == "update_many":
                store.update("db", "c", {"a": args[0]}, {"$set": {"a": args[1]}}, upsert=False, multi=True,
                             array_filters=None, txn=None, locks=locks)
            elif kind == "replace":
                store.update("db", "c", {"_id": args[0]}, {"a": args[1]}, upsert=True, multi=False,
                             array_filters=None, txn=None, locks=locks)
            elif kind == "delete":
                store.delete("db", "c", {"_id": args[0]}, limit=1, txn=None, locks=locks)
            elif kind == "delete_many":
                store.delete("db", "c", {"a": args[0]}, limit=0, txn=None, locks=locks)
            elif kind == "txn":
                number += 1
                txn = Transaction({"id": b"s"}, number)
                store.update("db", "c", {"_id": args[1]}, {"$set": {"a": args[2]}}, upsert=True, multi=False,
                             array_filters=None, txn=txn, locks=locks)
                store.delete("db", "c", {"_id": (args[1] + 1) % 10}, limit=1, txn=txn, locks=locks)
                if args[0] == "commit":
                    store.commit(txn, locks)
                elif args[0] == "abort":
                    store.abort(txn, locks)
                else:
                    open_txns.append(txn)
            elif kind == "index" and "a_1" not in store._mcoll("db", "c")._store.indexes:
                store._mcoll("db", "c")._store.create_index("a_1", {"key": [("a", 1)]})
        except (CommandError, Locked):  # a duplicate key, a document an open transaction holds: skipped
            pass
        times.append(store.oplog.latest_ts)
    return store, times, open_txns


def read(store: Store, ts: Timestamp, hide: list[Transaction], query: dict[str, Any]) -> Any:
    try:
        return [d["_id"] for d in store.snapshot("db", "c", ts, hide, query)], None
    except CommandError as exc:
        return None, exc.code


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operations, max_size=25), st.lists(queries, min_size=1, max_size=4),
       st.sampled_from([1_000, 12]))
def test_a_snapshot_through_the_indexes_gives_what_reading_the_oplog_back_gives(
        ops: list[tuple[Any, ...]], reads: list[dict[str, Any]], max_entries: int) -> None:
    store, times, open_txns = run(ops, max_entries)
    for ts in times:
        for query in reads:
            fast = read(store, ts, open_txns, query)
            with mock.patch.object(Store, "_changed_since", return_value=None):
                walked = read(store, ts, open_txns, query)
            assert fast == walked, (ts, query)


def test_a_snapshot_through_an_index_reads_the_history_of_its_matches_only() -> None:
    """The point of the above: a snapshot of a few documents reads their history, not every change since."""
    store, times, _ = run([("index",)] + [("insert", i, i % 3) for i in range(10)], 1_000)
    for i in range(200):
        store.insert("db", "c", {"_id": 100 + i, "a": "other"}, None, {})
    store.delete("db", "c", {"_id": 1}, limit=1, txn=None, locks={})
    with mock.patch.object(Store, "_walk_since", side_effect=AssertionError("walked the oplog")):
        assert sorted(d["_id"] for d in store.snapshot("db", "c", times[-1], (), {"a": 1})) == [1, 4, 7]
    store.drop("db", "c")
    with pytest.raises(CommandError) as unavailable:
        store.snapshot("db", "c", times[-1], (), {"a": 1})
    assert unavailable.value.code == 239
