"""updateDescription from before and after: dotted paths, removals, truncated arrays, exact types."""

from __future__ import annotations

from realtime.standin.updatedesc import describe, same_document


def test_nested_changes_use_dotted_paths() -> None:
    before = {"_id": 1, "a": {"b": 1, "c": 2}, "t": ["x"]}
    after = {"_id": 1, "a": {"b": 5}, "t": ["x", "y"], "n": 1}
    assert describe(before, after) == {
        "updatedFields": {"a.b": 5, "t.1": "y", "n": 1}, "removedFields": ["a.c"], "truncatedArrays": []}


def test_shrinking_array_is_truncated() -> None:
    d = describe({"t": [1, 2, 3]}, {"t": [1, 3]})
    assert d == {"updatedFields": {"t.1": 3}, "removedFields": [], "truncatedArrays": [{"field": "t", "newSize": 2}]}


def test_type_change_counts_as_a_change() -> None:
    assert describe({"n": 1}, {"n": 1.0})["updatedFields"] == {"n": 1.0}
    assert not same_document({"n": 1}, {"n": 1.0})
    assert not same_document({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert same_document({"a": [1, {"b": "c"}]}, {"a": [1, {"b": "c"}]})


def test_reordered_subdocument_is_replaced_whole() -> None:
    assert describe({"s": {"a": 1, "b": 2}}, {"s": {"b": 2, "a": 1}})["updatedFields"] == {"s": {"b": 2, "a": 1}}


def test_value_replaced_by_other_type() -> None:
    assert describe({"s": {"a": 1}}, {"s": [1]})["updatedFields"] == {"s": [1]}
