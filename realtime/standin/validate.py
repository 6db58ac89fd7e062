"""What the server refuses whatever the documents: malformed filters, and ``_id`` values it cannot store.

``mongomock`` only finds a bad operator when it meets a document to apply it to, so ``{x: {$bad: 1}}`` on an empty
collection would answer ``[]``; the server parses the whole filter first and answers ``BadValue`` (2). These checks
run before any document is read, with the server's codes and messages (src/mongo/db/matcher/expression_parser.cpp,
src/mongo/db/storage/storage_validation.cpp).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from realtime.standin.arguments import bson_type
from realtime.standin.errors import CommandError, unsupported

TOP_LEVEL = frozenset({"$and", "$or", "$nor", "$expr", "$where", "$text", "$comment", "$jsonSchema",
                       "$alwaysTrue", "$alwaysFalse", "$sampleRate"})
FIELD_OPERATORS = frozenset({
    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$type", "$mod", "$regex", "$options",
    "$all", "$elemMatch", "$size", "$not", "$bitsAllSet", "$bitsAnySet", "$bitsAllClear", "$bitsAnyClear",
    "$geoWithin", "$geoIntersects", "$near", "$nearSphere", "$within", "$maxDistance", "$minDistance",
    "$geometry", "$box", "$center", "$centerSphere", "$polygon", "$uniqueDocs", "$_internalSchemaType",
})
# What mongomock cannot evaluate: refused up front rather than answered wrongly.
NOT_IMPLEMENTED = frozenset({"$where", "$text", "$jsonSchema", "$sampleRate", "$geoWithin", "$geoIntersects",
                             "$near", "$nearSphere", "$within", "$bitsAllSet", "$bitsAnySet", "$bitsAllClear",
                             "$bitsAnyClear"})


# The aggregation stages MongoDB 7.0 knows (an unknown one is 40324 before anything runs).
PIPELINE_STAGES = frozenset({
    "$addFields", "$bucket", "$bucketAuto", "$changeStream", "$changeStreamSplitLargeEvent", "$collStats", "$count",
    "$currentOp", "$densify", "$documents", "$facet", "$fill", "$geoNear", "$graphLookup", "$group", "$indexStats",
    "$limit", "$listLocalSessions", "$listSampledQueries", "$listSearchIndexes", "$listSessions", "$lookup",
    "$match", "$merge", "$out", "$planCacheStats", "$project", "$redact", "$replaceRoot", "$replaceWith", "$sample",
    "$search", "$searchMeta", "$set", "$setWindowFields", "$shardedDataDistribution", "$skip", "$sort",
    "$sortByCount", "$unionWith", "$unset", "$unwind", "$vectorSearch",
})


def check_filter(query: Any) -> None:
    """Refuse a filter the server would refuse to parse (BadValue), whatever the collection holds."""
    if query is None:
        return
    if not isinstance(query, Mapping):
        raise CommandError(2, "query filter must be an object")
    for key, value in query.items():
        if key.startswith("$"):
            _top_level(key, value)
        elif isinstance(value, Mapping) and value and next(iter(value)).startswith("$"):
            _operators(key, value)


def _top_level(key: str, value: Any) -> None:
    if key not in TOP_LEVEL:
        raise CommandError(2, f"unknown top level operator: {key}. If you have a field name that starts with a "
                              "'$' symbol, consider using $getField or $setField.")
    if key in NOT_IMPLEMENTED:
        raise unsupported(f"the query operator {key}")
    if key in ("$and", "$or", "$nor"):
        if bson_type(value) != "array":
            raise CommandError(2, f"{key} must be an array")
        if not value:
            raise CommandError(2, "$and/$or/$nor must be a nonempty array")
        for clause in value:
            if not isinstance(clause, Mapping):
                raise CommandError(2, "$or/$and/$nor entries need to be full objects")
            check_filter(clause)


def _operators(path: str, spec: Mapping[str, Any]) -> None:
    for op, arg in spec.items():
        if not op.startswith("$") or op not in FIELD_OPERATORS:
            raise CommandError(2, f"unknown operator: {op}")
        if op in NOT_IMPLEMENTED:
            raise unsupported(f"the query operator {op}")
        if op in ("$in", "$nin", "$all") and bson_type(arg) != "array":
            raise CommandError(2, f"{op} needs an array")
        if op in ("$in", "$nin") and any(isinstance(x, Mapping) and x and next(iter(x)).startswith("$")
                                         for x in arg):
            raise CommandError(2, "cannot nest $ under $in")
        if op == "$elemMatch":
            if not isinstance(arg, Mapping):
                raise CommandError(2, "$elemMatch needs an Object")
            if arg and next(iter(arg)).startswith("$") and next(iter(arg)) not in TOP_LEVEL:
                _operators(path, arg)
            else:
                check_filter(arg)
        if op == "$not":
            if isinstance(arg, Mapping):
                if not arg:
                    raise CommandError(2, "$not cannot be empty")
                _operators(path, arg)
            elif bson_type(arg) != "regex":
                raise CommandError(2, "$not needs a regex or a document")
        if op == "$size" and bson_type(arg) not in ("int", "long", "double", "decimal"):
            raise CommandError(2, "$size needs a number")
        if op == "$regex" and bson_type(arg) not in ("string", "regex"):
            raise CommandError(2, "$regex has to be a string")
        if op == "$exists" and isinstance(arg, Mapping):
            raise CommandError(2, "$exists needs a boolean or a number")


def check_id(doc: Mapping[str, Any]) -> None:
    """Refuse an ``_id`` the server cannot store (storage_validation.cpp's validIdField)."""
    if "_id" not in doc:
        return
    value = doc["_id"]
    kind = bson_type(value)
    if kind == "array":
        raise CommandError(53, "The '_id' value cannot be of type array")
    if kind == "regex" or isinstance(value, re.Pattern):
        raise CommandError(53, "The '_id' value cannot be of type regex")
    if isinstance(value, Mapping):
        bad = _dollar_field(value)
        if bad is not None:
            raise CommandError(52, f"_id fields may not contain '$'-prefixed fields: {bad} is not valid for storage.")


_DBREF_FIELDS = ("$ref", "$id", "$db")


def _dollar_field(doc: Mapping[str, Any]) -> str | None:
    """The first ``$``-prefixed field name in an embedded document, at any depth (a DBRef's are allowed)."""
    for key, value in doc.items():
        if key.startswith("$") and key not in _DBREF_FIELDS:
            return key
        if isinstance(value, Mapping):
            inner = _dollar_field(value)
            if inner is not None:
                return inner
    return None
