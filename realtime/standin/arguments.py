"""Command arguments: checked and normalised before a command runs, as MongoDB's IDL parser does.

Each command declares the arguments the stand-in reads, with the BSON types the server accepts for them.
What does not fit fails with the server's codes and message shapes, never with a Python exception:

- a wrong type is ``TypeMismatch`` (14): "BSON field 'killCursors.cursors' is the wrong type 'string',
  expected type 'array'" (``expected types '[long, int, decimal, double]'`` when several are accepted);
- a missing required argument is 40414: "BSON field 'getMore.collection' is missing but a required field";
- a number below its bound is 51024: "BSON field 'batchSize' value must be >= 0, actual value '-1'";
- ``$db`` missing is 40571, ``maxTimeMS`` not a non-negative int32 is ``BadValue`` (2).

Null (and undefined, which decodes to None) stands for an absent optional argument, as on the server. What
passes comes out normalised: numeric arguments (any of int, long, double, decimal) as Python ints, boolean
flags as bools, null arguments removed. Handlers can rely on the types they read.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import bson
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.datetime_ms import DatetimeMS

from realtime.standin.errors import CommandError, unsupported

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MAX = 2**31 - 1
NUMBER = ("long", "int", "decimal", "double")  # IDL safeInt64: any numeric type
BOOLISH = ("bool", "long", "int", "decimal", "double")  # IDL safeBool / optionalBool
ALL_TYPES = ("double", "string", "object", "array", "binData", "undefined", "objectId", "bool", "date", "null",
             "regex", "dbPointer", "javascript", "symbol", "javascriptWithScope", "int", "timestamp", "long",
             "decimal", "minKey", "maxKey")


_EXACT_TYPES: dict[type, str] = {
    str: "string", float: "double", bool: "bool", type(None): "null", dict: "object", list: "array",
    Int64: "long", ObjectId: "objectId", bytes: "binData", Binary: "binData", dt.datetime: "date",
    Timestamp: "timestamp", Decimal128: "decimal",
}


def bson_type(value: Any) -> str:
    """The server's name for a value's BSON type, as its error messages give it."""
    kind = type(value)
    if kind is int:
        return "int" if -(2**31) <= value < 2**31 else "long"
    exact = _EXACT_TYPES.get(kind)
    if exact is not None:
        return exact
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Int64):
        return "long"
    if isinstance(value, int):
        return "int" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Code):  # a str subclass
        return "javascript" if value.scope is None else "javascriptWithScope"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (Mapping, bson.DBRef)):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, (bytes, Binary)):
        return "binData"
    if isinstance(value, (dt.datetime, DatetimeMS)):
        return "date"
    names: tuple[tuple[type, str], ...] = (
        (ObjectId, "objectId"), (Timestamp, "timestamp"), (Decimal128, "decimal"), (Regex, "regex"),
        (re.Pattern, "regex"), (MinKey, "minKey"), (MaxKey, "maxKey"))
    return next((name for cls, name in names if isinstance(value, cls)), type(value).__name__)


def number_long(value: Any) -> int:
    """A numeric value as the server's ``safeNumberLong`` reads it: truncated, clamped to int64, NaN as 0."""
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    if isinstance(value, (float, decimal.Decimal)):
        if value != value:  # NaN
            return 0
        if value in (math.inf, decimal.Decimal("Infinity")):
            return INT64_MAX
        if value in (-math.inf, decimal.Decimal("-Infinity")):
            return INT64_MIN
    return max(INT64_MIN, min(INT64_MAX, int(value)))


def number_double(value: Any) -> float:
    """A numeric value as a float."""
    return float(value.to_decimal() if isinstance(value, Decimal128) else value)


def _true_value(value: Any) -> bool:
    if isinstance(value, Decimal128):
        return not value.to_decimal().is_zero()
    return bool(value)


@dataclass(frozen=True)
class Arg:
    """One argument: the BSON types it may have, and what to check and convert once its type is right."""

    types: tuple[str, ...]
    required: bool = False
    convert: Callable[[Any], Any] | None = None
    gte: int | None = None  # a lower bound (51024 below it)
    fields: Mapping[str, Arg] = field(default_factory=dict)  # an object's arguments
    items: Arg | None = None  # an array's elements
    check: Callable[[str, Any], None] | None = None  # a further check of the value, given its path
    strict: bool = False  # an object whose fields are all in ``fields``: any other is 40415


def wrong_type(path: str, value: Any, types: tuple[str, ...]) -> CommandError:
    expected = f"type '{types[0]}'" if len(types) == 1 else f"types '[{', '.join(types)}]'"
    return CommandError(14, f"BSON field '{path}' is the wrong type '{bson_type(value)}', expected {expected}")


def missing(path: str) -> CommandError:
    return CommandError(40414, f"BSON field '{path}' is missing but a required field")


def unknown(path: str) -> CommandError:
    return CommandError(40415, f"BSON field '{path}' is an unknown field.")


def _parse(path: str, value: Any, arg: Arg, context: str | None = None) -> Any:
    """``value`` checked against ``arg``; ``path`` names it in a type error, ``context`` (the array's path, for an
    element of one) names its own fields, as the server's IDL parser names them (``update.updates.q``)."""
    if bson_type(value) not in arg.types:
        raise wrong_type(path, value, arg.types)
    if (arg.fields or arg.strict) and isinstance(value, Mapping):
        value = parse_object(context or path, dict(value), arg.fields, strict=arg.strict)
    if arg.items is not None and isinstance(value, list):
        # Null elements are skipped, as the server's IDL parser skips them.
        value = [_parse(f"{path}.{i}", item, arg.items, path) for i, item in enumerate(value) if item is not None]
    if arg.convert is not None:
        value = arg.convert(value)
    if arg.gte is not None and value < arg.gte:
        name = path.rsplit(".", 1)[-1]
        raise CommandError(51024, f"BSON field '{name}' value must be >= {arg.gte}, actual value '{value}'")
    if arg.check is not None:
        arg.check(path, value)
    return value


def parse_object(path: str, doc: dict[str, Any], fields: Mapping[str, Arg], *, strict: bool = False,
                 known: Collection[str] = ()) -> dict[str, Any]:
    """``doc`` (a copy) with each argument in ``fields`` checked and normalised, in the document's order, as the
    server's IDL parser goes through it; then a required argument missing is 40414.

    ``strict`` (a strict IDL struct): a field neither in ``fields`` nor in ``known`` is 40415 ("BSON field
    'find.foo' is an unknown field."). Otherwise other fields are kept as they are."""
    for name in list(doc):
        where = f"{path}.{name}" if path else name
        arg = fields.get(name)
        if arg is None:
            if strict and name not in known:
                raise unknown(where)
            continue
        value = doc[name]
        if value is None:
            del doc[name]
            continue
        doc[name] = _parse(where, value, arg)
    for name, arg in fields.items():
        if arg.required and name not in doc:
            raise missing(f"{path}.{name}" if path else name)
    return doc


# -- argument kinds -----------------------------------------------------------------------------------------
def _uuid(path: str, value: Any) -> None:
    if not isinstance(value, Binary) or value.subtype != 4:
        subtype = value.subtype if isinstance(value, Binary) else 0
        name = {0: "general", 3: "UUID (old)"}.get(subtype, f"subtype {subtype}")
        raise CommandError(14, f"BSON field '{path}' is the wrong binData type '{name}', expected type 'UUID'")


def _max_time_ms(value: Any) -> int:
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        raise CommandError(2, "maxTimeMS has non-integral value")
    ms = number_long(value)
    if not 0 <= ms <= INT32_MAX:
        raise CommandError(2, "maxTimeMS is out of range")
    return ms


def _finite(path: str, value: Any) -> None:
    if not math.isfinite(value):
        raise CommandError(2, f"BSON field '{path}' must be a finite number, not {value}")


def _delete_limit(path: str, value: Any) -> None:
    if value not in (0, 1):
        raise CommandError(9, f"The limit field in delete objects must be 0 or 1. Got {value}")


_LEVELS = ("local", "majority", "linearizable", "available", "snapshot")


def _read_concern_level(path: str, value: Any) -> None:
    if value not in _LEVELS:
        raise CommandError(9, "readConcern.level must be either 'local', 'majority', 'linearizable', "
                              "'available', or 'snapshot'")


def _collation(path: str, value: Any) -> None:
    """Only the simple collation (binary comparison, what the stand-in does) is served; any other is refused, never
    ignored."""
    if "locale" not in value:
        raise missing(f"{path}.locale")
    if value["locale"] != "simple":
        raise CommandError(2, f"a collation (locale {value['locale']!r}) is not supported by the realtime MongoDB "
                              "stand-in: it compares strings by their bytes, as the 'simple' collation does")


def _let(path: str, value: Any) -> None:
    if value:
        raise CommandError(2, f"variables ('{path}') are not supported by the realtime MongoDB stand-in")


_WRITE_CONCERN_FIELDS = frozenset({"w", "j", "wtimeout", "fsync", "provenance", "getLastError", "wOpTime",
                                   "wElectionId"})


def _write_concern(path: str, value: Any) -> None:
    """writeConcern as the server parses it (src/mongo/db/write_concern_options.cpp, write_concern_idl.cpp): ``w`` a
    number from 0 to 50, a mode name, or tags; FailedToParse (9) otherwise, as for an unknown field or ``j`` and
    ``fsync`` together."""
    for name in value:
        if name not in _WRITE_CONCERN_FIELDS:
            raise CommandError(9, f"unrecognized write concern field: {name}")
    w = value.get("w")
    kind = bson_type(w)
    if kind in NUMBER:
        if isinstance(w, float) and w != w:
            raise CommandError(9, "w cannot be NaN")
        n = number_long(w)
        if not 0 <= n <= 50:
            raise CommandError(9, f"w has to be a non-negative number and not greater than 50; found: {n}")
    elif kind == "object":
        if not w:
            raise CommandError(9, "tagged write concern requires tags")
        for tag, count in w.items():
            if bson_type(count) not in NUMBER:
                raise CommandError(9, "tags must be a single level document with only number values; found: "
                                      f"{tag}: {count!r}")
    elif kind not in ("string", "null"):
        raise CommandError(9, "w has to be a number, string, or object")
    if value.get("j") and value.get("fsync"):
        raise CommandError(9, "fsync and j options cannot be used together")


STRING = Arg(("string",))
OBJECT = Arg(("object",))
BOOL = Arg(("bool",))
SAFE_BOOL = Arg(BOOLISH, convert=_true_value)
INT = Arg(NUMBER, convert=number_long)
NON_NEGATIVE = Arg(NUMBER, convert=number_long, gte=0)
LONG = Arg(("long",), convert=int)
AN_UUID = Arg(("binData",), check=_uuid)
UUID = replace(AN_UUID, required=True)
OBJECTS = Arg(("array",), items=OBJECT)
STRINGS = Arg(("array",), items=STRING)
CURSOR = Arg(("object",), fields={"batchSize": NON_NEGATIVE})
HINT = Arg(("string", "object"))
COLLATION = Arg(("object",), check=_collation)
LET = Arg(("object",), check=_let)  # an index name or key pattern
UPDATE = Arg(("object", "array"))  # a modification: operators or a replacement, or a pipeline
IMAGES = Arg(("object",), fields={"enabled": Arg(("bool",), required=True)})
MAX_TIME_MS = Arg(NUMBER, convert=_max_time_ms)
READ_CONCERN = Arg(("object",), fields={"level": Arg(("string",), check=_read_concern_level),
                                        "atClusterTime": Arg(("timestamp",))})
WRITE_CONCERN = Arg(("object",), fields={"j": Arg(BOOLISH, convert=_true_value),
                                         "fsync": Arg(BOOLISH, convert=_true_value),
                                         "wtimeout": Arg(NUMBER, convert=number_long)},
                    check=_write_concern)
DELETE_LIMIT = Arg(NUMBER, required=True, convert=number_long, check=_delete_limit)
SECONDS = Arg(NUMBER, convert=number_double, gte=0, check=_finite)


def required(arg: Arg) -> Arg:
    return replace(arg, required=True)


def refused(path: str, value: Any) -> None:
    """The check of an argument MongoDB knows but the stand-in does not implement: refused when it asks for
    something (a true flag, a non-empty document, any other value), never ignored."""
    if isinstance(value, (Mapping, list)) and not value:
        return
    if bson_type(value) in BOOLISH and not _true_value(value):
        return
    command, _, name = path.partition(".")
    raise unsupported(f"the {command} option '{name}'")


def refuse(arg: Arg) -> Arg:
    """``arg``, refused when it asks for something (:func:`refused`)."""
    return replace(arg, check=refused)


# The $changeStream stage's own arguments.
CHANGE_STREAM: Mapping[str, Arg] = {
    "fullDocument": STRING, "fullDocumentBeforeChange": STRING, "resumeAfter": OBJECT, "startAfter": OBJECT,
    "startAtOperationTime": Arg(("timestamp",)), "showExpandedEvents": BOOL, "allChangesForCluster": BOOL,
    "allowToRunOnConfigDB": BOOL, "allowToRunOnSystemNS": BOOL,
}
