"""BSON arithmetic as ``$inc`` and ``$mul`` do it: the result's type follows the operands', as the server's SafeNum.

- An int (int32) with an int gives an int, or a long when the result does not fit in 32 bits.
- A long with an int or a long gives a long; past 64 bits the operation fails: the server refuses the update with
  BadValue (2) "Failed to apply $inc operations to current value ((NumberLong)9223372036854775807) for document
  {_id: 1}" (src/mongo/db/update/arithmetic_node.cpp), and nothing is written.
- A double with an int, a long or a double gives a double; a decimal with anything a decimal.

A Python ``int`` stands for an int when it fits in 32 bits and for a long otherwise (that is how PyMongo encodes
it); a :class:`bson.Int64` is always a long.
"""

from __future__ import annotations

import decimal
from typing import Any

from bson import Decimal128, Int64
from bson.decimal128 import create_decimal128_context

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_DECIMAL = create_decimal128_context()


class Overflow(Exception):
    """The result does not fit the type the operands call for (a long past 64 bits)."""


def kind(value: Any) -> str | None:
    """``int``, ``long``, ``double`` or ``decimal``; None for what is not a number (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Int64):
        return "long"
    if isinstance(value, int):
        return "int" if INT32_MIN <= value <= INT32_MAX else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Decimal128):
        return "decimal"
    return None


def _wider(a: Any, b: Any) -> str:
    order = ("int", "long", "double", "decimal")
    return max(kind(a) or "int", kind(b) or "int", key=order.index)


def _as_decimal(value: Any) -> decimal.Decimal:
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, float):
        return _DECIMAL.create_decimal(repr(value))
    return _DECIMAL.create_decimal(int(value))


def _combine(a: Any, b: Any, op: str) -> Any:
    kinds = _wider(a, b)
    if kinds == "decimal":
        with decimal.localcontext(_DECIMAL) as ctx:
            dx, dy = _as_decimal(a), _as_decimal(b)
            exact = ctx.add(dx, dy) if op == "add" else ctx.multiply(dx, dy)
        return Decimal128(exact)
    if kinds == "double":
        fx, fy = float(a), float(b)
        return fx + fy if op == "add" else fx * fy
    result = int(a) + int(b) if op == "add" else int(a) * int(b)
    if kinds == "int" and INT32_MIN <= result <= INT32_MAX:
        return result
    if not INT64_MIN <= result <= INT64_MAX:
        raise Overflow
    return Int64(result)


def add(current: Any, operand: Any) -> Any:
    """``current + operand`` with the server's result type; :class:`Overflow` past a long's range."""
    return _combine(current, operand, "add")


def multiply(current: Any, operand: Any) -> Any:
    """``current * operand`` with the server's result type; :class:`Overflow` past a long's range."""
    return _combine(current, operand, "mul")


def zero_like(operand: Any) -> Any:
    """What ``$mul`` sets a missing field to: zero, of the operand's type."""
    return {"long": Int64(0), "double": 0.0, "decimal": Decimal128("0")}.get(kind(operand) or "int", 0)


def debug_string(value: Any) -> str:
    """A number as the server's SafeNum::debugString shows it: ``(NumberLong)9223372036854775807``."""
    name = {"int": "NumberInt", "long": "NumberLong", "double": "NumberDouble", "decimal": "NumberDecimal"}
    return f"({name.get(kind(value) or '', 'EOO')}){value}"
