"""Checkpoints in MongoDB, outside the watched database, where a loss of Redis data cannot take them."""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError


@dataclass(frozen=True)
class Checkpoint:
    token: dict[str, Any]
    at: str  # "<time part>:<position>" of the last change processed
    written: dt.datetime | None = None


class CheckpointStore(Protocol):
    async def load(self) -> Checkpoint | None: ...

    async def save(self, checkpoint: Checkpoint) -> None: ...


class MongoCheckpoints:
    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str, stream_name: str,
                 watcher: str) -> None:
        self.collection = client[database]["checkpoints"]
        self.stream_name = stream_name
        self.watcher = watcher

    async def load(self) -> Checkpoint | None:
        doc = await self.collection.find_one({"_id": self.stream_name})
        if doc is None or not isinstance(doc.get("token"), dict):
            return None
        return Checkpoint(dict(doc["token"]), str(doc.get("at", "")), doc.get("written"))

    async def save(self, checkpoint: Checkpoint) -> None:
        # Only ever forward: a deposed leader's late write cannot move the checkpoint back. When the stored
        # token is newer, the filter matches nothing and the upsert collides on _id: nothing to do.
        with contextlib.suppress(DuplicateKeyError):
            await self.collection.update_one(
                {"_id": self.stream_name, "$or": [{"token._data": {"$lt": checkpoint.token["_data"]}},
                                                  {"token": {"$exists": False}}]},
                {"$set": {"token": checkpoint.token, "at": checkpoint.at, "watcher": self.watcher,
                          "written": dt.datetime.now(dt.UTC)}},
                upsert=True,
            )
