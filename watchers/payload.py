"""Payload values: document fields made JSON-safe, bounded in size and depth. Pure."""

from __future__ import annotations

import base64
import datetime as dt
import math
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

_TRUNCATED = "truncated"


def json_safe(value: Any, *, max_string: int, max_depth: int, _depth: int = 0) -> Any:
    """A JSON-ready copy of a BSON value; what cannot be kept safely becomes None."""
    kind = type(value)  # the commonest types first, by their exact type (a subclass takes the general way)
    if kind is str:
        return value if len(value) <= max_string else value[:max_string]
    if kind is dt.datetime and value.tzinfo is None:  # as PyMongo decodes dates: naive, in UTC
        return _iso_utc(value)
    if kind is list and _depth < max_depth:
        return [json_safe(v, max_string=max_string, max_depth=max_depth, _depth=_depth + 1) for v in value]
    return _json_safe(value, max_string, max_depth, _depth)


def _iso_utc(value: dt.datetime) -> str:
    """``value.isoformat(timespec="milliseconds") + "Z"`` for a naive datetime (UTC), at a third of the cost:
    orjson writes it with its microseconds (none when they are 0), cut to milliseconds here."""
    text = orjson.dumps(value).decode()  # '"YYYY-MM-DDTHH:MM:SS"' or '"YYYY-MM-DDTHH:MM:SS.ffffff"'
    return text[1:20] + ".000Z" if len(text) == 21 else text[1:24] + "Z"


def _json_safe(value: Any, max_string: int, max_depth: int, _depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**53) <= value <= 2**53 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= max_string else value[:max_string]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value[:max_string]).decode()
    name = type(value).__name__
    if name in ("ObjectId", "Decimal128", "Int64", "Regex", "Code", "MinKey", "MaxKey", "DBRef"):
        return int(value) if name == "Int64" else str(value)
    if name == "Timestamp":
        return {"t": value.time, "i": value.inc}
    if name == "Binary":
        return base64.b64encode(bytes(value)[:max_string]).decode()
    if _depth >= max_depth:
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v, max_string=max_string, max_depth=max_depth, _depth=_depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, max_string=max_string, max_depth=max_depth, _depth=_depth + 1) for v in value]
    return None


def pick(doc: dict[str, Any] | None, names: Iterable[str], *, max_string: int, max_depth: int) -> dict[str, Any]:
    """The allow-listed fields of a document (top-level names only), JSON-safe."""
    if not isinstance(doc, dict):
        return {}
    out = {}
    for name in names:
        if name in doc:
            out[name] = json_safe(doc[name], max_string=max_string, max_depth=max_depth)
    return out


def bound(data: dict[str, Any], max_bytes: int, keep: Iterable[str]) -> dict[str, Any]:
    """Drop the largest fields (never those in ``keep``) until the JSON fits ``max_bytes``; mark it truncated."""
    if len(orjson.dumps(data)) <= max_bytes:
        return data
    kept = set(keep)
    out = dict(data)
    sizes = sorted(((len(orjson.dumps(v)), k) for k, v in out.items() if k not in kept), reverse=True)
    for _, key in sizes:
        del out[key]
        out[_TRUNCATED] = True
        if len(orjson.dumps(out)) <= max_bytes:
            break
    return out
