"""The positional operator ``$`` of an update path, made concrete for one document.

``{$set: {"grades.$.mark": 1}}`` with the filter ``{"grades.score": 8}`` sets the mark of the first element of
``grades`` that the filter matched. The server records that position while it matches the filter; here it is found
again: the first condition of the filter (top level, or in an ``$and``) that goes through an array of the document
names the array, and the position is that of the first element for which the condition holds alone. What the server
refuses is refused with its codes (src/mongo/db/update/positional_node.cpp, update/update_driver.cpp):

- no condition of the filter matched through an array, or the update is an upsert's insert: BadValue (2) "The
  positional operator did not find the match needed from the query.";
- more than one ``$`` in a path: BadValue (2) "Too many positional (i.e. '$') elements found in path 'a.$.b.$'";
- ``$`` first in a path: BadValue (2) "Cannot have positional (i.e. '$') element in the first position in path
  '$.a'".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import mongomock.filtering

from realtime.standin.errors import CommandError

NOT_FOUND = "The positional operator did not find the match needed from the query."


def has_positional(path: str) -> bool:
    return "$" in path.split(".")


def check_path(path: str) -> None:
    """Refuse a path the server refuses as it parses the update, whatever the documents."""
    parts = path.split(".")
    if parts.count("$") > 1:
        raise CommandError(2, f"Too many positional (i.e. '$') elements found in path '{path}'")
    if parts[0] == "$":
        raise CommandError(2, f"Cannot have positional (i.e. '$') element in the first position in path '{path}'")


def resolve(update: Mapping[str, Any], doc: Mapping[str, Any], query: Mapping[str, Any] | None) -> dict[str, Any]:
    """``update`` with the ``$`` of each path replaced by the position the query matched in ``doc``; ``query`` None
    for an upsert's insert, where there is no match to take a position from."""
    if not any(isinstance(spec, Mapping) and any(has_positional(p) for p in spec) for spec in update.values()):
        return dict(update)
    position = None if query is None else matched_position(query, doc)
    out: dict[str, Any] = {}
    for op, spec in update.items():
        if not isinstance(spec, Mapping):
            out[op] = spec
            continue
        paths: dict[str, Any] = {}
        for path, arg in spec.items():
            if has_positional(path):
                if position is None:
                    raise CommandError(2, NOT_FOUND)
                path = ".".join(str(position) if part == "$" else part for part in path.split("."))
            paths[path] = arg
        out[op] = paths
    return out


def _conditions(query: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in query.items():
        if key == "$and" and isinstance(value, list):
            for clause in value:
                if isinstance(clause, Mapping):
                    yield from _conditions(clause)
        elif not key.startswith("$"):
            yield key, value


def matched_position(query: Mapping[str, Any], doc: Mapping[str, Any]) -> int | None:
    """The index of the first array element through which a condition of ``query`` matches ``doc``, or None."""
    for path, condition in _conditions(query):
        parts = path.split(".")
        value: Any = doc
        for depth, part in enumerate(parts):
            if isinstance(value, list):
                prefix = parts[:depth]
                for index, element in enumerate(value):
                    if _holds(doc, prefix, element, path, condition):
                        return index
                break
            if not isinstance(value, Mapping) or part not in value:
                break
            value = value[part]
        else:
            if isinstance(value, list) and not (isinstance(condition, list)):
                for index, element in enumerate(value):
                    if _holds(doc, parts, element, path, condition):
                        return index
    return None


def _holds(doc: Mapping[str, Any], prefix: list[str], element: Any, path: str, condition: Any) -> bool:
    """Whether ``{path: condition}`` holds of ``doc`` with the array at ``prefix`` holding ``element`` alone."""
    trial = _replaced(doc, prefix, [element])
    try:
        return bool(mongomock.filtering.filter_applies({path: condition}, trial))
    except Exception:  # a condition mongomock cannot evaluate here decides no position
        return False


def _replaced(doc: Any, prefix: list[str], value: Any) -> Any:
    if not prefix:
        return value
    out = dict(doc)
    out[prefix[0]] = _replaced(doc[prefix[0]], prefix[1:], value)
    return out
