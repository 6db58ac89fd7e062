"""The store's fast stand-ins for what it used to ask of the standard library and of mongomock.

``clone`` replaces ``copy.deepcopy`` for documents; ``_as_stored`` replaces mongomock's
``patch_datetime_awareness_in_document`` on the insert path. Each must give what the original gives.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import mongomock.helpers
from bson import Binary, Decimal128, Int64, ObjectId, Timestamp
from hypothesis import given
from hypothesis import strategies as st

from realtime.standin.store import _as_stored, clone

scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.booleans(), st.none(), st.text(max_size=5),
    st.builds(Int64, st.integers(-(2**63), 2**63 - 1)), st.just(ObjectId("65a000000000000000000001")),
    st.just(Binary(b"x", 4)), st.just(Decimal128("1.5")), st.just(Timestamp(5, 1)),
    st.datetimes(timezones=st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=-3))])),
)
documents = st.recursive(
    st.dictionaries(st.text(max_size=3), scalars, max_size=4),
    lambda inner: st.dictionaries(st.text(max_size=3), st.one_of(scalars, inner, st.lists(st.one_of(scalars, inner),
                                                                                         max_size=3)), max_size=4),
    max_leaves=12,
)


def shape(value: Any) -> Any:
    """A value with the type of every part (``1 == 1.0 == True`` would hide a changed type)."""
    if isinstance(value, dict):
        return ("dict", [(k, shape(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [shape(v) for v in value])
    return (type(value).__name__, value, getattr(value, "tzinfo", None))


@given(documents)
def test_clone_is_a_deep_copy(doc: dict[str, Any]) -> None:
    copied = clone(doc)
    assert shape(copied) == shape(copy.deepcopy(doc))

    def containers(value: Any) -> list[int]:
        inner = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
        return [id(value)] + [i for v in inner for i in containers(v)] if isinstance(value, (dict, list)) else []

    assert not set(containers(copied)) & set(containers(doc))  # nothing a later update changes is shared


@given(documents)
def test_as_stored_is_what_mongomock_stores(doc: dict[str, Any]) -> None:
    assert shape(_as_stored(doc)) == shape(mongomock.helpers.patch_datetime_awareness_in_document(doc))


def test_as_stored_copies_only_what_it_changes() -> None:
    naive = {"a": {"b": [1, dt.datetime(2026, 1, 1, 12, 0, 0, 5000)]}, "c": {"d": 1}}
    assert _as_stored(naive) is naive
    aware = {"a": {"b": [1, dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)]}, "c": {"d": 1}}
    stored = _as_stored(aware)
    assert stored["a"]["b"][1] == dt.datetime(2026, 1, 1, 12) and stored["a"]["b"][1].tzinfo is None
    assert stored["c"] is aware["c"] and aware["a"]["b"][1].tzinfo is dt.UTC


def test_a_scratch_collection_is_empty_each_time_and_emptied_after_use() -> None:
    from realtime.standin.oplog import Oplog
    from realtime.standin.store import Store

    store = Store(Oplog())
    with store.scratch() as outer:
        outer.insert_one({"_id": 1})
        with store.scratch() as inner:  # a scratch within a scratch (an update's, during a read) is another one
            assert inner.count_documents({}) == 0
            inner.insert_one({"_id": 1})
        assert outer.count_documents({}) == 1
    try:
        with store.scratch() as again:
            assert again.count_documents({}) == 0
            again.insert_one({"_id": 2})
            raise RuntimeError("the read failed")
    except RuntimeError:
        pass
    with store.scratch() as last:
        assert last.count_documents({}) == 0
    assert store._scratch_client["scratch"].list_collection_names() == []
