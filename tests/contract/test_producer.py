"""A producer process writes with PyMongo; a db-level change stream sees exactly its changes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from tests.conftest import TIMEOUT, Mongo
from tests.contract.helpers import quiet, take
from tests.contract.producer import EXPECTED

pytestmark = [pytest.mark.contract]
ROOT = Path(__file__).resolve().parents[2]


async def test_db_stream_sees_exactly_what_the_producer_wrote(
    mongo: Mongo, aclient: AsyncMongoClient[dict[str, Any]], db_name: str
) -> None:
    db = aclient[db_name]
    for name in ("posts", "likes", "comments"):
        await db.create_collection(name)
    stream = await db.watch([{"$match": {"ns.coll": {"$in": ["posts", "likes", "comments"]}}}],
                            full_document="updateLookup", max_await_time_ms=100)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.contract.producer", mongo.uri, db_name,
                                                cwd=ROOT)
    assert await asyncio.wait_for(proc.wait(), TIMEOUT * 3) == 0
    events = await take(stream, len(EXPECTED))
    assert await quiet(stream) == []
    await stream.close()

    assert [(e["operationType"], e["ns"]["coll"], e["documentKey"]["_id"]) for e in events] == EXPECTED
    tokens = [e["_id"]["_data"] for e in events]
    assert tokens == sorted(tokens)

    by_step = dict(enumerate(events))
    assert by_step[2]["updateDescription"]["updatedFields"] == {"text": "hello!", "tags.1": "b", "views": 1}
    txn1, txn2 = events[3:5], events[5:7]
    for txn in (txn1, txn2):
        assert txn[0]["clusterTime"] == txn[1]["clusterTime"]
        assert txn[0]["lsid"] == txn[1]["lsid"] and txn[0]["txnNumber"] == txn[1]["txnNumber"]
    assert txn1[0]["lsid"] == txn2[0]["lsid"] and txn2[0]["txnNumber"] > txn1[0]["txnNumber"]
    assert txn2[1]["updateDescription"]["updatedFields"] == {"comments": 1, "tags.2": "c"}
    mul = events[7]["updateDescription"]
    assert mul["removedFields"] == ["draft"] and mul["updatedFields"] == {"score": 6, "tags": ["z"]}
    assert events[8]["fullDocument"] == {"_id": "c1", "postId": "p1", "userId": "u3", "text": "nice (edited)"}
    assert events[10]["updateDescription"]["updatedFields"] == {"likes": 0}
    assert events[11]["fullDocument"] == {"_id": "l2", "postId": "p2", "userId": "u1"}
    assert events[12]["updateDescription"]["updatedFields"] == {"score": 6}
    assert events[12]["fullDocument"]["score"] == 6
    for e in events:
        assert "lsid" not in e or e in txn1 + txn2
    assert await db.likes.find_one({"_id": "ghost"}) is None
