"""Size limits in encoded bytes: how a cursor batch is cut, and what is too big to send."""

from __future__ import annotations

import struct

import bson
import pytest

from realtime.standin import limits, wire
from realtime.standin.errors import CommandError


def doc_of(nbytes: int, _id: int = 0) -> dict[str, object]:
    """A document of exactly ``nbytes`` encoded bytes, of 4-byte characters (and ASCII padding)."""
    overhead = len(bson.encode({"_id": _id, "t": ""}))
    chars = "😀" * ((nbytes - overhead) // 4)
    return {"_id": _id, "t": chars + "a" * (nbytes - overhead - len(chars.encode()))}


def element(index: int, nbytes: int) -> int:
    """What a document adds to a batch: the array element's type byte, index and NUL, and the document."""
    return 1 + len(str(index)) + 1 + nbytes


def test_documents_are_measured_in_bytes_not_characters() -> None:
    d = doc_of(4_000_000)
    assert limits.bson_size(d) == 4_000_000
    assert len(str(d)) < 1_100_000


def test_a_batch_takes_documents_while_they_total_at_most_16_mib() -> None:
    """Regression: batches were cut by str() length, a quarter of the bytes of emoji text."""
    batch = limits.Batch(None)
    big = 5_000_000
    assert all(batch.offer(doc_of(big, i)) for i in range(3))
    used = 4 + sum(element(i, big) for i in range(3))
    rest = limits.MAX_BSON_SIZE - used
    assert batch.offer(doc_of(rest, 3))  # exactly at the limit: in
    assert not batch.offer(doc_of(16, 4))  # one more of any size: out
    assert len(batch.docs) == 4


def test_the_first_document_always_goes_in() -> None:
    batch = limits.Batch(None)
    assert batch.offer(doc_of(limits.MAX_INTERNAL_SIZE))
    assert not batch.offer(doc_of(16, 1))
    assert len(batch.docs) == 1


def test_batch_size_caps_the_count() -> None:
    batch = limits.Batch(2)
    assert batch.offer({"_id": 1}) and batch.offer({"_id": 2})
    assert batch.full and not batch.offer({"_id": 3})
    empty = limits.Batch(0)
    assert empty.full and not empty.offer({"_id": 1})


def test_a_document_too_big_for_the_wire_is_bson_object_too_large() -> None:
    size = limits.MAX_INTERNAL_SIZE + 1
    with pytest.raises(CommandError) as info:
        limits.Batch(None).offer(doc_of(size, 7))
    assert (info.value.code, info.value.code_name) == (10334, "BSONObjectTooLarge")
    assert info.value.message == (
        f"BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and 16793600(16MB) "
        "First element: _id: 7")


def test_messages_show_values_cut_short() -> None:
    assert limits.show({"_data": "82AB"}) == '{ _data: "82AB" }'
    assert limits.show([1, "x", None, True]) == '[ 1, "x", null, true ]'
    assert len(limits.show("a" * 10_000_000)) < 400


def _op_msg(body: dict[str, object], sequence: list[dict[str, object]] | None = None) -> bytes:
    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(body)
    if sequence is not None:
        docs = b"documents\x00" + b"".join(bson.encode(d) for d in sequence)
        payload += b"\x01" + struct.pack("<i", 4 + len(docs)) + docs
    return wire.HEADER.pack(16 + len(payload), 1, 0, wire.OP_MSG) + payload


@pytest.mark.parametrize("where", ["body", "sequence"])
def test_a_message_holding_a_document_over_16_mib_plus_16_kib_is_refused(where: str) -> None:
    """Regression: the stand-in ran commands whose documents were over the server's per-document limit."""
    big = doc_of(limits.MAX_INTERNAL_SIZE + 1, 5)
    if where == "body":
        message = _op_msg({"insert": "c", "documents": [big], "$db": "app"})
        size = len(bson.encode({"insert": "c", "documents": [big], "$db": "app"}))
        first = 'insert: "c"'
    else:
        message = _op_msg({"insert": "c", "$db": "app"}, [big])
        size, first = limits.MAX_INTERNAL_SIZE + 1, "_id: 5"
    request = wire.parse(wire.parse_header(message[:16]), message[16:])
    assert request.error is not None and request.error.code == 10334
    assert request.error.message.startswith(f"BSONObj size: {size} ")
    assert request.error.message.endswith(f"First element: {first}")


def test_a_document_at_the_limit_is_accepted_on_the_wire() -> None:
    message = _op_msg({"insert": "c", "$db": "app"}, [doc_of(limits.MAX_INTERNAL_SIZE)])
    assert wire.parse(wire.parse_header(message[:16]), message[16:]).error is None
