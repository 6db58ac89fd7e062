"""The MongoDB wire protocol: message framing for OP_MSG, and the legacy OP_QUERY / OP_REPLY pair.

Pure functions over bytes. PyMongo sends every message as OP_MSG; the Node.js driver, ``mongosh`` and
Compass open with a legacy ``OP_QUERY`` ``hello`` on ``admin.$cmd`` and expect an ``OP_REPLY``.

An OP_MSG with the ``checksumPresent`` flag ends with the CRC-32C of everything before it, header included; a
message whose checksum does not match is a :class:`ProtocolError`, and the server closes the connection, as
MongoDB does (``ChecksumMismatch`` is one of its connection-fatal parse errors).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion

from realtime.standin import limits
from realtime.standin.crc32c import crc32c
from realtime.standin.errors import CommandError

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

HEADER = struct.Struct("<iiii")
MAX_MESSAGE_SIZE = limits.MAX_MESSAGE_SIZE

FLAG_CHECKSUM_PRESENT = 1 << 0
FLAG_MORE_TO_COME = 1 << 1
FLAG_EXHAUST_ALLOWED = 1 << 16

# Decode with the types real MongoDB round-trips: datetimes as aware UTC, UUIDs left as Binary, and dates outside
# Python's datetime range (years before 1 or after 9999, valid in BSON) as DatetimeMS rather than a decoding error.
CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO)


class ProtocolError(ValueError):
    """A malformed message; the server closes the connection that sent it."""


@dataclass(frozen=True)
class Header:
    length: int
    request_id: int
    response_to: int
    opcode: int


@dataclass
class Request:
    """A command to run: its document (OP_MSG sections merged), and how to answer it."""

    command: dict[str, Any]
    request_id: int
    legacy: bool = False  # OP_QUERY: answer with OP_REPLY
    more_to_come: bool = False  # OP_MSG with moreToCome: no answer
    error: CommandError | None = None  # a well-formed message the server refuses to run (a document too big)


def parse_header(data: bytes) -> Header:
    length, request_id, response_to, opcode = HEADER.unpack(data)
    if length < HEADER.size or length > MAX_MESSAGE_SIZE:
        raise ProtocolError(f"message length {length} out of bounds")
    return Header(length, request_id, response_to, opcode)


def _cstring(body: bytes, pos: int) -> tuple[str, int]:
    end = body.find(b"\x00", pos)
    if end < 0:
        raise ProtocolError("unterminated cstring")
    try:
        return body[pos:end].decode("utf-8", "strict"), end + 1
    except UnicodeDecodeError:
        raise ProtocolError("cstring is not UTF-8") from None


def _document(body: bytes, pos: int, limit: int) -> tuple[dict[str, Any], int]:
    if pos + 4 > limit:
        raise ProtocolError("truncated document")
    (size,) = struct.unpack_from("<i", body, pos)
    if size < 5 or pos + size > limit:
        raise ProtocolError("document size out of bounds")
    try:
        doc = bson.decode(body[pos : pos + size], CODEC)
    except Exception as exc:  # bson raises several types for bad input
        raise ProtocolError(f"invalid BSON: {exc}") from None
    return doc, pos + size


def _refuse_oversized(request: Request, doc: dict[str, Any], size: int) -> None:
    """A document over the server's per-document limit fails the command with ``BSONObjectTooLarge``."""
    if size > limits.MAX_INTERNAL_SIZE and request.error is None:
        request.error = limits.too_large(size, doc)


def parse_op_msg(header: Header, body: bytes) -> Request:
    if len(body) < 5:
        raise ProtocolError("OP_MSG too short")
    (flags,) = struct.unpack_from("<I", body, 0)
    if flags & ~(FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME | FLAG_EXHAUST_ALLOWED) & 0xFFFF:
        raise ProtocolError(f"unknown required OP_MSG flag bits {flags:#x}")
    end = len(body)
    if flags & FLAG_CHECKSUM_PRESENT:
        end -= 4
        if end < 5:
            raise ProtocolError("Invalid message size for an OpMsg containing a checksum")
        (checksum,) = struct.unpack_from("<I", body, end)
        head = HEADER.pack(header.length, header.request_id, header.response_to, header.opcode)
        if crc32c(memoryview(body)[:end], crc32c(head)) != checksum:
            raise ProtocolError("OP_MSG checksum does not match contents")
    pos = 4
    command: dict[str, Any] | None = None
    sequences: dict[str, list[dict[str, Any]]] = {}
    oversized: list[tuple[dict[str, Any], int]] = []
    while pos < end:
        kind = body[pos]
        pos += 1
        if kind == 0:
            if command is not None:
                raise ProtocolError("OP_MSG has more than one body section")
            command, after = _document(body, pos, end)
            oversized.append((command, after - pos))
            pos = after
        elif kind == 1:
            if pos + 4 > end:
                raise ProtocolError("truncated document sequence")
            (size,) = struct.unpack_from("<i", body, pos)
            seq_end = pos + size
            if size < 5 or seq_end > end:
                raise ProtocolError("document sequence size out of bounds")
            ident, p = _cstring(body, pos + 4)
            docs = []
            while p < seq_end:
                doc, after = _document(body, p, seq_end)
                oversized.append((doc, after - p))
                docs.append(doc)
                p = after
            sequences[ident] = docs
            pos = seq_end
        else:
            raise ProtocolError(f"unknown OP_MSG section kind {kind}")
    if command is None:
        raise ProtocolError("OP_MSG has no body section")
    for ident, docs in sequences.items():
        command[ident] = docs
    request = Request(command, header.request_id, more_to_come=bool(flags & FLAG_MORE_TO_COME))
    for doc, size in oversized:
        _refuse_oversized(request, doc, size)
    return request


def parse_op_query(header: Header, body: bytes) -> Request:
    """Parse a legacy OP_QUERY; only commands on ``<db>.$cmd`` are served."""
    if len(body) < 4:
        raise ProtocolError("OP_QUERY too short")
    name, pos = _cstring(body, 4)
    if not name.endswith(".$cmd"):
        raise ProtocolError(f"OP_QUERY on {name!r} is not supported; only commands on <db>.$cmd")
    pos += 8  # numberToSkip, numberToReturn
    query, after = _document(body, pos, len(body))
    request = Request(query, header.request_id, legacy=True)
    _refuse_oversized(request, query, after - pos)
    # Legacy commands may be wrapped as {$query: {...}, $readPreference: ...}.
    if "$query" in query:
        if not isinstance(query["$query"], dict):
            raise ProtocolError("OP_QUERY $query is not a document")
        query = dict(query["$query"])
    query["$db"] = name[: -len(".$cmd")]
    request.command = query
    return request


def parse(header: Header, body: bytes) -> Request:
    if header.opcode == OP_MSG:
        return parse_op_msg(header, body)
    if header.opcode == OP_QUERY:
        return parse_op_query(header, body)
    raise ProtocolError(f"unsupported opcode {header.opcode}")


def encode_op_msg(reply: dict[str, Any], request_id: int, response_to: int) -> bytes:
    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(reply)
    return HEADER.pack(HEADER.size + len(payload), request_id, response_to, OP_MSG) + payload


def encode_op_reply(reply: dict[str, Any], request_id: int, response_to: int) -> bytes:
    doc = bson.encode(reply)
    payload = struct.pack("<iqii", 0, 0, 0, 1) + doc
    return HEADER.pack(HEADER.size + len(payload), request_id, response_to, OP_REPLY) + payload


def encode(reply: dict[str, Any], request: Request, request_id: int) -> bytes:
    if request.legacy:
        return encode_op_reply(reply, request_id, request.request_id)
    return encode_op_msg(reply, request_id, request.request_id)
