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


# -- aggregation stages: their arguments, checked before any document is read ---------------------------------
# Codes and messages from mongodb/mongo src/mongo/db/pipeline/document_source_*.cpp (limit, skip, sample, group,
# unwind, sort, project via projection_parser.cpp, match, add_fields).
_ACCUMULATORS = frozenset({
    "$accumulator", "$addToSet", "$avg", "$bottom", "$bottomN", "$count", "$first", "$firstN", "$last", "$lastN",
    "$max", "$maxN", "$median", "$mergeObjects", "$min", "$minN", "$percentile", "$push", "$stdDevPop",
    "$stdDevSamp", "$sum", "$top", "$topN",
})


def _whole_number(stage: str, value: Any) -> int | None:
    """A stage's numeric argument as an integer; None when it is no number; BadValue when it has a fraction."""
    if bson_type(value) not in ("int", "long", "double", "decimal"):
        return None
    number = float(str(value)) if bson_type(value) == "decimal" else value
    if number != number or (isinstance(number, float) and not number.is_integer()):
        raise CommandError(2, f"invalid argument to {stage} stage :: caused by :: Expected an integer: "
                              f"{stage}: {number}")
    return int(number)


def check_stage(name: str, spec: Any) -> None:
    """Refuse a stage's arguments as the server does when it parses the pipeline."""
    checks = {"$limit": _limit, "$skip": _skip, "$sample": _sample, "$group": _group, "$unwind": _unwind,
              "$sort": _sort, "$project": _project, "$match": _match, "$addFields": _add_fields,
              "$set": _add_fields}
    check = checks.get(name)
    if check is not None:
        check(name, spec)


def _limit(name: str, spec: Any) -> None:
    n = _whole_number(name, spec)
    if n is None:
        raise CommandError(15957, "the limit must be specified as a number")
    if n <= 0:
        raise CommandError(15958, "the limit must be positive")


def _skip(name: str, spec: Any) -> None:
    n = _whole_number(name, spec)
    if n is None:
        raise CommandError(15972, "Argument to $skip must be a number")
    if n < 0:
        raise CommandError(15956, "Argument to $skip cannot be negative")


def _sample(name: str, spec: Any) -> None:
    if not isinstance(spec, Mapping):
        raise CommandError(28745, "the $sample stage specification must be an object")
    for key in spec:
        if key != "size":
            raise CommandError(28748, f"unrecognized option to $sample: {key}")
    if "size" not in spec:
        raise CommandError(28749, "$sample stage must specify a size")
    if bson_type(spec["size"]) not in ("int", "long", "double", "decimal"):
        raise CommandError(28746, "size argument to $sample must be a number")
    if float(str(spec["size"])) < 0:
        raise CommandError(28747, "size argument to $sample must not be negative")


def _group(name: str, spec: Any) -> None:
    if not isinstance(spec, Mapping):
        raise CommandError(15947, "a group's fields must be specified in an object")
    if "_id" not in spec:
        raise CommandError(15955, "a group specification must include an _id")
    for field, accumulator in spec.items():
        if field == "_id":
            continue
        if field.startswith("$"):
            raise CommandError(15950, f"The field name '{field}' cannot be an operator name")
        if "." in field:
            raise CommandError(40235, f"The field name '{field}' cannot contain '.'")
        if not isinstance(accumulator, Mapping):
            raise CommandError(40234, f"The field '{field}' must be an accumulator object")
        if len(accumulator) != 1:
            raise CommandError(40238, f"The field '{field}' must specify one accumulator")
        operator = next(iter(accumulator))
        if operator not in _ACCUMULATORS:
            raise CommandError(15952, f"unknown group operator '{operator}'")


def _unwind(name: str, spec: Any) -> None:
    if isinstance(spec, Mapping):
        for key in spec:
            if key not in ("path", "includeArrayIndex", "preserveNullAndEmptyArrays"):
                raise CommandError(28811, f"unrecognized option to $unwind stage: {key}")
        if "path" not in spec:
            raise CommandError(28812, "No path specified to $unwind stage")
        path = spec["path"]
        if bson_type(path) != "string":
            raise CommandError(28808, f"Expected a string as the path for $unwind stage, got {bson_type(path)}")
    elif bson_type(spec) == "string":
        path = spec
    else:
        raise CommandError(15981, "expected either a string or an object as specification for $unwind stage, got "
                                  f"{bson_type(spec)}")
    if not path.startswith("$"):
        raise CommandError(28818, f"path option to $unwind stage should be prefixed with a '$': {path}")


def _sort(name: str, spec: Any) -> None:
    if not isinstance(spec, Mapping):
        raise CommandError(15973, "the $sort key specification must be an object")
    if not spec:
        raise CommandError(15976, "$sort stage must have at least one sort key")
    for path, direction in spec.items():
        if isinstance(direction, Mapping) and "$meta" in direction:
            continue
        if bson_type(direction) not in ("int", "long", "double", "decimal"):
            raise CommandError(15974, f"Illegal key in $sort specification: {path}: {direction!r}")
        if float(str(direction)) not in (1, -1):
            raise CommandError(15975, "$sort key ordering must be 1 (for ascending) or -1 (for descending)")


def _project(name: str, spec: Any) -> None:
    if not isinstance(spec, Mapping):
        raise CommandError(15969, "$project specification must be an object")
    if not spec:
        raise CommandError(51272, "Invalid $project :: caused by :: projection specification must have at least "
                                  "one field")
    _one_kind(spec, "Invalid $project :: caused by :: ")


# The projection operators of find that neither include nor exclude (projection_ast: they go with either kind).
_FIND_PROJECTION_OPERATORS = frozenset({"$slice", "$elemMatch", "$meta"})


def check_projection(spec: Any) -> None:
    """A find's projection (or findAndModify's fields) as the server parses it: inclusions and exclusions (but of
    _id) do not mix (31254, 31253)."""
    if isinstance(spec, Mapping):
        _one_kind({path: value for path, value in spec.items()
                   if not (isinstance(value, Mapping) and set(value) & _FIND_PROJECTION_OPERATORS)}, "")


def _one_kind(spec: Mapping[str, Any], prefix: str) -> None:
    included: str | None = None
    excluded: str | None = None
    for path, value in _projection_leaves(spec):
        kind = bson_type(value)
        if kind in ("bool", "int", "long", "double", "decimal"):
            if value in (0, False) or (kind == "decimal" and float(str(value)) == 0):
                if path != "_id":
                    excluded = excluded or path
            else:
                included = included or path
        else:
            included = included or path  # a computed field: an inclusion projection
        if included is not None and excluded is not None:
            if path == excluded:
                raise CommandError(31254, f"{prefix}Cannot do exclusion on field {excluded} in inclusion projection")
            raise CommandError(31253, f"{prefix}Cannot do inclusion on field {included} in exclusion projection")


def _projection_leaves(spec: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in spec.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and not next(iter(value)).startswith("$"):
            out.extend(_projection_leaves(value, path + "."))
        else:
            out.append((path, value))
    return out


def _match(name: str, spec: Any) -> None:
    if not isinstance(spec, Mapping):
        raise CommandError(15959, "the match filter must be an expression in an object")


def _add_fields(name: str, spec: Any) -> None:
    if not isinstance(spec, Mapping):
        raise CommandError(40272, f"{name} specification stage must be an object, got {bson_type(spec)}")


MAX_DEPTH = 100  # BSONDepth::getMaxDepthForUserStorage: levels of nested documents and arrays a stored document has


def check_depth(doc: Mapping[str, Any]) -> None:
    """Refuse a document nested deeper than a stored document may be (Overflow, 15)."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, Mapping) else value
        for child in children:
            if isinstance(child, (Mapping, list)):
                if depth + 1 > MAX_DEPTH:
                    raise CommandError(15, f"Document exceeds maximum nesting depth of {MAX_DEPTH}")
                stack.append((child, depth + 1))


def check_writable(db: str, coll: str) -> None:
    """A client writes no ``system.`` collection but ``system.js`` (userAllowedWriteNS: InvalidNamespace 73)."""
    if coll.startswith("system.") and coll != "system.js":
        raise CommandError(73, f"cannot write to '{db}.{coll}'")
