"""BSON size limits as real MongoDB 7.0 applies them, measured in encoded bytes, through the real PyMongo driver.

- A cursor batch (find, aggregate, getMore, change streams) takes documents while they total at most 16 MiB
  (maxBsonObjectSize); the first always goes in, and ``batchSize`` caps the count. So no reply comes near the
  48,000,000-byte maxMessageSizeBytes a driver accepts.
- A document over 16 MiB is refused: an insert with BadValue (2), an update or replacement with 17419, an
  upsert with 17420; any document of a message over 16 MiB + 16 KiB with BSONObjectTooLarge (10334), as is a
  change event or an aggregation result that size.

Text here is emoji (4 bytes in UTF-8) and CJK (3 bytes), so a document's character count is far below its
size in bytes; binary data goes the other way (``str()`` of bytes spends four characters on each byte).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import bson
import pytest
from pymongo import MongoClient, monitoring
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure, WriteError

from tests.conftest import TIMEOUT, Mongo

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]
MiB = 1024 * 1024
MAX_BSON = 16 * MiB  # maxBsonObjectSize
MAX_INTERNAL = MAX_BSON + 16 * 1024  # the most any document on the wire may hold
MAX_MESSAGE = 48_000_000  # maxMessageSizeBytes
EMOJI_CJK = "😀漢"  # 7 bytes in 2 characters


def text(nbytes: int) -> str:
    """A string of emoji and CJK characters (ASCII to pad) that encodes to exactly ``nbytes`` of UTF-8."""
    s = EMOJI_CJK * (nbytes // 7)
    return s + "a" * (nbytes - len(s.encode()))


def sized(_id: Any, nbytes: int, field: str = "t") -> Doc:
    """A document of exactly ``nbytes`` encoded bytes."""
    overhead = len(bson.encode({"_id": _id, field: ""}))
    return {"_id": _id, field: text(nbytes - overhead)}


def size(doc: Any) -> int:
    return len(bson.encode(doc))


class Batches(monitoring.CommandListener):
    """The batches of documents the server sent, from each find, aggregate and getMore reply."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[Doc]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        cursor = event.reply.get("cursor")
        if event.command_name in ("find", "aggregate", "getMore") and isinstance(cursor, dict):
            self.batches.append((event.command_name, list(cursor.get("firstBatch", cursor.get("nextBatch", [])))))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def nonempty(self) -> list[list[Doc]]:
        return [docs for _, docs in self.batches if docs]


def assert_cut_by_bytes(batches: list[list[Doc]]) -> None:
    """Every batch holds documents totalling at most 16 MiB, or a single document."""
    for docs in batches:
        assert len(docs) == 1 or sum(size(d) for d in docs) <= MAX_BSON, [size(d) for d in docs]


@pytest.fixture
def listener() -> Batches:
    return Batches()


@pytest.fixture
def watched(mongo: Mongo, listener: Batches) -> Iterator[MongoClient[Doc]]:
    with MongoClient[Doc](mongo.uri, event_listeners=[listener], serverSelectionTimeoutMS=int(TIMEOUT * 1000)) as c:
        yield c


@pytest.fixture
def db(watched: MongoClient[Doc], db_name: str) -> Iterator[Database[Doc]]:
    yield watched[db_name]
    watched.drop_database(db_name)


# Twelve documents of 4.2 MB: 50.4 MB encoded, 14.4 million characters.
BIG_COUNT, BIG_BYTES = 12, 4_200_000


@pytest.fixture
def big(db: Database[Doc]) -> Collection[Doc]:
    coll = db["big"]
    docs = [sized(i, BIG_BYTES) for i in range(BIG_COUNT)]
    assert sum(size(d) for d in docs) > MAX_MESSAGE
    assert sum(len(d["t"]) for d in docs) < MAX_MESSAGE / 3
    coll.insert_many(docs)
    return coll


# -- batches ------------------------------------------------------------------------------------------------
def test_find_batches_are_cut_by_encoded_bytes(big: Collection[Doc], listener: Batches) -> None:
    """Regression: the stand-in sent a find batch of 50 MB of emoji text, past the 48 MB message limit."""
    docs = list(big.find(sort=[("_id", 1)]))
    assert [d["_id"] for d in docs] == list(range(BIG_COUNT))
    assert all(size(d) == BIG_BYTES for d in docs)
    batches = listener.nonempty()
    assert len(batches) > 1 and sum(len(b) for b in batches) == BIG_COUNT
    assert [name for name, _ in listener.batches][1:] == ["getMore"] * (len(listener.batches) - 1)
    assert_cut_by_bytes(batches)
    assert all(len(b) == MAX_BSON // BIG_BYTES for b in batches[:-1])  # as many as fit in 16 MiB


def test_aggregate_batches_are_cut_by_encoded_bytes(big: Collection[Doc], listener: Batches) -> None:
    """Regression: the stand-in's aggregate batches were not cut by size at all."""
    docs = list(big.aggregate([{"$match": {"_id": {"$gte": 0}}}, {"$sort": {"_id": 1}}]))
    assert [d["_id"] for d in docs] == list(range(BIG_COUNT))
    batches = listener.nonempty()
    assert len(batches) > 1
    assert_cut_by_bytes(batches)


def test_batch_size_caps_the_count_below_the_byte_limit(big: Collection[Doc], listener: Batches) -> None:
    """batchSize is honoured in the first batch and in every getMore, whichever limit comes first."""
    assert len(list(big.find(batch_size=2))) == BIG_COUNT
    assert [len(b) for b in listener.nonempty()] == [2] * (BIG_COUNT // 2)


def test_a_batch_of_many_characters_but_few_bytes_is_not_cut(db: Database[Doc], listener: Batches) -> None:
    """Regression: change-stream batches were cut by str() length, so binary data filled them four times too soon."""
    coll = db["binary"]
    docs = [{"_id": i, "b": bytes(MiB)} for i in range(6)]  # str() of each: over 4 million characters
    assert sum(len(str(d)) for d in docs) > MAX_BSON and sum(size(d) for d in docs) < MAX_BSON
    with coll.watch() as stream:
        coll.insert_many(docs)
        events = [stream.next() for _ in docs]
    assert [e["fullDocument"]["_id"] for e in events] == list(range(6))
    assert [len(b) for name, b in listener.batches if name == "getMore" and b] == [6]
    listener.batches.clear()
    assert len(list(coll.find())) == 6
    assert [len(b) for b in listener.nonempty()] == [6]


def test_change_stream_batches_are_cut_by_encoded_bytes(db: Database[Doc], listener: Batches) -> None:
    """Regression: a change-stream getMore of 50 MB of emoji inserts made PyMongo raise ProtocolError."""
    coll = db["stream"]
    docs = [sized(i, BIG_BYTES) for i in range(BIG_COUNT)]
    with coll.watch() as stream:
        coll.insert_many(docs)
        events = [stream.next() for _ in docs]
    assert [e["fullDocument"] for e in events] == docs
    batches = [b for name, b in listener.batches if name == "getMore" and b]
    assert len(batches) > 1
    for batch in batches:
        assert len(batch) == 1 or sum(size(e) for e in batch) <= MAX_BSON


# -- documents over the limit -----------------------------------------------------------------------------------
def test_insert_over_16_mib_fails_with_bad_value(db: Database[Doc]) -> None:
    """Regression: the stand-in stored documents over 16 MiB (here 4.2 million characters)."""
    doc = sized("big", MAX_BSON + 20)
    with pytest.raises(WriteError) as info:
        db["c"].insert_one(doc)
    assert info.value.code == 2
    assert info.value.details is not None
    assert info.value.details["errmsg"] == (
        f"object to insert too large. size in bytes: {MAX_BSON + 20}, max size: {MAX_BSON}")
    assert db["c"].count_documents({}) == 0


def test_insert_at_16_mib_is_accepted(db: Database[Doc]) -> None:
    doc = sized("max", MAX_BSON)
    db["c"].insert_one(doc)
    stored = db["c"].find_one({"_id": "max"})
    assert stored is not None and size(stored) == MAX_BSON


def test_a_document_over_the_wire_limit_fails_with_bson_object_too_large(db: Database[Doc]) -> None:
    """Regression: a 20 MB document in an insert's document sequence was accepted."""
    doc = sized(7, 20 * MiB)
    with pytest.raises(OperationFailure) as info:
        db["c"].insert_many([doc])
    assert info.value.code == 10334
    assert info.value.details is not None and info.value.details["codeName"] == "BSONObjectTooLarge"
    assert str(info.value).startswith(
        f"BSONObj size: {20 * MiB} (0x{20 * MiB:X}) is invalid. Size must be between 0 and {MAX_INTERNAL}(16MB) "
        "First element: _id: 7")
    assert db["c"].count_documents({}) == 0


def test_update_growing_a_document_past_16_mib_fails_and_changes_nothing(db: Database[Doc]) -> None:
    """Regression: the stand-in let an update grow a document to 18 MB."""
    coll = db["c"]
    coll.insert_one(sized(1, 9 * MiB))
    before = coll.find_one({"_id": 1})
    with pytest.raises(WriteError) as info:
        coll.update_one({"_id": 1}, {"$set": {"u": text(9 * MiB)}})
    assert info.value.code == 17419
    assert f"Resulting document after update is larger than {MAX_BSON}" in str(info.value)
    assert coll.find_one({"_id": 1}) == before


def test_replacement_over_16_mib_fails(db: Database[Doc]) -> None:
    coll = db["c"]
    coll.insert_one({"_id": 1, "n": 1})
    with pytest.raises(WriteError) as info:
        coll.replace_one({"_id": 1}, sized(1, MAX_BSON + 100))
    assert info.value.code == 17419
    assert coll.find_one({"_id": 1}) == {"_id": 1, "n": 1}


@pytest.mark.parametrize("how", ["replacement", "operators"])
def test_upsert_over_16_mib_fails_and_inserts_nothing(db: Database[Doc], how: str) -> None:
    coll = db["c"]
    with pytest.raises(WriteError) as info:
        if how == "replacement":
            coll.replace_one({"_id": 1}, sized(1, MAX_BSON + 100), upsert=True)
        else:
            coll.update_one({"_id": 1, "a": text(8 * MiB)}, {"$set": {"b": text(8 * MiB)}}, upsert=True)
    assert info.value.code == 17420
    assert f"Document to upsert is larger than {MAX_BSON}" in str(info.value)
    assert coll.count_documents({}) == 0


def test_find_and_modify_growing_a_document_past_16_mib_fails(db: Database[Doc]) -> None:
    coll = db["c"]
    coll.insert_one(sized(1, 9 * MiB))
    with pytest.raises(OperationFailure) as info:
        coll.find_one_and_update({"_id": 1}, {"$set": {"u": text(9 * MiB)}})
    assert info.value.code == 17419
    assert size(coll.find_one({"_id": 1})) == 9 * MiB


def test_an_aggregation_result_over_the_limit_fails_with_bson_object_too_large(db: Database[Doc]) -> None:
    """Regression: the stand-in returned an 18 MB $group result."""
    coll = db["c"]
    coll.insert_many([sized(1, 9 * MiB), sized(2, 9 * MiB)])
    with pytest.raises(OperationFailure) as info:
        list(coll.aggregate([{"$group": {"_id": None, "all": {"$push": "$t"}}}]))
    assert info.value.code == 10334
    assert str(info.value).startswith("BSONObj size: ")


def test_a_change_event_over_the_limit_fails_the_stream(db: Database[Doc]) -> None:
    """Regression: the stand-in sent an 18 MB change event (9 MB pre-image + 9 MB new document)."""
    coll = db.create_collection("images", changeStreamPreAndPostImages={"enabled": True})
    coll.insert_one(sized(1, 9 * MiB))
    with coll.watch(full_document_before_change="required") as stream:
        coll.replace_one({"_id": 1}, sized(1, 9 * MiB, field="other"))
        with pytest.raises(OperationFailure) as info:
            stream.next()
    assert info.value.code == 10334
    assert str(info.value).startswith("BSONObj size: ")
    assert "First element: _id: { _data: " in str(info.value)



def test_bson_size_gives_a_documents_encoded_size(db: Database[Doc]) -> None:
    """``$bsonSize`` (4.4+): what a pipeline measures an event's documents with before they reach the limit."""
    docs = [{"_id": 1, "t": "small", "n": {"a": [1, 2]}}, {"_id": 2, "t": "é" * 1000}]
    db.sizes.insert_many(docs)
    got = list(db.sizes.aggregate([{"$project": {"s": {"$bsonSize": "$$ROOT"}, "sub": {"$bsonSize": "$n"},
                                                  "none": {"$bsonSize": "$missing"}}}, {"$sort": {"_id": 1}}]))
    assert got == [{"_id": 1, "s": len(bson.encode(docs[0])), "sub": len(bson.encode(docs[0]["n"])), "none": None},
                   {"_id": 2, "s": len(bson.encode(docs[1])), "sub": None, "none": None}]
    with pytest.raises(OperationFailure) as refused:
        list(db.sizes.aggregate([{"$project": {"s": {"$bsonSize": "$t"}}}]))
    assert refused.value.code == 31393
