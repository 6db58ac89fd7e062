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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.datetime_ms import DatetimeMS

from realtime.standin.errors import CommandError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MAX = 2**31 - 1
NUMBER = ("long", "int", "decimal", "double")  # IDL safeInt64: any numeric type
BOOLISH = ("bool", "long", "int", "decimal", "double")  # IDL safeBool / optionalBool


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


def wrong_type(path: str, value: Any, types: tuple[str, ...]) -> CommandError:
    expected = f"type '{types[0]}'" if len(types) == 1 else f"types '[{', '.join(types)}]'"
    return CommandError(14, f"BSON field '{path}' is the wrong type '{bson_type(value)}', expected {expected}")


def missing(path: str) -> CommandError:
    return CommandError(40414, f"BSON field '{path}' is missing but a required field")


def _parse(path: str, value: Any, arg: Arg) -> Any:
    if bson_type(value) not in arg.types:
        raise wrong_type(path, value, arg.types)
    if arg.fields and isinstance(value, Mapping):
        value = parse_object(path, dict(value), arg.fields)
    if arg.items is not None and isinstance(value, list):
        # Null elements are skipped, as the server's IDL parser skips them.
        value = [_parse(f"{path}.{i}", item, arg.items) for i, item in enumerate(value) if item is not None]
    if arg.convert is not None:
        value = arg.convert(value)
    if arg.gte is not None and value < arg.gte:
        name = path.rsplit(".", 1)[-1]
        raise CommandError(51024, f"BSON field '{name}' value must be >= {arg.gte}, actual value '{value}'")
    if arg.check is not None:
        arg.check(path, value)
    return value


def parse_object(path: str, doc: dict[str, Any], fields: Mapping[str, Arg]) -> dict[str, Any]:
    """``doc`` with each argument in ``fields`` checked and normalised (a copy; other keys are kept as they are)."""
    for name, arg in fields.items():
        value = doc.get(name)
        if value is None:
            if arg.required:
                raise missing(f"{path}.{name}" if path else name)
            doc.pop(name, None)
            continue
        doc[name] = _parse(f"{path}.{name}" if path else name, value, arg)
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


STRING = Arg(("string",))
OBJECT = Arg(("object",))
BOOL = Arg(("bool",))
SAFE_BOOL = Arg(BOOLISH, convert=_true_value)
INT = Arg(NUMBER, convert=number_long)
NON_NEGATIVE = Arg(NUMBER, convert=number_long, gte=0)
LONG = Arg(("long",), convert=int)
UUID = Arg(("binData",), required=True, check=_uuid)
OBJECTS = Arg(("array",), items=OBJECT)
STRINGS = Arg(("array",), items=STRING)
CURSOR = Arg(("object",), fields={"batchSize": NON_NEGATIVE})
HINT = Arg(("string", "object"))
COLLATION = Arg(("object",), check=_collation)
LET = Arg(("object",), check=_let)  # an index name or key pattern
UPDATE = Arg(("object", "array"))  # a modification: operators or a replacement, or a pipeline
IMAGES = Arg(("object",), fields={"enabled": Arg(("bool",), required=True)})


def required(arg: Arg) -> Arg:
    return Arg(arg.types, True, arg.convert, arg.gte, arg.fields, arg.items, arg.check)


# Arguments every command may carry. The session's are parsed as the server's OperationSessionInfo.
SESSION: Mapping[str, Arg] = {
    "lsid": Arg(("object",), fields={"id": UUID, "uid": Arg(("binData",))}),
    "txnNumber": LONG,
    "autocommit": BOOL,
    "startTransaction": BOOL,
}
GENERIC: Mapping[str, Arg] = {
    "readConcern": Arg(("object",), fields={"level": Arg(("string",), check=_read_concern_level),
                                            "atClusterTime": Arg(("timestamp",))}),
    "writeConcern": OBJECT,
    "$readPreference": OBJECT,
    "maxTimeMS": Arg(NUMBER, convert=_max_time_ms),
}

_HELLO = {"client": Arg(("object",), fields={"application": Arg(("object",), fields={"name": STRING})}),
          "helloOk": SAFE_BOOL}
_FIND_AND_MODIFY = {
    "query": OBJECT, "sort": OBJECT, "remove": SAFE_BOOL, "update": UPDATE, "new": SAFE_BOOL, "fields": OBJECT,
    "upsert": SAFE_BOOL, "arrayFilters": OBJECTS, "bypassDocumentValidation": SAFE_BOOL, "collation": COLLATION,
    "let": LET, "hint": HINT,
}
_COLLECTION_OPTIONS = {"changeStreamPreAndPostImages": IMAGES, "validator": OBJECT, "validationLevel": STRING,
                       "validationAction": STRING}

# The arguments each command reads (beyond its first field, the collection name, which the handler checks).
COMMANDS: Mapping[str, Mapping[str, Arg]] = {
    "hello": _HELLO, "isMaster": _HELLO, "ismaster": _HELLO,
    "endSessions": {"endSessions": Arg(("array",), required=True,
                                       items=Arg(("object",), fields={"id": UUID}))},
    "killCursors": {"cursors": Arg(("array",), required=True, items=LONG)},
    "getMore": {"getMore": required(LONG), "collection": required(STRING), "batchSize": NON_NEGATIVE},
    "insert": {"documents": required(OBJECTS), "ordered": BOOL, "bypassDocumentValidation": SAFE_BOOL},
    "update": {
        "updates": Arg(("array",), required=True, items=Arg(("object",), fields={
            "q": required(OBJECT), "u": required(UPDATE), "multi": BOOL, "upsert": BOOL, "arrayFilters": OBJECTS,
            "collation": COLLATION, "c": OBJECT, "hint": HINT})),
        "ordered": BOOL, "let": LET, "bypassDocumentValidation": SAFE_BOOL},
    "delete": {
        "deletes": Arg(("array",), required=True, items=Arg(("object",), fields={
            "q": required(OBJECT), "limit": Arg(NUMBER, required=True, convert=number_long, check=_delete_limit),
            "collation": COLLATION, "hint": HINT})),
        "ordered": BOOL, "let": LET},
    "findAndModify": _FIND_AND_MODIFY, "findandmodify": _FIND_AND_MODIFY,
    "find": {
        "filter": OBJECT, "projection": OBJECT, "sort": OBJECT, "skip": NON_NEGATIVE, "limit": NON_NEGATIVE,
        "batchSize": NON_NEGATIVE, "singleBatch": SAFE_BOOL, "allowDiskUse": SAFE_BOOL, "min": OBJECT,
        "max": OBJECT, "collation": COLLATION, "let": LET, "tailable": SAFE_BOOL, "awaitData": SAFE_BOOL,
        "noCursorTimeout": SAFE_BOOL, "returnKey": SAFE_BOOL, "showRecordId": SAFE_BOOL,
        "allowPartialResults": SAFE_BOOL, "hint": HINT},
    "count": {"query": OBJECT, "limit": INT, "skip": NON_NEGATIVE, "collation": COLLATION, "hint": HINT},
    "distinct": {"key": required(STRING), "query": OBJECT, "collation": COLLATION},
    "aggregate": {"pipeline": Arg(("array",), required=True, items=OBJECT), "cursor": CURSOR, "explain": BOOL,
                  "allowDiskUse": BOOL, "let": LET, "collation": COLLATION, "bypassDocumentValidation": SAFE_BOOL,
                  "hint": HINT},
    "create": {**_COLLECTION_OPTIONS, "collation": COLLATION, "capped": SAFE_BOOL, "size": INT, "max": INT,
               "timeseries": OBJECT, "viewOn": STRING, "pipeline": OBJECTS, "expireAfterSeconds": INT},
    "collMod": _COLLECTION_OPTIONS,
    "renameCollection": {"renameCollection": required(STRING), "to": required(STRING), "dropTarget": SAFE_BOOL},
    "listCollections": {"filter": OBJECT, "nameOnly": SAFE_BOOL, "authorizedCollections": SAFE_BOOL,
                        "cursor": CURSOR},
    "listDatabases": {"filter": OBJECT, "nameOnly": SAFE_BOOL, "authorizedDatabases": SAFE_BOOL},
    "createIndexes": {"indexes": Arg(("array",), required=True, items=Arg(("object",), fields={
        "key": required(OBJECT), "name": required(STRING), "unique": SAFE_BOOL, "sparse": SAFE_BOOL,
        "partialFilterExpression": OBJECT, "expireAfterSeconds": INT, "background": SAFE_BOOL, "v": INT,
        "collation": COLLATION}))},
    "listIndexes": {"cursor": CURSOR},
    "dropIndexes": {"index": Arg(("string", "array", "object"), required=True, items=STRING)},
    "configureFailPoint": {
        "configureFailPoint": required(STRING),
        "mode": Arg(("string", "object"), required=True, fields={"times": NON_NEGATIVE, "skip": NON_NEGATIVE}),
        "data": Arg(("object",), fields={
            "failCommands": STRINGS, "errorCode": Arg(NUMBER, convert=number_long), "errorLabels": STRINGS,
            "closeConnection": SAFE_BOOL, "blockConnection": SAFE_BOOL, "blockTimeMS": NON_NEGATIVE,
            "appName": STRING})},
    "getLog": {"getLog": required(STRING)},
    "realtimeStandIn": {"realtimeStandIn": required(STRING), "keepLast": NON_NEGATIVE,
                        "seconds": Arg(NUMBER, convert=number_double, gte=0, check=_finite)},
}


# The $changeStream stage's own arguments.
CHANGE_STREAM: Mapping[str, Arg] = {
    "fullDocument": STRING, "fullDocumentBeforeChange": STRING, "resumeAfter": OBJECT, "startAfter": OBJECT,
    "startAtOperationTime": Arg(("timestamp",)), "showExpandedEvents": BOOL, "allChangesForCluster": BOOL,
    "allowToRunOnConfigDB": BOOL, "allowToRunOnSystemNS": BOOL,
}


def parse(cmd: dict[str, Any]) -> dict[str, Any]:
    """The command with its arguments checked and normalised; :class:`CommandError` when they do not fit."""
    name = next(iter(cmd), "")
    db = cmd.get("$db")
    if db is None:
        raise CommandError(40571, "OP_MSG requests require a $db argument")
    if bson_type(db) != "string":
        raise wrong_type("$db", db, ("string",))
    if not db or any(c in db for c in '/\\. "\x00'):
        raise CommandError(73, f"Invalid database name: '{db}'")
    out = parse_object("OperationSessionInfo", dict(cmd), SESSION)
    out = parse_object("", out, GENERIC)
    return parse_object(name, out, COMMANDS.get(name, {}))
