"""The array update operators ``$push`` (with ``$each``, ``$position``, ``$sort``, ``$slice``), ``$addToSet``,
``$pullAll`` and ``$pop``, as MongoDB 7.0 parses and applies them (src/mongo/db/update/push_node.cpp,
addtoset_node.cpp, pull_all_node.cpp, pop_node.cpp, pattern_cmp.cpp).

:func:`check` refuses a malformed operand with the server's code and message, whatever the document;
:func:`apply` gives the array an operator makes of the current one (None: the field is missing), so that the
store writes it with a ``$set``. Values are equal and ordered as BSON orders them (:mod:`bsonorder`): 1, 1.0 and
NumberLong(1) are one value to ``$addToSet``.
"""

from __future__ import annotations

import decimal
import functools
from collections.abc import Mapping
from typing import Any

from realtime.standin.arguments import NUMBER, bson_type
from realtime.standin.bsonorder import compare
from realtime.standin.errors import CommandError
from realtime.standin.limits import show

OPERATORS = frozenset({"$push", "$addToSet", "$pullAll", "$pop"})
_PUSH_CLAUSES = ("$each", "$slice", "$sort", "$position")


def check(op: str, path: str, arg: Any) -> None:
    """Refuse an operand of ``op`` the server's parser refuses."""
    if op == "$push" and _is_push_each(arg):
        _check_push(arg)
    elif op == "$addToSet" and _is_add_each(arg):
        each = next(iter(arg.values()))
        if bson_type(each) != "array":
            raise CommandError(14, "The argument to $each in $addToSet must be an array but it was of type "
                                   f"{bson_type(each)}")
        if len(arg) > 1:
            raise CommandError(2, f"Found unexpected fields after $each in $addToSet: {show(arg)}")
    elif op == "$pullAll" and bson_type(arg) != "array":
        raise CommandError(2, f"$pullAll requires an array argument but was given a {bson_type(arg)}")
    elif op == "$pop":
        if bson_type(arg) not in NUMBER:
            raise CommandError(9, f"Expected a number in: {path}: {show(arg)}")
        value = _integer(arg)
        if value is None:
            raise CommandError(9, f"Expected an integer: {path}: {show(arg)}")
        if value not in (1, -1):
            raise CommandError(9, f"$pop expects 1 or -1, found: {value}")


def apply(op: str, current: list[Any] | None, arg: Any) -> list[Any] | None:
    """The array ``op`` makes of ``current`` (None: missing); None when it changes nothing of a missing field."""
    if op == "$push":
        return _push(current or [], arg)
    if op == "$addToSet":
        values = list(next(iter(arg.values()))) if _is_add_each(arg) else [arg]
        out = list(current or [])
        for value in values:
            if not any(compare(value, kept) == 0 for kept in out):
                out.append(value)
        return out
    if current is None:
        return None  # $pullAll, $pop: nothing to take from
    if op == "$pullAll":
        return [value for value in current if not any(compare(value, gone) == 0 for gone in arg)]
    if not current:
        return current
    return current[1:] if _integer(arg) == -1 else current[:-1]  # $pop


def _is_push_each(arg: Any) -> bool:
    return isinstance(arg, Mapping) and "$each" in arg


def _is_add_each(arg: Any) -> bool:
    return isinstance(arg, Mapping) and next(iter(arg), None) == "$each"


def _integer(value: Any) -> int | None:
    """A number's value when it is integral (parseIntegerElementToLong), else None."""
    number = decimal.Decimal(str(value)) if bson_type(value) == "decimal" else decimal.Decimal(value)
    if not number.is_finite() or number != number.to_integral_value():
        return None
    return int(number)


def _check_push(arg: Mapping[str, Any]) -> None:
    for clause in arg:
        if clause not in _PUSH_CLAUSES:
            raise CommandError(2, f"Unrecognized clause in $push: {clause}")
    if bson_type(arg["$each"]) != "array":
        raise CommandError(2, "The argument to $each in $push must be an array but it was of type: "
                              f"{bson_type(arg['$each'])}")
    for clause, what in (("$slice", "The value for $slice must be an integer value but was given type: "),
                         ("$position", "The value for $position must be an integer value, not of type: ")):
        if clause in arg and (bson_type(arg[clause]) not in NUMBER or _integer(arg[clause]) is None):
            raise CommandError(2, what + bson_type(arg[clause]))
    if "$sort" in arg:
        _check_sort(arg["$sort"])


def _check_sort(sort: Any) -> None:
    if bson_type(sort) in NUMBER:
        if _integer(sort) not in (1, -1):
            raise CommandError(2, "The $sort element value must be either 1 or -1")
        return
    if not isinstance(sort, Mapping):
        raise CommandError(2, "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort "
                              "embedded fields")
    if not sort:
        raise CommandError(2, "The $sort pattern is empty when it should be a set of fields.")
    for field, order in sort.items():
        if bson_type(order) not in NUMBER or _integer(order) not in (1, -1):
            raise CommandError(2, "The $sort element value must be either 1 or -1")
        if not field:
            raise CommandError(2, "The $sort field cannot be empty")
        if "" in field.split("."):
            raise CommandError(2, f"The $sort field is a dotted field but has an empty part: {field}")


def _push(current: list[Any], arg: Any) -> list[Any]:
    if not _is_push_each(arg):
        return [*current, arg]
    out = list(current)
    each = list(arg["$each"])
    position = _integer(arg["$position"]) if "$position" in arg else None
    if position is None:
        out.extend(each)
    else:
        at = max(len(out) + position, 0) if position < 0 else min(position, len(out))
        out[at:at] = each
    if "$sort" in arg:
        out.sort(key=functools.cmp_to_key(_sorter(arg["$sort"])))
    if "$slice" in arg:
        size = _integer(arg["$slice"])
        assert size is not None
        out = out[:size] if size >= 0 else out[max(len(out) + size, 0):]
    return out


def _sorter(sort: Any) -> Any:
    """The comparison of two elements by a $push $sort: the whole element (1 or -1), or the fields a pattern names,
    a missing one (or a non-document element's) as null (PatternElementCmp)."""
    if not isinstance(sort, Mapping):
        direction = _integer(sort) or 1
        return lambda a, b: direction * compare(a, b)
    fields = [(path.split("."), _integer(order) or 1) for path, order in sort.items()]

    def key(value: Any, parts: list[str]) -> Any:
        for part in parts:
            if not isinstance(value, Mapping) or part not in value:
                return None
            value = value[part]
        return value

    def by_fields(a: Any, b: Any) -> int:
        for parts, direction in fields:
            order = compare(key(a, parts), key(b, parts))
            if order:
                return direction * order
        return 0

    return by_fields
