"""Wire framing: OP_MSG and OP_QUERY in, OP_MSG and OP_REPLY out; malformed input (a wrong checksum too) is a
ProtocolError."""

from __future__ import annotations

import contextlib
import struct

import bson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from realtime.standin import wire
from realtime.standin.crc32c import crc32c


def op_msg(doc: dict[str, object], sequences: dict[str, list[dict[str, object]]] | None = None,
           flags: int = 0) -> bytes:
    body = struct.pack("<I", flags) + b"\x00" + bson.encode(doc)
    for ident, docs in (sequences or {}).items():
        payload = ident.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
        body += b"\x01" + struct.pack("<i", 4 + len(payload)) + payload
    return wire.HEADER.pack(16 + len(body), 7, 0, wire.OP_MSG) + body


def parse(message: bytes) -> wire.Request:
    header = wire.parse_header(message[:16])
    return wire.parse(header, message[16:])


def test_op_msg_merges_document_sequences() -> None:
    request = parse(op_msg({"insert": "posts", "$db": "app"}, {"documents": [{"_id": 1}, {"_id": 2}]}))
    assert request.command == {"insert": "posts", "$db": "app", "documents": [{"_id": 1}, {"_id": 2}]}
    assert request.request_id == 7 and not request.legacy and not request.more_to_come


def test_more_to_come_is_seen() -> None:
    assert parse(op_msg({"ping": 1, "$db": "admin"}, flags=wire.FLAG_MORE_TO_COME)).more_to_come


def test_op_query_hello_is_answered_with_op_reply() -> None:
    query = bson.encode({"ismaster": 1, "helloOk": True})
    body = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + query
    request = parse(wire.HEADER.pack(16 + len(body), 3, 0, wire.OP_QUERY) + body)
    assert request.legacy and request.command == {"ismaster": 1, "helloOk": True, "$db": "admin"}
    reply = wire.encode({"ok": 1.0}, request, 11)
    length, request_id, response_to, opcode = wire.HEADER.unpack(reply[:16])
    assert (length, request_id, response_to, opcode) == (len(reply), 11, 3, wire.OP_REPLY)
    _flags, cursor_id, _start, count = struct.unpack("<iqii", reply[16:36])
    assert (cursor_id, count) == (0, 1)
    assert bson.decode(reply[36:]) == {"ok": 1.0}


def test_op_query_outside_cmd_is_refused() -> None:
    body = struct.pack("<i", 0) + b"app.posts\x00" + struct.pack("<ii", 0, -1) + bson.encode({})
    with pytest.raises(wire.ProtocolError):
        parse(wire.HEADER.pack(16 + len(body), 3, 0, wire.OP_QUERY) + body)


@pytest.mark.parametrize("opcode", [1, 2001, 2012, 9999])
def test_other_opcodes_are_refused(opcode: int) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.parse(wire.Header(20, 1, 0, opcode), b"\x00" * 4)


@given(st.binary(max_size=200))
def test_garbage_bodies_raise_only_protocol_errors(data: bytes) -> None:
    for opcode in (wire.OP_MSG, wire.OP_QUERY):
        with contextlib.suppress(wire.ProtocolError):
            wire.parse(wire.Header(16 + len(data), 1, 0, opcode), data)


@pytest.mark.parametrize("length", [0, 15, wire.MAX_MESSAGE_SIZE + 1])
def test_header_lengths_are_bounded(length: int) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.parse_header(wire.HEADER.pack(length, 1, 0, wire.OP_MSG))


# -- checksums -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "crc"), [
    (b"", 0), (b"123456789", 0xE3069283), (b"\x00" * 32, 0x8A9136AA), (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E), (bytes(range(31, -1, -1)), 0x113FDB5C),  # RFC 3720, B.4
])
def test_crc32c_known_values(data: bytes, crc: int) -> None:
    assert crc32c(data) == crc


@given(st.binary(max_size=100), st.binary(max_size=100))
def test_crc32c_continues_over_pieces(a: bytes, b: bytes) -> None:
    assert crc32c(b, crc32c(a)) == crc32c(a + b)


def with_checksum(message: bytes, checksum: int | None = None) -> bytes:
    """An OP_MSG given the checksumPresent flag and a checksum (by default the right one)."""
    length, request_id, response_to, opcode = wire.HEADER.unpack(message[:16])
    (flags,) = struct.unpack("<I", message[16:20])
    unsigned = wire.HEADER.pack(length + 4, request_id, response_to, opcode) + struct.pack(
        "<I", flags | wire.FLAG_CHECKSUM_PRESENT) + message[20:]
    return unsigned + struct.pack("<I", crc32c(unsigned) if checksum is None else checksum)


def test_a_message_with_the_right_checksum_is_parsed() -> None:
    request = parse(with_checksum(op_msg({"insert": "c", "$db": "app"}, {"documents": [{"_id": 1}]})))
    assert request.command == {"insert": "c", "$db": "app", "documents": [{"_id": 1}]}


@given(st.integers(0, 2**32 - 1))
def test_a_message_with_a_wrong_checksum_is_refused(checksum: int) -> None:
    """Regression: the stand-in ignored OP_MSG checksums."""
    message = op_msg({"ping": 1, "$db": "admin"})
    right = with_checksum(message)
    assume(struct.pack("<I", checksum) != right[-4:])
    with pytest.raises(wire.ProtocolError, match="checksum"):
        parse(with_checksum(message, checksum))


def test_a_changed_byte_fails_the_checksum() -> None:
    message = bytearray(with_checksum(op_msg({"ping": 1, "$db": "admin"})))
    message[-8] ^= 0x01  # a letter of "admin": the document still parses
    with pytest.raises(wire.ProtocolError, match="checksum"):
        parse(bytes(message))


def test_a_checksum_flag_without_room_for_one_is_refused() -> None:
    body = struct.pack("<I", wire.FLAG_CHECKSUM_PRESENT) + b"\x00\x05\x00\x00\x00"
    with pytest.raises(wire.ProtocolError):
        wire.parse(wire.Header(16 + len(body), 1, 0, wire.OP_MSG), body)
