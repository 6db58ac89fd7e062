"""The oplog: bounds by entries and bytes, transactions kept whole, ordered look-ups."""

from __future__ import annotations

import pytest
from bson import Timestamp

from realtime.standin.oplog import Change, ClusterClock, Oplog


def fixed_clock(start: float = 1000.0) -> ClusterClock:
    now = [start]
    return ClusterClock(lambda: now[0])


def test_clock_increments_within_a_second_and_resets_after() -> None:
    now = [10.0]
    clock = ClusterClock(lambda: now[0])
    assert [clock.tick(), clock.tick()] == [Timestamp(10, 1), Timestamp(10, 2)]
    now[0] = 11.5
    assert clock.tick() == Timestamp(11, 1)
    now[0] = 9.0  # wall clock stepped back: time never goes backwards
    assert clock.tick() == Timestamp(11, 2)


def test_entry_bound_drops_the_oldest() -> None:
    oplog = Oplog(max_entries=5, clock=fixed_clock())
    for i in range(10):
        oplog.append([Change("insert", "app", "posts", i)])
    assert len(oplog) == 5
    assert oplog.get(oplog.first_seq) is not None and oplog.get(oplog.first_seq - 1) is None
    assert [e.event["documentKey"]["_id"] for e in (oplog.get(s) for s in range(oplog.first_seq, oplog.next_seq))
            if e and e.event] == [5, 6, 7, 8, 9]


def test_byte_bound() -> None:
    oplog = Oplog(max_bytes=3000, clock=fixed_clock())
    for i in range(20):
        oplog.append([Change("insert", "app", "posts", i, {"fullDocument": {"_id": i, "x": "y" * 400}})])
    assert oplog.size_bytes <= 3000 and len(oplog) < 20


def test_transaction_shares_time_and_leaves_together() -> None:
    oplog = Oplog(max_entries=3, clock=fixed_clock())
    entries = oplog.append([Change("insert", "app", "posts", i) for i in range(3)], txn={"txnNumber": 1})
    assert len({e.ts for e in entries}) == 1
    assert [e.data for e in entries] == sorted(e.data for e in entries)
    oplog.append([Change("insert", "app", "posts", 99)])  # four entries: the transaction goes as one
    assert len(oplog) == 1


def test_lookups() -> None:
    oplog = Oplog(clock=fixed_clock())
    a, b = oplog.append([Change("insert", "app", "p", 1), Change("insert", "app", "p", 2)])
    assert oplog.find(a.data) is a and oplog.find(a.data[:-2] + "FF04") is None
    assert oplog.first_seq_after(a.data) == b.seq
    assert oplog.first_seq_at_or_after(b.ts) == b.seq
    oplog.truncate()
    assert oplog.get(b.seq) is None and oplog.oldest_ts > b.ts


def test_bounds_must_hold_something() -> None:
    with pytest.raises(ValueError):
        Oplog(max_entries=0)
