"""BSON's order: how MongoDB compares two values of any types (``$min``, ``$max``, sorts, ``$lt``, ...).

Values of different types compare by their type's rank (src/mongo/bson/bsontypes.h, ``canonicalizeBSONType``):
MinKey < null < numbers < strings < objects < arrays < binData < ObjectId < bool < date < timestamp < regex <
DBRef < code < code with scope < MaxKey. Values of one rank compare as BSONElement::woCompare does
(src/mongo/bson/bsonelement.cpp, ``compareElementValues``): numbers by value whatever their type (NaN below
every other number), strings by their UTF-8 bytes (the simple collation), objects field by field (the type's rank,
then the name, then the value; the shorter first when one is a prefix of the other), arrays element by element,
binData by length then subtype then bytes, regexes by pattern then flags.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import uuid
from collections.abc import Mapping
from typing import Any

import bson
from bson import Binary, Code, Decimal128, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.datetime_ms import DatetimeMS

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


def rank(value: Any) -> int:
    """The rank of a value's type in BSON's order (``canonicalizeBSONType``)."""
    if isinstance(value, MinKey):
        return -1
    if isinstance(value, MaxKey):
        return 127
    if value is None:
        return 5
    if isinstance(value, bool):
        return 40
    if isinstance(value, (int, float, Decimal128)):
        return 10
    if isinstance(value, Code):  # a str subclass
        return 65 if value.scope is not None else 60
    if isinstance(value, str):
        return 15
    if isinstance(value, bson.DBRef):
        return 55
    if isinstance(value, Mapping):
        return 20
    if isinstance(value, (list, tuple)):
        return 25
    if isinstance(value, (bytes, uuid.UUID)):
        return 30
    if isinstance(value, ObjectId):
        return 35
    if isinstance(value, (dt.datetime, DatetimeMS)):
        return 45
    if isinstance(value, Timestamp):
        return 47
    if isinstance(value, (Regex, re.Pattern)):
        return 50
    raise TypeError(f"not a BSON value: {type(value).__name__}")


def compare(a: Any, b: Any) -> int:
    """-1, 0 or 1 as ``a`` sorts before, with or after ``b`` in BSON's order."""
    ra, rb = rank(a), rank(b)
    if ra != rb:
        return _sign(ra - rb)
    if ra == 10:
        return _compare_numbers(a, b)
    if ra in (15, 60):
        return _cmp(str(a).encode(), str(b).encode())
    if ra == 65:
        return compare(str(a), str(b)) or compare(a.scope, b.scope)
    if ra == 20:
        return _compare_fields(list(a.items()), list(b.items()))
    if ra == 25:
        return _compare_fields([(str(i), v) for i, v in enumerate(a)], [(str(i), v) for i, v in enumerate(b)])
    if ra == 30:
        return _cmp(_binary(a), _binary(b))
    if ra == 35:
        return _cmp(a.binary, b.binary)
    if ra == 40:
        return _cmp(a, b)
    if ra == 45:
        return _cmp(_millis(a), _millis(b))
    if ra == 47:
        return _cmp((a.time, a.inc), (b.time, b.inc))
    if ra == 50:
        return _cmp(_regex(a), _regex(b))
    if ra == 55:
        return compare(a.as_doc(), b.as_doc())
    return 0  # MinKey, MaxKey, null: one value each


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)


def _cmp(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


def _compare_fields(a: list[tuple[str, Any]], b: list[tuple[str, Any]]) -> int:
    for (name_a, value_a), (name_b, value_b) in zip(a, b, strict=False):
        order = _sign(rank(value_a) - rank(value_b)) or _cmp(name_a.encode(), name_b.encode()) or compare(
            value_a, value_b)
        if order:
            return order
    return _cmp(len(a), len(b))


def _number(value: Any) -> decimal.Decimal:
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, float):
        return decimal.Decimal(value)  # exact: a double's binary value, as the server compares it
    return decimal.Decimal(int(value))


def _compare_numbers(a: Any, b: Any) -> int:
    x, y = _number(a), _number(b)
    if x.is_nan() or y.is_nan():  # NaN is below every number, and equal to NaN
        return _cmp(not x.is_nan(), not y.is_nan())
    return _cmp(x, y)


def _binary(value: Any) -> tuple[int, int, bytes]:
    if isinstance(value, uuid.UUID):
        return 16, 4, value.bytes
    subtype = value.subtype if isinstance(value, Binary) else 0
    return len(value), subtype, bytes(value)


def _millis(value: dt.datetime | DatetimeMS) -> int:
    if isinstance(value, DatetimeMS):
        return int(value)
    aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    return (aware - _EPOCH) // _MS


def _regex(value: Regex[Any] | re.Pattern[Any]) -> tuple[bytes, bytes]:
    regex = value if isinstance(value, Regex) else Regex.from_native(value)
    flags = regex.flags if isinstance(regex.flags, str) else _flag_letters(regex.flags)
    return str(regex.pattern).encode(), flags.encode()


def _flag_letters(flags: int) -> str:
    letters = (("i", re.IGNORECASE), ("l", re.LOCALE), ("m", re.MULTILINE), ("s", re.DOTALL), ("u", re.UNICODE),
               ("x", re.VERBOSE))
    return "".join(letter for letter, bit in letters if flags & bit)

