"""MongoDB's size limits, all measured in encoded BSON bytes (never in characters: emoji take four bytes each).

- A document a client stores holds at most 16 MiB (``maxBsonObjectSize``, 16,777,216 bytes). Past that, an
  insert fails with BadValue (2), an update or a replacement with 17419, an upsert with 17420.
- Any single document in a message, in either direction, holds at most 16 MiB + 16 KiB (16,793,600 bytes, the
  server's internal limit, room for a command around a maximal document). A bigger one fails with
  ``BSONObjectTooLarge`` (10334): a document a client sends, a change event, an aggregation result.
- A cursor batch (``find``, ``aggregate``, ``getMore``, change streams) takes documents while the batch holds at
  most 16 MiB, counting each document with its array-element overhead, as the server's
  ``FindCommon::haveSpaceForNext`` does. The first document always goes in, so a batch always makes progress;
  ``batchSize``, when given, caps the count.
- A message holds at most 48,000,000 bytes (``maxMessageSizeBytes``); with batches cut as above, no reply
  comes near it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument

from realtime.standin.errors import CommandError

MAX_BSON_SIZE = 16 * 1024 * 1024  # maxBsonObjectSize: a stored document, and a batch's documents
MAX_INTERNAL_SIZE = MAX_BSON_SIZE + 16 * 1024  # BSONObjMaxInternalSize: any document on the wire
MAX_MESSAGE_SIZE = 48_000_000  # maxMessageSizeBytes


def bson_size(doc: Mapping[str, Any]) -> int:
    """A document's size in bytes, encoded."""
    if isinstance(doc, RawBSONDocument):
        return len(doc.raw)
    return len(bson.encode(doc))


def encoded(doc: Mapping[str, Any]) -> RawBSONDocument:
    """A document encoded once, for a reply (which then copies its bytes): its size is known without encoding it
    again."""
    return doc if isinstance(doc, RawBSONDocument) else RawBSONDocument(bson.encode(doc))


def too_large(size: int, doc: Mapping[str, Any]) -> CommandError:
    """``BSONObjectTooLarge``, with the message the server's BSON layer gives."""
    first = next(iter(doc.items()), None)
    shown = "" if first is None else f" First element: {first[0]}: {show(first[1])}"
    return CommandError(10334, f"BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and "
                               f"{MAX_INTERNAL_SIZE}(16MB){shown}")


def check_document(doc: Mapping[str, Any]) -> int:
    """The size of a document about to go on the wire; ``BSONObjectTooLarge`` when it is too big to."""
    size = len(doc.raw) if isinstance(doc, RawBSONDocument) else bson_size(doc)
    if size > MAX_INTERNAL_SIZE:
        raise too_large(size, doc)
    return size


def insert_too_large(size: int) -> CommandError:
    return CommandError(2, f"object to insert too large. size in bytes: {size}, max size: {MAX_BSON_SIZE}")


def update_too_large() -> CommandError:
    return CommandError(17419, f"Resulting document after update is larger than {MAX_BSON_SIZE}")


def upsert_too_large() -> CommandError:
    return CommandError(17420, f"Document to upsert is larger than {MAX_BSON_SIZE}")


class Batch:
    """The documents of one cursor reply, cut as the server cuts them: by count (``batchSize``) and by bytes."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.docs: list[Mapping[str, Any]] = []  # encoded (RawBSONDocument), ready for the reply
        self.bytes = 4  # the BSON array's length prefix

    @property
    def full(self) -> bool:
        """Whether ``batchSize`` documents are in."""
        return self.limit is not None and len(self.docs) >= self.limit

    def offer(self, doc: Mapping[str, Any]) -> bool:
        """Take ``doc`` if it fits; False (and ``doc`` left out) when the batch is full. A document too big for
        the wire raises ``BSONObjectTooLarge``."""
        if self.full:
            return False
        raw = encoded(doc)
        size = check_document(raw)
        if self.docs and self.bytes + size > MAX_BSON_SIZE:
            return False
        # An array element: a type byte, the index as a C string, the document.
        self.bytes += 1 + len(str(len(self.docs))) + 1 + size
        self.docs.append(raw)
        return True


_SHOWN_CHARS = 150


def show(value: Any) -> str:
    """A value as the server's log and error messages show it, cut short: ``{ _data: "8265..." }``."""
    out = _show(value)
    return out if len(out) <= 2 * _SHOWN_CHARS else out[: 2 * _SHOWN_CHARS] + "..."


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f'"{value[:_SHOWN_CHARS]}..."' if len(value) > _SHOWN_CHARS else f'"{value}"'
    if isinstance(value, Mapping):
        items = list(value.items())
        inner = ", ".join(f"{k}: {_show(v)}" for k, v in items[:8]) + (", ..." if len(items) > 8 else "")
        return f"{{ {inner} }}" if items else "{}"
    if isinstance(value, list):
        inner = ", ".join(_show(v) for v in value[:8]) + (", ..." if len(value) > 8 else "")
        return f"[ {inner} ]" if value else "[]"
    if isinstance(value, bson.ObjectId):
        return f"ObjectId('{value}')"
    if isinstance(value, dt.datetime):
        return f"new Date({int(value.timestamp() * 1000)})"
    if isinstance(value, (bytes, bson.Binary)):
        return f"BinData({getattr(value, 'subtype', 0)}, ...)"
    if isinstance(value, bson.Decimal128):
        return f'NumberDecimal("{value}")'
    if isinstance(value, bson.Regex):
        return f"/{value.pattern}/{_regex_flags(value.flags)}"
    if isinstance(value, (bson.MinKey, bson.MaxKey)):
        return type(value).__name__
    return str(value)


def _regex_flags(flags: int | str) -> str:
    if isinstance(flags, str):
        return flags
    letters = (("i", re.IGNORECASE), ("m", re.MULTILINE), ("s", re.DOTALL), ("x", re.VERBOSE))
    return "".join(letter for letter, bit in letters if flags & bit)
