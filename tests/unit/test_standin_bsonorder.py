"""BSON's order of values, as MongoDB compares them (``$min``/``$max``, ``$push`` with ``$sort``)."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp

from realtime.standin.bsonorder import compare

DATE = dt.datetime(2024, 1, 1)

# One value of each type, in BSON's order of types.
BY_TYPE: list[Any] = [MinKey(), None, 5, "s", {"a": 1}, [1], b"\x01", ObjectId("65a1b2c3d4e5f60718293a4b"), False,
                      DATE, Timestamp(1, 1), Regex("a"), Code("f()"), Code("f()", {"x": 1}), MaxKey()]


@pytest.mark.parametrize("i", range(len(BY_TYPE) - 1))
def test_values_of_different_types_compare_by_the_rank_of_their_types(i: int) -> None:
    assert compare(BY_TYPE[i], BY_TYPE[i + 1]) == -1
    assert compare(BY_TYPE[i + 1], BY_TYPE[i]) == 1
    assert compare(BY_TYPE[i], BY_TYPE[i]) == 0


def test_numbers_compare_by_value_whatever_their_types() -> None:
    assert compare(1, 1.0) == compare(Int64(1), Decimal128("1.00")) == 0
    assert compare(2**53 + 1, float(2**53)) == 1  # exactly, not through a double
    assert compare(Decimal128("0.1"), 0.1) == -1  # the double 0.1 is a little above one tenth
    assert compare(float("nan"), float("-inf")) == -1  # NaN is below every number
    assert compare(Decimal128("NaN"), float("nan")) == 0


def test_strings_compare_by_their_utf8_bytes() -> None:
    assert compare("B", "a") == -1
    assert compare("a", "ab") == -1
    assert compare("é", "z") == 1


def test_documents_compare_field_by_field_type_first_then_name_then_value() -> None:
    assert compare({"a": 1}, {"a": "x"}) == -1  # the type of the value first
    assert compare({"a": 1}, {"b": 0}) == -1  # then the name
    assert compare({"a": 1}, {"a": 1, "b": 0}) == -1  # a prefix first
    assert compare([1, 2], [1, 2, 0]) == -1
    assert compare([2], [1, 5]) == 1


def test_bindata_compares_by_length_then_subtype_then_bytes() -> None:
    assert compare(b"\xff", b"\x00\x00") == -1
    assert compare(Binary(b"\x01", 0), Binary(b"\x00", 5)) == -1
    assert compare(b"\x01", b"\x02") == -1


def test_other_types_compare_within_themselves() -> None:
    assert compare(False, True) == -1
    assert compare(DATE, DATE + dt.timedelta(milliseconds=1)) == -1
    assert compare(Timestamp(1, 2), Timestamp(2, 1)) == -1
    assert compare(Regex("a", "i"), Regex("a", "m")) == -1
    assert compare(MinKey(), MinKey()) == compare(MaxKey(), MaxKey()) == 0


def test_a_sort_by_compare_is_the_server_order() -> None:
    values = [DATE, "b", 2.5, None, Decimal128("1"), {"k": 1}, True, [0]]
    assert sorted(values, key=functools.cmp_to_key(compare)) == [
        None, Decimal128("1"), 2.5, "b", {"k": 1}, [0], True, DATE]
