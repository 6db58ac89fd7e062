"""``updateDescription`` from a document's state before and after an update, as MongoDB 5.0+ reports it.

The server describes an update by the fields that differ (``updatedFields``, with dotted paths into
sub-documents and array elements), the fields that disappeared (``removedFields``), and the arrays that
got shorter (``truncatedArrays``, each ``{field, newSize}``). Field order and BSON types count: a value
that compares equal in Python but encodes differently (``1`` and ``1.0``) is a change.
"""

from __future__ import annotations

from typing import Any

import bson


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:  # exotic BSON types: compare encodings
        return bson.encode({"v": a}) == bson.encode({"v": b})


def same_document(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return _same(a, b)


def describe(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    updated: dict[str, Any] = {}
    removed: list[str] = []
    truncated: list[dict[str, Any]] = []
    _diff_object(before, after, "", updated, removed, truncated)
    return {"updatedFields": updated, "removedFields": removed, "truncatedArrays": truncated}


def _diff_object(
    before: dict[str, Any],
    after: dict[str, Any],
    prefix: str,
    updated: dict[str, Any],
    removed: list[str],
    truncated: list[dict[str, Any]],
) -> None:
    for key in before:
        if key not in after:
            removed.append(prefix + key)
    for key, value in after.items():
        path = prefix + key
        if key not in before:
            updated[path] = value
            continue
        old = before[key]
        if _same(old, value):
            continue
        if isinstance(old, dict) and isinstance(value, dict) and _only_appended_or_changed(old, value):
            _diff_object(old, value, path + ".", updated, removed, truncated)
        elif isinstance(old, list) and isinstance(value, list):
            _diff_array(old, value, path, updated, removed, truncated)
        else:
            updated[path] = value


def _only_appended_or_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """A sub-document is diffed field by field only while its existing fields keep their order."""
    kept = [k for k in old if k in new]
    return kept == [k for k in new if k in old]


def _diff_array(
    old: list[Any],
    new: list[Any],
    path: str,
    updated: dict[str, Any],
    removed: list[str],
    truncated: list[dict[str, Any]],
) -> None:
    if len(new) < len(old):
        truncated.append({"field": path, "newSize": len(new)})
    for i, value in enumerate(new):
        item_path = f"{path}.{i}"
        if i >= len(old):
            updated[item_path] = value
        elif not _same(old[i], value):
            if isinstance(old[i], dict) and isinstance(value, dict) and _only_appended_or_changed(old[i], value):
                _diff_object(old[i], value, item_path + ".", updated, removed, truncated)
            else:
                updated[item_path] = value
