"""``arrayFilters`` and the all-positional ``$[]``: update paths with array placeholders, made concrete per document.

``mongomock`` implements neither, so an update such as ``{$set: {"grades.$[g].mark": 1}}`` with
``arrayFilters: [{"g.score": {$gte: 8}}]`` is rewritten, for each document it applies to, into the plain paths it
amounts to there (``grades.0.mark``, ``grades.2.mark``), which mongomock applies. What the server refuses it refuses
here, with its codes (update/update_array_node.cpp, update/update_driver.cpp, matcher/expression_with_placeholder.cpp).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import mongomock.filtering

from realtime.standin.errors import CommandError
from realtime.standin.limits import show

_PLACEHOLDER = re.compile(r"^\$\[([^\]]*)\]$")
_IDENTIFIER = re.compile(r"^[a-z][a-zA-Z0-9]*$")


def parse(array_filters: list[Any] | None) -> dict[str, dict[str, Any]]:
    """The filters by identifier, checked as the server checks them before any document is read."""
    out: dict[str, dict[str, Any]] = {}
    for spec in array_filters or []:
        if not isinstance(spec, Mapping) or not spec:
            raise CommandError(9, "Cannot use an expression without a top-level field name in arrayFilters")
        names = {_top_name(key) for key in _field_names(spec)}
        if len(names) != 1:
            shown = " and ".join(f"'{n}'" for n in sorted(names)) or "none"
            raise CommandError(9, f"Error parsing array filter :: caused by :: Expected a single top-level field "
                                  f"name, found {shown}")
        name = names.pop()
        if not _IDENTIFIER.match(name):
            raise CommandError(2, "Error parsing array filter :: caused by :: The top-level field name must be an "
                                  f"alphanumeric string beginning with a lowercase letter, found '{name}'")
        if name in out:
            raise CommandError(9, f"Found multiple array filters with the same top-level field name {name}")
        out[name] = dict(spec)
    return out


def _field_names(spec: Mapping[str, Any]) -> list[str]:
    names = []
    for key, value in spec.items():
        if key in ("$and", "$or", "$nor") and isinstance(value, list):
            for clause in value:
                if isinstance(clause, Mapping):
                    names.extend(_field_names(clause))
        elif not key.startswith("$"):
            names.append(key)
    return names


def _top_name(key: str) -> str:
    return key.split(".", 1)[0]


def has_placeholders(update: Mapping[str, Any]) -> bool:
    return any("$[" in path for spec in update.values() if isinstance(spec, Mapping) for path in spec)


def check_usage(update: Mapping[str, Any], filters: Mapping[str, Any]) -> None:
    """Every ``$[identifier]`` needs its filter, and every filter must be used, as the server requires."""
    used: set[str] = set()
    for op, spec in update.items():
        if not isinstance(spec, Mapping):
            continue
        for path in spec:
            for part in path.split("."):
                match = _PLACEHOLDER.match(part)
                if match is None:
                    continue
                if op == "$rename":
                    raise CommandError(2, f"The source field for $rename may not be dynamic: {path}")
                name = match.group(1)
                if name and name not in filters:
                    raise CommandError(2, f"No array filter found for identifier '{name}' in path '{path}'")
                used.add(name)
    for name in filters:
        if name not in used:
            raise CommandError(9, f"The array filter for identifier '{name}' was not used in the update "
                                  f"{_show(update)}")


def concrete(update: Mapping[str, Any], doc: Mapping[str, Any], filters: Mapping[str, dict[str, Any]]
             ) -> dict[str, Any]:
    """The update with every placeholder path replaced by the plain paths it amounts to in ``doc``."""
    out: dict[str, Any] = {}
    for op, spec in update.items():
        if not isinstance(spec, Mapping) or not any("$[" in p for p in spec):
            out[op] = spec
            continue
        paths: dict[str, Any] = {}
        for path, arg in spec.items():
            for plain in _expand(path.split("."), 0, doc, filters, path):
                paths[plain] = arg
        if paths:
            out[op] = paths
    return out


def _expand(parts: list[str], i: int, value: Any, filters: Mapping[str, dict[str, Any]], path: str) -> list[str]:
    if i == len(parts):
        return [""]
    part = parts[i]
    match = _PLACEHOLDER.match(part)
    prefix = ".".join(parts[:i])
    if match is None:
        rest = ".".join(parts[i:])
        if "$[" not in rest:
            return [rest]
        if isinstance(value, Mapping) and part in value:
            child = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            child = value[int(part)]
        else:
            raise CommandError(2, f"The path '{'.'.join(parts[:i + 1])}' must exist in the document in order to "
                                  "apply array updates.")
        return [_join(part, tail) for tail in _expand(parts, i + 1, child, filters, path)]
    if not isinstance(value, list):
        where = prefix or path
        raise CommandError(2, f"Cannot apply array updates to non-array element {where.rsplit('.', 1)[-1]}: "
                              f"{_show(value)}")
    name = match.group(1)
    out: list[str] = []
    for index, element in enumerate(value):
        if name and not _matches(filters[name], name, element):
            continue
        out.extend(_join(str(index), tail) for tail in _expand(parts, i + 1, element, filters, path))
    return out


def _join(head: str, tail: str) -> str:
    return f"{head}.{tail}" if tail else head


def _matches(spec: dict[str, Any], name: str, element: Any) -> bool:
    """Whether an array element matches its filter: the identifier stands for the element."""
    return bool(mongomock.filtering.filter_applies(_rename(spec, name), {"_element": element}))


def _rename(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if key in ("$and", "$or", "$nor") and isinstance(value, list):
            out[key] = [_rename(c, name) if isinstance(c, Mapping) else c for c in value]
        elif key == name or key.startswith(name + "."):
            out["_element" + key[len(name):]] = value
        else:
            out[key] = value
    return out


def _show(value: Any) -> str:
    return show(value)
