"""Snapshot reads at a cluster time: what the watcher uses to read a like count as of a change."""

from __future__ import annotations

from typing import Any

import pytest
from bson import Timestamp
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from tests.conftest import Mongo
from tests.contract.helpers import take

pytestmark = [pytest.mark.contract]


async def count_at(db: Any, ts: Timestamp, post: str) -> int:
    reply = await db.command({"aggregate": "likes", "pipeline": [{"$match": {"postId": post}}, {"$count": "n"}],
                              "cursor": {}, "readConcern": {"level": "snapshot", "atClusterTime": ts}})
    batch = reply["cursor"]["firstBatch"]
    return int(batch[0]["n"]) if batch else 0


async def test_aggregate_at_cluster_time_sees_the_past(aclient: AsyncMongoClient[dict[str, Any]], db_name: str) -> None:
    db = aclient[db_name]
    await db.create_collection("likes")
    stream = await db.likes.watch(max_await_time_ms=100)
    await db.likes.insert_one({"_id": 1, "postId": "p"})
    await db.likes.insert_one({"_id": 2, "postId": "p"})
    await db.likes.insert_one({"_id": 3, "postId": "q"})
    await db.likes.delete_one({"_id": 1})
    await db.likes.insert_one({"_id": 4, "postId": "p"})
    events = await take(stream, 5)
    await stream.close()
    assert [await count_at(db, e["clusterTime"], "p") for e in events] == [1, 2, 2, 1, 2]
    find = await db.command({"find": "likes", "filter": {}, "sort": {"_id": 1},
                             "readConcern": {"level": "snapshot", "atClusterTime": events[2]["clusterTime"]}})
    assert [d["_id"] for d in find["cursor"]["firstBatch"]] == [1, 2, 3]


async def test_snapshot_older_than_history_is_refused(mongo: Mongo, db_name: str) -> None:
    standin = mongo.need_standin()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(standin.uri)
    try:
        db = client[db_name]
        await db.likes.insert_one({"_id": 1, "postId": "p"})
        standin.truncate_oplog()
        with pytest.raises(OperationFailure) as info:
            await count_at(db, Timestamp(1, 1), "p")
        assert info.value.code == 239
    finally:
        await client.close()
