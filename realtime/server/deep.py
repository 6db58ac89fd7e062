"""Deep replay: what Redis has trimmed from a room's history, read back from MongoDB's oplog.

When a client's ``since`` is older than a room's history in Redis but MongoDB's oplog still holds it, the
server opens a temporary change stream at the cluster time encoded in ``since`` (``startAtOperationTime``,
inclusive), maps each change with the watcher's own mapping and router (same pipeline, same positions, so
the same ids; the same routing rules), keeps the events of the client's rooms after ``since`` and before the
room's history in Redis begins, and hands them to the replay, which goes on from Redis. Like counts are not
replayed as they were: a replayed ``post:liked``/``post:unliked`` carries the post's current count and
``replayed: true``.

The events must be those the watchers published, or the rooms get a reset (``history_trimmed``):

* the stream reads changes with the ``fullDocument`` mode the watchers read them with, which they record in
  Redis with the cluster time it holds from; a replay reaching back before that time (the mode changed, or
  an earlier release recorded none) is a reset;
* a change the replay cannot place as the watcher did (its post unknown, or readable only as it is now; an
  image of the document gone, with the watchers reading images) is a reset when it could have reached one
  of the client's rooms.

Bounded: at most ``concurrency`` deep replays at once per process (a client past that waits up to a
second, then gets a reset), each at most ``seconds`` long and ``limit`` events; past a bound the rooms get a
``reset`` (``too_far_behind``). When the oplog no longer holds ``since`` either, a ``reset``
(``history_lost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from bson import Timestamp
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure, PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from realtime import events as ev
from realtime.resume import Spans, already_had
from watchers import mapping
from watchers.config import MappingConfig
from watchers.keys import Keys
from watchers.routing import MongoDocuments, RedisMemory, ReplayMemory, Router

log = logging.getLogger("realtime.server")
HISTORY_LOST = (286, 280, 260, 239)
INEXACT = "history_trimmed"  # Redis trimmed it and the oplog cannot give it back as it was published
MODES = ("updateLookup", "whenAvailable")
UNPLACED = (mapping.SKIP_UNKNOWN_POST, mapping.SKIP_UNROUTABLE_DELETE)


class DeepOutcome:
    __slots__ = ("events", "reason")

    def __init__(self, events: list[tuple[tuple[int, int], str, bytes]] | None, reason: str = "") -> None:
        self.events = events  # None: could not replay (see reason)
        self.reason = reason


class DeepReplay:
    def __init__(self, mongo: AsyncMongoClient[dict[str, Any]], database: str, cfg: MappingConfig, redis: Redis,
                 keys: Keys, *, seconds: float = 10.0, limit: int = 10_000, concurrency: int = 4) -> None:
        self.mongo = mongo
        self.db = mongo[database]
        self.cfg = cfg
        self.redis = redis
        self.keys = keys
        self.likes_key = keys.likes
        self.seconds = seconds
        self.limit = limit
        self.slots = asyncio.Semaphore(concurrency)
        self.served = 0

    async def replay(self, rooms: list[str], since: str, until: dict[str, tuple[int, int] | None],
                     label: tuple[str, ...] | list[str] = (), had: Spans | None = None) -> DeepOutcome:
        """The events of ``rooms`` after ``since`` and before ``until[room]`` (the first id Redis still holds
        for that room; None: Redis holds none, read up to now). Each is labelled with the first of its rooms
        among ``label`` (all the client's rooms; default ``rooms``), as live delivery labels it. Those the
        connection has been sent through another of its rooms (``had``, see :func:`~realtime.resume.already_had`)
        are left out."""
        try:
            await asyncio.wait_for(self.slots.acquire(), 1.0)
        except TimeoutError:
            return DeepOutcome(None, "too_far_behind")
        try:
            return await asyncio.wait_for(self._replay(rooms, since, until, set(label or rooms), had or {}),
                                          self.seconds)
        except TimeoutError:
            return DeepOutcome(None, "too_far_behind")
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST:
                return DeepOutcome(None, "history_lost")
            log.warning("deep replay failed: %s", exc)
            return DeepOutcome(None, "history_lost")
        except (PyMongoError, RedisError) as exc:
            log.warning("deep replay failed: %s", exc)
            return DeepOutcome(None, "history_lost")
        finally:
            self.slots.release()

    async def _mode(self) -> tuple[str, int] | None:
        """The ``fullDocument`` mode the watchers read changes with, and the cluster time from which they do;
        None when Redis does not say."""
        raw = await self.redis.hmget(self.keys.meta, ["full_document", "full_document_since"])
        name, since = (v.decode() if isinstance(v, bytes) else v for v in raw)
        if name not in MODES or not isinstance(since, str) or not since.isdigit():
            return None
        return name, int(since)

    async def _replay(self, rooms: list[str], since: str, until: dict[str, tuple[int, int] | None],
                      labels: set[str], had: Spans) -> DeepOutcome:
        point = ev.parse_id(since)
        seconds, increment = ev.id_cluster_time(since)
        mode = await self._mode()
        if mode is None or mode[1] > ev.time_part(seconds, increment):
            return DeepOutcome(None, INEXACT)  # the watchers read some of these changes another way, or unknown
        full_document, _ = mode
        wanted = set(rooms)
        end = max((u for u in until.values() if u is not None), default=None)
        # what the watcher's index knows of the posts (tombstones included), then what this replay learns
        memory = ReplayMemory(RedisMemory(self.redis, self.keys))
        placed = _Placed()
        router = Router(self.cfg, memory, MongoDocuments(self.db, self.cfg),
                        lookup_documents=full_document == "updateLookup", on_as_of_now=placed.as_of_now)
        images = full_document == "whenAvailable"
        found: dict[tuple[int, int], tuple[str, bytes]] = {}
        counts: dict[str, int | None] = {}
        last_time, position = -1, -1
        async with await self.db.watch(mapping.stream_pipeline(self.cfg), start_at_operation_time=Timestamp(
                seconds, increment), full_document=full_document, full_document_before_change="whenAvailable",
                max_await_time_ms=50) as stream:
            while True:
                change = await stream.try_next()
                if change is None:
                    break  # caught up with the oplog
                ct = change["clusterTime"]
                time_part = ev.time_part(ct.time, ct.inc)
                position = position + 1 if time_part == last_time else 0
                last_time = time_part
                if end is not None and (time_part, 0) > end:
                    break  # Redis holds the rest
                placed.exact = True
                mapped = await self._map(change, position, router)
                memory.learn(mapped)
                exact = placed.exact and mapped.skipped not in UNPLACED and not (
                    images and mapping.images_missing(change, self.cfg))
                if not exact and self._concerns(change, ct, position, point, until, wanted):
                    return DeepOutcome(None, INEXACT)  # its events may differ from those the watcher published
                for event in mapped.events:
                    key = ev.parse_id(event.id)
                    if key <= point or key in found:
                        continue
                    if not any(r in wanted and _before(key, until.get(r)) for r in event.rooms):
                        continue  # not in the client's trimmed rooms, or Redis still holds it
                    if had and already_had(key, event.rooms, had):
                        continue  # the connection has it, through another of its rooms
                    room = next((r for r in event.rooms if r in labels), next(r for r in event.rooms if r in wanted))
                    envelope = event.envelope()
                    if event.counter is not None:
                        envelope["data"] = {**envelope["data"],
                                            "likes": await self._count(event.counter.post_id, counts),
                                            "replayed": True}
                    found[key] = (room, orjson.dumps({"op": "event", "id": event.id, "type": event.type,
                                                      "room": room, "data": envelope["data"], "ts": event.ts}))
                    if len(found) > self.limit:
                        return DeepOutcome(None, "too_far_behind")
        if await self._mode() != mode:
            return DeepOutcome(None, INEXACT)  # a watcher began reading changes another way meanwhile
        self.served += 1
        return DeepOutcome([(key, *found[key]) for key in sorted(found)])

    def _concerns(self, change: dict[str, Any], ct: Timestamp, position: int, point: tuple[int, int],
                  until: dict[str, tuple[int, int] | None], wanted: set[str]) -> bool:
        """Whether an event of this change could be one this replay must give: after ``since``, before what
        Redis holds of a room of the client it could have gone to."""
        first = ev.parse_id(ev.make_id(ct.time, ct.inc, position, 0))
        last = ev.parse_id(ev.make_id(ct.time, ct.inc, position, ev.EVENTS_PER_CHANGE - 1))
        return last > point and any(_before(first, until.get(r)) and mapping.may_reach(change, self.cfg, r)
                                    for r in wanted)

    async def _map(self, change: dict[str, Any], position: int, router: Router) -> mapping.Mapped:
        try:
            return await router.map(change, position)
        except (PyMongoError, RedisError):
            raise  # the replay fails as a whole (a reset), never with a silent gap
        except Exception:
            log.exception("deep replay: a change could not be mapped; skipped")
            return mapping.Mapped(skipped=mapping.SKIP_BAD_DOCUMENT)

    async def _count(self, post_id: str, counts: dict[str, int | None]) -> int | None:
        if post_id not in counts:
            raw = None
            with contextlib.suppress(Exception):
                raw = await self.redis.hget(self.likes_key, post_id)
            counts[post_id] = int(raw) if raw is not None else None
        return counts[post_id]


class _Placed:
    """Whether the router placed the change being mapped as of its time (False: it had to take a post as it
    is now, as the watcher, reading the change when it happened, did not)."""

    def __init__(self) -> None:
        self.exact = True

    def as_of_now(self) -> None:
        self.exact = False


def _before(key: tuple[int, int], until: tuple[int, int] | None) -> bool:
    """Whether ``key`` lies before ``until``, the first id Redis still holds (None: Redis holds none of it)."""
    return until is None or key < until
