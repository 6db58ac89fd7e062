"""The watcher: one db-level change stream over posts, likes and comments, published to Redis.

Life of a watcher: wait for the lease (standby), become leader, pick the resume point (the newer of the
last token published to Redis and the checkpoint kept in MongoDB), open the stream, and for each change
map it to events and publish them with one script call. After every ``try_next()``, events or not, the
stream's resume token goes to the checkpoint (throttled), so a quiet database never ages it out of the
oplog. Lost history (286, 280, 260) is reported with a ``reset`` marker and a fresh stream, never a loop.

No outage of Redis or MongoDB ends the process: every loop that calls them (the standby's, the lease's,
the stream's) retries with a bounded backoff, and reports the outage once in the log, on ``/readyz`` and in
the metrics (see ``watchers.outage``). A leader that cannot renew its lease for a lease time stands by.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import gc
import itertools
import logging
import operator
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson
from bson import Timestamp
from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure, NetworkTimeout, OperationFailure, PyMongoError
from redis.asyncio import Redis
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from realtime import events as ev
from realtime.backoff import backoff
from realtime.events import Event
from realtime.ids import id_text
from realtime.metrics import STAGE_LATENCY, Registry
from realtime.tasks import cancel_all
from watchers import mapping
from watchers.checkpoint import Checkpoint, MongoCheckpoints
from watchers.config import WatcherConfig
from watchers.keys import Keys
from watchers.lease import RedisLease
from watchers.likecount import LikeCounts, Snapshot, liked
from watchers.outage import BACKOFF_BASE, BACKOFF_CAP, DEPENDENCIES, MONGODB, REDIS, Outages
from watchers.publish import MAX_SEQ, Diverged, Fenced, NeedSeed, Pending, Publisher, Seed
from watchers.routing import MongoDocuments, RedisMemory, Router

log = logging.getLogger("realtime.watcher")

HISTORY_LOST = {286: "history_lost", 280: "token_not_found", 260: "invalid_token"}
EVENT_TOO_LARGE = 10334  # BSONObjectTooLarge: a change event (with its documents) over 16 MB
EVENT_TOO_LARGE_REASON = "event_too_large"  # the reason of the reset marker in place of such a change
STREAM_STARTED = "stream_started"  # a reset marker's reason: a stream that follows nothing Redis holds
PING_TIMEOUT = 2.0  # seconds /readyz waits for MongoDB's answer when the watcher is not hearing from it
# Redis answers that mean it cannot serve for now (full, a read-only replica after a failover, a cluster
# reconfiguring), as much an outage as a refused connection
REDIS_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OutOfMemoryError, ReadOnlyError, ClusterDownError,
                     TryAgainError)


def redis_timeout(lease_seconds: float) -> float:
    """The longest a Redis call may take (socket connect and read): a hung Redis must not freeze the watcher,
    and a leader must notice within about a lease time that it cannot renew."""
    return min(5.0, max(1.0, lease_seconds))


def outage_of(exc: BaseException) -> str | None:
    """The dependency an error says is unavailable (refused, dropped, silent, loading, full, read-only, stepping
    down), or None for any other error its server answered with."""
    if isinstance(exc, REDIS_UNAVAILABLE):
        return REDIS
    if isinstance(exc, ConnectionFailure):
        return MONGODB
    return None


class LeaseLost(Exception):
    pass


STREAM_EVENTS = ("invalidate", "drop", "rename", "dropDatabase")  # changes that end or reset the stream
_TYPE = operator.attrgetter("type")
YIELD_EVERY = 200  # changes mapped between two turns of the event loop (about 5 ms of CPU)


def honour_cancellation() -> None:
    """Raise CancelledError when this task was cancelled and the cancellation was lost on the way (a client
    library that caught it while it cleaned up): a loop that checks it at each turn still ends."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


def buffered(stream: Any) -> bool:
    """Whether the driver holds more changes of the stream's last batch (taking them costs no round trip)."""
    has_next = getattr(getattr(stream, "_cursor", None), "_has_next", None)
    return bool(has_next()) if callable(has_next) else False


class _Collection:
    """The garbage collector's automatic runs, paused while a read is mapped and published.

    A read allocates many objects that live until it is published (its changes' events, payloads and
    envelopes), few of them in cycles: a collection that ran meanwhile would go through all of them, each
    time the allocations pass its threshold, and free none. Paused, the next allocation after the read
    starts the collection that is due, among what is left. Pauses nest (two watchers in a process), and a
    collector that was off stays off."""

    def __init__(self) -> None:
        self.depth = 0
        self.resume = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        if self.depth == 0:
            self.resume = gc.isenabled()
            gc.disable()
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0 and self.resume:
                gc.enable()


COLLECTION = _Collection()


class NoStartPoint(PyMongoError):
    """MongoDB opened a stream without saying where it starts (no ``postBatchResumeToken``): the reset marker
    that must precede it has no place. Retried as any failed stream."""

    def __init__(self) -> None:
        super().__init__("the change stream did not say where it starts")


@dataclass(frozen=True)
class ResumePoint:
    """Where a stream opens: after a token, after an invalidate, at a time, or now."""

    resume_after: dict[str, Any] | None = None
    start_after: dict[str, Any] | None = None
    start_at: Timestamp | None = None
    at: str = ""  # "<time part>:<position>" of the last change processed before this point
    fallback: ResumePoint | None = None  # tried when this one's history is gone (after a Redis data loss)
    reset: str | None = None  # publish a reset marker with this reason just before the stream's first change

    def describe(self) -> str:
        if self.resume_after is not None:
            return f"after token {self.resume_after['_data'][:26]}..."
        if self.start_after is not None:
            return f"after invalidate {self.start_after['_data'][:26]}..."
        if self.start_at is not None:
            return f"at operation time {self.start_at}"
        return "now (a fresh stream)"


def token_time(token: dict[str, Any]) -> tuple[int, int]:
    """The cluster time at the start of a resume token (its first 18 hex characters, SERVER-133517)."""
    data = token["_data"]
    return int(data[2:10], 16), int(data[10:18], 16)


def _first_time(point: ResumePoint, stream: Any) -> int:
    """The earliest cluster time (``seconds << 32 | increment``) a change of the stream opened at ``point`` can
    have: its start, or for a stream opened at "now", where the server says it begins."""
    if point.start_at is not None:
        return ev.time_part(point.start_at.time, point.start_at.inc)
    token = point.resume_after or point.start_after or stream.resume_token
    if token is None:
        raise NoStartPoint()
    return ev.time_part(*token_time(token))


def wall_seconds(change: dict[str, Any]) -> float | None:
    """A change's ``wallTime`` (MongoDB 6.0+; naive UTC from PyMongo by default) in seconds since the epoch."""
    wall = change.get("wallTime")
    if not isinstance(wall, dt.datetime):
        return None
    if wall.tzinfo is None:  # what wall.replace(tzinfo=dt.UTC).timestamp() works out, without the copy
        return (wall - _NAIVE_EPOCH).total_seconds()
    return wall.timestamp()


_NAIVE_EPOCH = dt.datetime(1970, 1, 1)


def _at(at: str) -> tuple[int, int]:
    head, _, tail = at.partition(":")
    return (int(head), int(tail)) if head.isdigit() and tail.isdigit() else (-1, -1)


class WatcherMetrics:
    def __init__(self, caught_up: Callable[[], bool], last_wall: Callable[[], float]) -> None:
        self.caught_up: Callable[[], bool] = caught_up
        self.last_wall: Callable[[], float] = last_wall
        r = self.registry = Registry()
        self.leader = r.gauge("realtime_watcher_leader", "1 while this watcher holds the lease and publishes")
        self.lag = r.gauge("realtime_watcher_lag_seconds",
                           "now minus the wall time of the last change published (0 when caught up)",
                           read=lambda: 0.0 if self.caught_up() or not self.last_wall() else
                           max(time.time() - self.last_wall(), 0.0))
        self.changes = r.counter("realtime_watcher_changes_total", "changes read from the stream")
        self.batches = r.counter("realtime_watcher_batches_total",
                                 "publish script calls, each publishing a batch of consecutive changes")
        self.published = r.counter("realtime_watcher_events_published_total", "events appended to Redis")
        self.duplicates = r.counter("realtime_watcher_duplicates_total",
                                    "changes refused by the publish script as already published")
        self.skipped = r.counter("realtime_watcher_skipped_total", "changes that produced no event, by reason")
        self.resets = r.counter("realtime_watcher_resets_total", "reset markers published, by reason")
        self.checkpoints = r.counter("realtime_watcher_checkpoints_total", "checkpoints written to MongoDB")
        self.errors = r.counter("realtime_watcher_errors_total", "errors that restarted the stream, by kind")
        self.up = r.gauge("realtime_watcher_dependency_up",
                          "0 while an outage of this dependency (redis, mongodb) is under way, else 1")
        self.outages = r.counter("realtime_watcher_outages_total", "outages of a dependency that began, by dependency")
        self.retries = r.counter("realtime_watcher_outage_retries_total",
                                 "failed attempts on an unavailable dependency, each retried after a backoff")
        self.last_poll = r.gauge("realtime_watcher_last_poll_age_seconds",
                                 "seconds since the change stream last answered")
        self.stream_length = r.gauge("realtime_watcher_stream_length", "entries in the global event stream")
        # The first two stages of a change's way to clients (the servers measure the other two, see docs/metrics.md)
        stages = r.histogram(STAGE_LATENCY, "seconds each stage of a change's way to clients took, by stage")
        self.from_mongodb = stages.labels(stage="mongodb_to_watcher")  # the change's wallTime to its read (wall)
        self.to_redis = stages.labels(stage="watcher_to_redis")  # its read to its publish script's answer

    def read(self, change: dict[str, Any], now: float | None = None) -> None:
        """A change was read from the stream now (or at ``now``, ``time.time()``): how long after its commit
        (its ``wallTime``, ms precision)."""
        wall = wall_seconds(change)
        if wall is not None:
            self.from_mongodb.observe((time.time() if now is None else now) - wall)


class Watcher:
    def __init__(self, cfg: WatcherConfig, mongo: AsyncMongoClient[dict[str, Any]], redis: Redis) -> None:
        self.cfg = cfg
        self.mongo = mongo
        self.redis = redis
        self.db = mongo[cfg.database]
        self.keys = Keys(cfg.prefix)
        self.publisher = Publisher(redis, self.keys, global_maxlen=cfg.global_maxlen, room_maxlen=cfg.room_maxlen)
        self.lease = RedisLease(redis, self.keys, cfg.name, cfg.lease_seconds)
        self.checkpoints = MongoCheckpoints(mongo, cfg.checkpoint_db, f"{cfg.database}/{cfg.prefix}", cfg.name)
        self.metrics = WatcherMetrics(lambda: self.caught_up, lambda: self.last_wall)
        self.router = Router(cfg.mapping, RedisMemory(redis, self.keys), MongoDocuments(self.db, cfg.mapping),
                             lookup_documents=cfg.full_document == "updateLookup",
                             tombstone_ms=int(cfg.tombstone_seconds * 1000),
                             on_as_of_now=lambda: self.metrics.skipped.inc(reason="visibility_as_of_now"))
        # (its reads again of a transaction's changes may meet one MongoDB cannot send: they ask for places)
        self.like_counts = LikeCounts(mongo, self.db, cfg.mapping, mapping.stream_pipeline(cfg.mapping, places=True),
                                      on_approximate=lambda: self.metrics.skipped.inc(reason="approximate_seed"),
                                      subject=self.router.subject)
        self.outages = Outages()
        for dependency in DEPENDENCIES:
            self.metrics.up.set(1, dependency=dependency)
        self.lease_value: str | None = None
        self.last_time, self.last_position = -1, -1
        self.last_poll = time.monotonic()
        self.last_checkpoint = 0.0
        self.places = False  # whether the stream sends the place alone of a change MongoDB cannot send whole
        self.streaming = False  # a change stream is open and being read
        self.caught_up = True  # the last poll of the stream returned nothing
        self.last_wall = 0.0  # wall time of the last change handled
        self.first_start: ResumePoint | None = None  # where a new deployment's first stream starts, for its retries
        self.redis_token = ""  # the token (_data) Redis holds last, as far as this watcher knows

    # -- leadership ------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Wait for the lease, publish while holding it, go back to waiting when it is lost; until ``stop``."""
        while not stop.is_set():
            value = await self._acquire(stop)
            if value is None:
                return
            self.lease_value = value
            self.metrics.leader.set(1)
            log.info("%s is the leader (lease %s)", self.cfg.name, value)
            try:
                await self._lead(value, stop)
            except (LeaseLost, Fenced):
                log.warning("%s lost the lease; back to standby", self.cfg.name)
            except (RedisError, PyMongoError) as exc:  # the loops below retry theirs: a last net, never an exit
                self.failed(exc, "leading")
                log.warning("%s stands by after an error while leading", self.cfg.name)
            finally:
                self.metrics.leader.set(0)
                self.lease_value = None
        log.info("%s stopped", self.cfg.name)

    async def _acquire(self, stop: asyncio.Event) -> str | None:
        """Try for the lease every quarter of a lease time; while Redis fails, back off (up to that quarter)."""
        announced = False
        poll = self.cfg.lease_seconds / 4
        delays = self._backoff(poll)
        while not stop.is_set():
            try:
                value = await self.lease.acquire()
            except RedisError as exc:
                self.failed(exc, "taking the lease")
                wait = next(delays)
            else:
                self.reachable(REDIS)
                if value is not None:
                    return value
                if not announced:
                    log.info("%s is a standby; the leader is %s", self.cfg.name, await self._holder())
                    announced = True
                wait, delays = poll, self._backoff(poll)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        return None

    def _backoff(self, cap: float = BACKOFF_CAP) -> Iterator[float]:
        return backoff(min(BACKOFF_BASE, cap), cap)

    def failed(self, exc: RedisError | PyMongoError, doing: str) -> None:
        """A failed call: an outage of its dependency when it is unavailable (logged when the outage begins,
        counted at each attempt), else an error its server answered with (logged each time)."""
        dependency = outage_of(exc)
        if dependency is None:
            log.warning("%s failed (%s: %s); retrying", doing, type(exc).__name__, exc)
            return
        self.metrics.retries.inc(dependency=dependency)
        outage = self.outages.failed(dependency, f"{type(exc).__name__}: {exc}")
        if outage is not None:
            self.metrics.outages.inc(dependency=dependency)
            self.metrics.up.set(0, dependency=dependency)
            log.warning("%s is unavailable (%s while %s); retrying with backoff (up to %gs) until it answers",
                        dependency, outage.reason, doing, BACKOFF_CAP)
        else:
            log.debug("%s still unavailable (%s: %s while %s)", dependency, type(exc).__name__, exc, doing)

    def reachable(self, dependency: str) -> None:
        """A call to ``dependency`` got through: the end of its outage, if one was under way."""
        outage = self.outages.succeeded(dependency)
        if outage is not None:
            self.metrics.up.set(1, dependency=dependency)
            log.info("%s is available again after %.1fs and %d failed attempts", dependency,
                     self.outages.clock() - outage.since, outage.failures)

    async def _holder(self) -> str | None:
        with contextlib.suppress(RedisError):
            return await self.lease.holder()
        return None

    async def _lead(self, value: str, stop: asyncio.Event) -> None:
        streaming: asyncio.Task[Any] = asyncio.create_task(self._stream_forever(value))
        renewing: asyncio.Task[Any] = asyncio.create_task(self._renew(value))
        stopping: asyncio.Task[Any] = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({streaming, renewing, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, renewing, stopping):
                task.cancel()
            await asyncio.gather(streaming, renewing, stopping, return_exceptions=True)
        for task in done:
            failure = None if task is stopping else task.exception()
            if failure is not None:
                raise failure
        if stopping in done:
            with contextlib.suppress(RedisError):
                await self.lease.release(value)  # let a standby take over at once

    async def _renew(self, value: str) -> None:
        """Renew every third of a lease time. Unrenewed for a whole lease time (Redis unavailable), the lease
        has lapsed in Redis too: stand by rather than pass for the leader (publishing is fenced anyway)."""
        renewed = self.outages.clock()
        while True:
            honour_cancellation()
            await asyncio.sleep(self.cfg.lease_seconds / 3)
            try:
                held = await self.lease.renew(value)
            except RedisError as exc:
                self.failed(exc, "renewing the lease")
                if self.outages.clock() - renewed > self.cfg.lease_seconds:
                    log.warning("%s could not renew its lease for a lease time: it has lapsed", self.cfg.name)
                    raise LeaseLost() from exc
                continue
            self.reachable(REDIS)
            if not held:
                raise LeaseLost()
            renewed = self.outages.clock()

    # -- the stream --------------------------------------------------------------------------------------
    def pipeline(self) -> list[dict[str, Any]]:
        return mapping.stream_pipeline(self.cfg.mapping, places=self.places)

    async def _stream_forever(self, lease: str) -> None:
        """Stream from the resume point; after any failure of Redis or MongoDB, back off, then plan the resume
        point again (the last token published is the truth), so nothing is skipped or published twice."""
        point: ResumePoint | None = None
        delays = self._backoff()
        while True:
            honour_cancellation()
            polled = self.last_poll
            try:
                if point is None:
                    point = await self.resume_point()
                    self.reachable(REDIS)
                    self.reachable(MONGODB)
                point = await self._stream(lease, point)
                delays = self._backoff()
            except (PyMongoError, RedisError, Diverged) as exc:
                too_large = isinstance(exc, OperationFailure) and exc.code == EVENT_TOO_LARGE
                self.metrics.errors.inc(kind="event_too_large" if too_large else type(exc).__name__)
                if too_large and not self.places:
                    # The next stream sends the place of such a change alone, until the watcher is past it.
                    self.places = True
                    log.warning("a change event is over MongoDB's 16 MB limit: reading on with its place alone (%s)",
                                exc)
                elif too_large:
                    log.error("a change event is over MongoDB's 16 MB limit, even with its place alone: the stream "
                              "cannot go past it, and nothing after it is published (see docs/operations.md, a "
                              "change event over 16 MB); retrying: %s", exc)
                elif isinstance(exc, Diverged):
                    log.warning("Redis does not hold the last change published (%s): it restarted from older "
                                "data; planning the resume point again", exc)
                else:
                    self.failed(exc, "streaming")
                if self.last_poll != polled:  # the stream was read since the last failure: a new one
                    delays = self._backoff()
                point = None
                await asyncio.sleep(next(delays))

    async def resume_point(self) -> ResumePoint:
        """The newer of the last token published to Redis and the MongoDB checkpoint; the last token published
        when Redis lost some of what it had published; the oplog's oldest point when it lost everything. A stream
        that does not continue the last token Redis holds (it holds none) is preceded by a reset marker."""
        state = await self.publisher.state()
        checkpoint = await self.checkpoints.load()
        self.redis_token = state.get("token", "")
        published = orjson.loads(state["token_json"]) if state.get("token_json") else None
        if published is not None and checkpoint is not None and _at(checkpoint.at) > _at(state.get("at", "")):
            # Redis restarted from data older than what it had acknowledged (an append-only file fsynced every
            # second, a snapshot): publish again, with the same ids, what followed its last token; if the oplog
            # no longer holds that token, go on from the checkpoint after a reset.
            fallback = ResumePoint(resume_after=checkpoint.token, at=checkpoint.at, reset="redis_data_lost")
            point = ResumePoint(resume_after=published, at=state.get("at", ""), fallback=fallback)
            log.warning("Redis lost published changes (it holds up to %s, the checkpoint says %s): republishing "
                        "from %s", state.get("at"), checkpoint.at, point.describe())
        elif published is not None and (checkpoint is None or published["_data"] >= checkpoint.token["_data"]):
            point = ResumePoint(resume_after=published, at=state.get("at", ""))
        elif checkpoint is not None and published is None and _at(checkpoint.at) > (-1, -1) \
                and not await self._holds_changes():
            # Redis lost its data: publish again, with the same ids, what the oplog still holds of the retention
            # window (the same changes give the same ids); if it holds nothing of it, go on from the checkpoint.
            secs, inc = token_time(checkpoint.token)
            start = await self._oldest_start(Timestamp(secs, inc))
            fallback = ResumePoint(resume_after=checkpoint.token, at=checkpoint.at, reset="redis_data_lost")
            point = ResumePoint(start_at=start, fallback=fallback, reset="redis_data_lost") if start is not None \
                else fallback
            log.warning("Redis holds no events but a checkpoint exists: republishing from %s", point.describe())
        elif checkpoint is not None and published is not None:
            # The checkpoint moved past Redis's last token with no change in between (on empty batches)
            point = ResumePoint(resume_after=checkpoint.token, at=checkpoint.at)
        elif checkpoint is not None:
            # Redis holds no token: this stream does not continue what it holds (it lost its data, or holds
            # reset markers alone), so clients resuming from before must be told to refetch.
            reason = "redis_data_lost" if _at(checkpoint.at) > (-1, -1) else STREAM_STARTED
            point = ResumePoint(resume_after=checkpoint.token, at=checkpoint.at, reset=reason)
        else:
            # Nothing published, no checkpoint: a new deployment, or Redis lost its data with the checkpoint
            # (MongoDB restarted without its data first). Start after MongoDB's latest write, after a reset
            # marker (what came before, if anything, is unknown); start there again when this first stream
            # fails before its first checkpoint (not at a later "now": a gap).
            point = self.first_start = self.first_start or replace(await self._now(), reset=STREAM_STARTED)
            log.warning("Redis holds no change published and no checkpoint exists (a new deployment, or both were "
                        "lost): a new stream from now, after a reset marker (%s)", STREAM_STARTED)
        log.info("resuming %s", point.describe())
        return point

    async def _now(self) -> ResumePoint:
        """Just after the latest write MongoDB knows of (the operation time of a ping)."""
        reply = await self.db.command("ping")
        op = reply.get("operationTime")
        if not isinstance(op, Timestamp):
            return ResumePoint()
        return ResumePoint(start_at=Timestamp(op.time, op.inc + 1) if op.inc < 0xFFFFFFFF else
                           Timestamp(op.time + 1, 0))

    async def _holds_changes(self) -> bool:
        """Whether the global stream's newest entry is a change's event (not nothing, not a reset marker alone,
        which is what a retry finds when an outage cut the republishing after a data loss short)."""
        newest = await self.redis.xrevrange(self.keys.events, count=1) or []
        fields = newest[0][1] if newest else None
        return bool(fields and fields.get(b"t"))

    async def _oldest_start(self, upto: Timestamp) -> Timestamp | None:
        """The earliest cluster time, within the retention window before ``upto``, at which the oplog still
        lets a stream start: found by probing (a binary search over opening streams), which needs no
        access to the oplog itself."""
        async def can_start(time_part: int) -> bool:
            try:
                probe = await self._open(ResumePoint(start_at=Timestamp(time_part >> 32, time_part & 0xFFFFFFFF)))
            except OperationFailure as exc:
                if exc.code in HISTORY_LOST:
                    return False
                raise
            await probe.close()
            return True

        good = ev.time_part(upto.time, upto.inc)
        bad = ev.time_part(max(upto.time - int(self.cfg.max_age), 1), 0)
        if await can_start(bad):
            return Timestamp(bad >> 32, bad & 0xFFFFFFFF)
        if not await can_start(good):
            return None
        while good - bad > 1:
            mid = (good + bad) // 2
            if await can_start(mid):
                good = mid
            else:
                bad = mid
        return Timestamp(good >> 32, good & 0xFFFFFFFF)

    async def _open(self, point: ResumePoint) -> Any:
        kwargs: dict[str, Any] = {}
        if point.resume_after is not None:
            kwargs["resume_after"] = point.resume_after
        if point.start_after is not None:
            kwargs["start_after"] = point.start_after
        if point.start_at is not None:
            kwargs["start_at_operation_time"] = point.start_at
        return await self.db.watch(self.pipeline(), full_document=self.cfg.full_document,
                                   full_document_before_change="whenAvailable",
                                   max_await_time_ms=self.cfg.max_await_ms, **kwargs)

    async def _stream(self, lease: str, point: ResumePoint) -> ResumePoint:
        """Run one stream until it ends; returns where the next one starts."""
        try:
            stream = await self._open(point)
        except OperationFailure as exc:
            if exc.code not in HISTORY_LOST:
                raise
            if point.fallback is not None:
                log.warning("cannot start %s (%s); trying %s", point.describe(), exc.code, point.fallback.describe())
                return point.fallback
            return await self._lost(lease, exc)
        self.last_time, self.last_position = _at(point.at)
        self.router.clear()  # its cache must match where this stream starts (another leader may have moved on)
        async with stream:
            first = _first_time(point, stream)
            if point is self.first_start and stream.resume_token is not None:
                # A new deployment's stream starts "now": only a checkpoint finds that place again after a
                # restart (nothing is published yet). Saved before the reset marker, so that a watcher stopped
                # in between starts there, not at a later "now" that would leave out the writes between.
                await self._save_checkpoint(stream.resume_token)
            if point.reset is not None:
                # This stream does not continue what Redis holds: clients resuming from before it must refetch.
                await self._reset(lease, first - 1, point.reset, {})
            # Replays from the oplog read changes as this stream does; a new mode counts from strictly after the
            # stream's start (a change sharing its cluster time may be the previous stream's).
            await self.publisher.record_mode(lease=lease, full_document=self.cfg.full_document, since=first + 1)
            self.streaming = True
            try:
                return await self._read(lease, stream)
            finally:
                self.streaming = False

    async def _read(self, lease: str, stream: Any) -> ResumePoint:
        # While a read is published, the next one is read (the round trip to MongoDB overlaps the ones to Redis).
        # The checkpoint then names the last change published, not the stream's token, which may be further on.
        ahead: asyncio.Task[tuple[list[dict[str, Any]], dict[str, Any]]] | None = None
        try:
            while stream.alive or ahead is not None:
                honour_cancellation()
                posts_now: dict[str, Any] | None = None  # posts as they are now, read with the changes
                try:
                    if ahead is not None:
                        task, ahead = ahead, None
                        changes, posts_now = await task
                    else:
                        changes = await self._take(stream)
                except OperationFailure as exc:
                    if exc.code not in HISTORY_LOST:
                        raise
                    return await self._lost(lease, exc)
                self.last_poll = time.monotonic()
                self.reachable(MONGODB)
                if not changes:
                    self.caught_up = True
                    await self._checkpoint(stream.resume_token)
                    continue
                self.caught_up = False
                if self.cfg.read_ahead and stream.alive:
                    ahead = asyncio.create_task(self._read_ahead(stream))
                nxt = await self._handle_read(lease, changes, posts_now)
                if nxt is not None:
                    return nxt
                await self._checkpoint(changes[-1]["_id"])
        finally:
            if ahead is not None:
                await cancel_all([ahead])
        # The server closed the stream (an invalidate the $match let through is handled in _handle_read).
        token = stream.resume_token
        log.warning("the change stream was closed by the server; starting after %s", token)
        return ResumePoint(start_after=token) if token else ResumePoint()

    async def _read_ahead(self, stream: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The next read, taken while the last one is published, and the posts as they are now that its comment
        updates need (that query then waits for no other)."""
        changes = await self._take(stream)
        return changes, await self.router.posts_now(changes) if changes else {}

    async def _take(self, stream: Any) -> list[dict[str, Any]]:
        """One read: a change (waiting for one up to the await time), then as many more as the driver already
        holds, up to ``read_batch``; never waiting for more, so that a lone change is published at once."""
        change = await stream.try_next()
        if change is None:
            return []
        changes = [change]
        while len(changes) < self.cfg.read_batch and buffered(stream):
            change = await stream.try_next()
            if change is None:
                break
            changes.append(change)
        return changes

    async def _lost(self, lease: str, exc: OperationFailure) -> ResumePoint:
        reason = HISTORY_LOST[exc.code or 0]
        log.error("change stream history is gone (%s, code %s: %s); publishing a reset and starting a fresh "
                  "stream: events between the last one published and now are lost", reason, exc.code, exc)
        return await self._fresh_with_reset(lease, reason, {"code": exc.code})

    async def _fresh_with_reset(self, lease: str, reason: str, extra: dict[str, Any]) -> ResumePoint:
        """Open a fresh stream (to learn where it starts), publish a reset just before that point."""
        probe = await self._open(ResumePoint())
        start = probe.resume_token
        await probe.close()
        assert start is not None
        secs, inc = token_time(start)
        await self._reset(lease, ev.time_part(secs, inc) - 1, reason, extra)
        # The last change processed stays known (checkpoints carry it): a checkpoint that names none means
        # that nothing was ever published, which tells a new deployment from a Redis data loss.
        return ResumePoint(resume_after=start, at=f"{self.last_time}:{self.last_position}")

    async def _reset(self, lease: str, time_part: int, reason: str, extra: dict[str, Any], seq: int = MAX_SEQ
                     ) -> None:
        event = Event(f"{time_part}-{seq}", ev.RESET, (ev.ALL_ROOMS,), {"reason": reason, **extra},
                      int(time.time() * 1000))
        if await self.publisher.reset(lease=lease, event=event, forget_token=False):
            self.metrics.resets.inc(reason=reason)
            log.warning("published reset marker %s (%s)", event.id, reason)
        else:
            log.warning("reset marker %s not written: the stream already holds an entry at or after it", event.id)

    async def _checkpoint(self, token: dict[str, Any] | None) -> None:
        """Save ``token`` (the last change published, or the stream's token after an empty read) as the
        checkpoint, when one is due."""
        if time.monotonic() - self.last_checkpoint < self.cfg.checkpoint_interval or token is None:
            return
        await self._save_checkpoint(token)

    async def _save_checkpoint(self, token: dict[str, Any]) -> None:
        self.last_checkpoint = time.monotonic()
        await self.checkpoints.save(Checkpoint(dict(token), f"{self.last_time}:{self.last_position}"))
        self.metrics.checkpoints.inc()

    # -- one read ---------------------------------------------------------------------------------------
    async def _handle_read(self, lease: str, changes: list[dict[str, Any]],
                           posts_now: dict[str, Any] | None = None) -> ResumePoint | None:
        """Publish a read's changes in order: the ordinary ones mapped and published in batches, those that end
        or reset the stream (invalidate, drop, rename, dropDatabase) one by one between them. ``posts_now``: the
        posts as they are now that its comment updates need, when they were read with it. The garbage collector waits
        until the read is published (see :class:`_Collection`)."""
        with COLLECTION.paused():
            return await self._publish_read(lease, changes, posts_now)

    async def _publish_read(self, lease: str, changes: list[dict[str, Any]],
                            posts_now: dict[str, Any] | None = None) -> ResumePoint | None:
        read, now = time.monotonic(), time.time()
        for change in changes:
            self.metrics.read(change, now)
        run: list[dict[str, Any]] = []
        for change in changes:
            if change.get("operationType", "") not in STREAM_EVENTS and change.get(mapping.TOO_LARGE) is not True:
                run.append(change)
                continue
            if run:
                await self._publish_run(lease, run, read, posts_now)
                run = []
            if change.get(mapping.TOO_LARGE) is True:
                return await self._handle_too_large(lease, change)
            nxt = await self._handle_stream_event(lease, change)
            if nxt is not None:
                return nxt
        if run:
            await self._publish_run(lease, run, read, posts_now)
        return None

    async def _handle_stream_event(self, lease: str, change: dict[str, Any]) -> ResumePoint | None:
        op = change.get("operationType", "")
        coll = (change.get("ns") or {}).get("coll")
        time_part, position = self._place(change, self.last_time, self.last_position)
        self.metrics.changes.inc(collection=str(coll), operation=str(op))
        await self._publish_batch(lease, [Pending(change["_id"], f"{time_part}:{position}", [])], [(change, position)],
                                  {})
        if op == "invalidate":
            return ResumePoint(start_after=change["_id"], at=f"{time_part}:{position}")
        self.router.clear()
        reason = {"drop": "collection_dropped", "rename": "collection_renamed"}.get(op, "database_dropped")
        await self._reset(lease, time_part, reason, {"collection": coll} if coll else {})
        return None

    async def _handle_too_large(self, lease: str, change: dict[str, Any]) -> ResumePoint:
        """A change MongoDB could not send with its documents (over 16 MB in one event): the stream sent its place
        alone (see :func:`mapping.stream_pipeline`). What it published is unknown: a reset marker takes the place
        of its events, for every room (clients refetch), and what the watcher knew of its document (a post's
        routing, a reaction's post, like counts) is forgotten, to be read from MongoDB when next needed (a post's
        routing is unknown for the other changes at its cluster time: see :func:`mapping.blind_entry`). The
        marker goes first: a watcher stopped before the change is published reads it again, and finds the
        marker written."""
        op = change.get("operationType", "")
        coll = (change.get("ns") or {}).get("coll")
        time_part, position = self._place(change, self.last_time, self.last_position)
        self.metrics.changes.inc(collection=str(coll), operation=str(op))
        self.metrics.skipped.inc(reason=mapping.SKIP_TOO_LARGE)
        key = id_text((change.get("documentKey") or {}).get("_id"))
        log.error("change %s (%s on %s, document %s) is over MongoDB's 16 MB limit with its documents: published "
                  "as a reset marker (%s) in its place", change["_id"]["_data"][:26], op, coll, key,
                  EVENT_TOO_LARGE_REASON)
        extra: dict[str, Any] = {"collection": coll} if isinstance(coll, str) else {}
        if key is not None:
            extra["id"] = key
        await self._reset(lease, time_part, EVENT_TOO_LARGE_REASON, extra, seq=position * ev.EVENTS_PER_CHANGE)
        cfg = self.cfg.mapping
        posts = [(key, orjson.dumps(mapping.post_entry(mapping.blind_entry(time_part))), 0)] \
            if coll == cfg.posts and key is not None else []
        kind = {cfg.likes: "like", cfg.comments: "comment"}.get(coll) if isinstance(coll, str) else None
        forget = [(kind, key)] if kind is not None and key is not None else []
        await self._publish_batch(lease, [Pending(change["_id"], f"{time_part}:{position}", [], (), forget, posts)],
                                  [(change, position)], {})
        self.places = False  # past it: a stream as cheap as before, from here, with the router's cache emptied
        return ResumePoint(resume_after=change["_id"], at=f"{time_part}:{position}")

    @staticmethod
    def _place(change: dict[str, Any], last_time: int, last_position: int) -> tuple[int, int]:
        """A change's time part and position among the changes at its cluster time, after the change at
        (``last_time``, ``last_position``)."""
        ct: Timestamp = change["clusterTime"]
        time_part = ev.time_part(ct.time, ct.inc)
        return time_part, last_position + 1 if time_part == last_time else 0

    async def _publish_run(self, lease: str, changes: list[dict[str, Any]], read: float,
                           posts_now: dict[str, Any] | None = None) -> None:
        """Map consecutive ordinary changes (one MGET of the post index for all of them) and publish them,
        ``publish_batch`` per script call: each batch goes to Redis once it is mapped, and the next one is
        mapped while Redis runs the script. The like counts Redis lacks are read (one snapshot read for all of
        them) while the first batch is mapped."""
        await self.router.prefetch(changes, posts_now)
        placed: list[tuple[dict[str, Any], int]] = []  # each change with its position among those at its time
        times: list[int] = []  # and its time part
        touched: dict[tuple[Any, Any], int] = {}  # changes by (collection, operation)
        last_time, last_position = self.last_time, self.last_position
        for change in changes:
            last_time, last_position = self._place(change, last_time, last_position)
            placed.append((change, last_position))
            times.append(last_time)
            ns = change.get("ns")
            kind = (ns.get("coll") if isinstance(ns, dict) else None, change.get("operationType", ""))
            touched[kind] = touched.get(kind, 0) + 1
        for (coll, op), n in touched.items():
            self.metrics.changes.inc(n, collection=str(coll), operation=str(op))
        # The mapping lets the event loop turn every YIELD_EVERY changes, so that the round trips of the tasks
        # meanwhile (the like counts' reads, a batch's script, the next read) go on.
        counting = asyncio.create_task(self._like_counts_ahead(placed))
        publishing: asyncio.Task[None] | None = None
        try:
            pending: list[Pending] = []  # each change, mapped
            counted: set[str] = set()  # the posts whose likes the changes mapped so far count
            size = self.cfg.publish_batch
            for start in range(0, len(placed), size):
                end = min(start + size, len(placed))
                first: dict[str, int] = {}  # the posts whose likes this batch counts first, and where
                for i in range(start, end):
                    if i % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                    change, position = placed[i]
                    at = times[i]
                    mapped = self._map_known(change, position, at)
                    if mapped is None:
                        mapped = await self._map(change, position)
                    pending.append(Pending(change["_id"], f"{at}:{position}", mapped.events,
                                           () if mapped.index_set is None else (mapped.index_set,),
                                           () if mapped.index_del is None else (mapped.index_del,),
                                           () if mapped.post_info is None else self.router.writes(mapped)))
                    for e in mapped.events:
                        if e.counter is not None and e.counter.post_id not in counted:
                            counted.add(e.counter.post_id)
                            first[e.counter.post_id] = i
                seeds = await self._seeds(first, placed, counting) if first else {}
                if publishing is not None:
                    task, publishing = publishing, None
                    await task  # the batch before is published before this one goes
                publishing = asyncio.create_task(
                    self._publish_batch(lease, pending[start:end], placed[start:end], seeds, read))
            if publishing is not None:
                task, publishing = publishing, None
                await task
        finally:
            await cancel_all([task for task in (counting, publishing) if task is not None])
        self.router.settle()

    def _map_known(self, change: dict[str, Any], position: int, at: int) -> mapping.Mapped | None:
        """Map a change with what the router holds, without a coroutine (most changes); None when that takes a
        round trip: then :meth:`_map`."""
        try:
            mapped = self.router.map_known(change, position, at)
        except Exception:
            mapped = self._unmappable(change)
        return None if mapped is None else self._mapped(change, mapped)

    async def _map(self, change: dict[str, Any], position: int) -> mapping.Mapped:
        try:
            mapped = await self.router.map(change, position)
        except (PyMongoError, RedisError):
            raise  # an outage, not a bad change: the change is retried, never skipped
        except Exception:
            mapped = self._unmappable(change)
        return self._mapped(change, mapped)

    @staticmethod
    def _unmappable(change: dict[str, Any]) -> mapping.Mapped:
        log.exception("skipping change %s on %s: it could not be mapped", change.get("_id"),
                      (change.get("ns") or {}).get("coll"))
        return mapping.Mapped(skipped=mapping.SKIP_BAD_DOCUMENT)

    def _mapped(self, change: dict[str, Any], mapped: mapping.Mapped) -> mapping.Mapped:
        if mapped.skipped:
            self.metrics.skipped.inc(reason=mapped.skipped)
            if mapped.skipped in (mapping.SKIP_UNROUTABLE_DELETE, mapping.SKIP_NO_POST, mapping.SKIP_BAD_ID):
                log.info("change %s on %s published no event: %s", change["_id"]["_data"][:26],
                         (change.get("ns") or {}).get("coll"), mapped.skipped)
        return mapped

    async def _like_counts_ahead(self, placed: list[tuple[dict[str, Any], int]]
                                 ) -> tuple[frozenset[str], set[str], Snapshot | None]:
        """What the like counts of a run's changes need, read before they are mapped (:meth:`_seeds` takes it
        after): the posts whose likes the changes insert or delete, those whose count Redis holds, and the
        counts of the others from MongoDB, as of before the first of those changes (None when there are none)."""
        likes = self.like_counts.likes(placed)
        first = liked(*likes)
        if not first:
            return frozenset(), set(), None
        held = await self.publisher.counted(list(first))
        missing = {post: i for post, i in first.items() if post not in held}
        return frozenset(first), held, await self.like_counts.snapshot(placed, missing, likes) if missing else None

    async def _seeds(self, first: dict[str, int], placed: list[tuple[dict[str, Any], int]],
                     ahead: asyncio.Task[tuple[frozenset[str], set[str], Snapshot | None]]) -> dict[str, Seed]:
        """The like counts Redis does not hold of the posts in ``first``, each as of the change of ``placed`` that
        counts its likes first (its index in ``first``), with what ``ahead`` (:meth:`_like_counts_ahead`) read."""
        liked, held, snapshot = await ahead
        unknown = [post for post in first if post not in liked]  # a delete's, its post known from the index
        if unknown:
            held = held | await self.publisher.counted(unknown)
        need = {post: i for post, i in first.items() if post not in held}
        return await self.like_counts.seeds(placed, need, snapshot) if need else {}

    async def _publish_batch(self, lease: str, pending: list[Pending], placed: list[tuple[dict[str, Any], int]],
                             seeds: dict[str, Seed], read: float | None = None) -> None:
        """Publish consecutive changes (``pending``, mapped, and ``placed``) with one script call; ``read``: when
        they were read (``time.monotonic()``), for the stage they took."""
        while True:
            try:
                outcome = await self.publisher.publish_batch(lease=lease, previous=self.redis_token, seeds=seeds,
                                                             changes=pending)
                break
            except NeedSeed as need:
                # Counts Redis lost since the read asked (or was not asked for): as of this batch's first like
                first: dict[str, int] = {}
                for i, change in enumerate(pending):
                    for e in change.events:
                        if e.counter is not None and e.counter.post_id in need.post_ids:
                            first.setdefault(e.counter.post_id, i)
                seeds = {**seeds, **await self.like_counts.seeds(placed, first)}
        self.metrics.batches.inc()
        self.last_time, self.last_position = _at(pending[-1].at)
        self.redis_token = outcome.last
        if outcome.skipped:
            self.metrics.duplicates.inc(outcome.skipped)
        types: collections.Counter[str] = collections.Counter(map(_TYPE, itertools.chain.from_iterable(
            [change.events for change in pending[outcome.skipped:]])))
        for type_, n in types.items():
            self.metrics.published.inc(n, type=type_)
        if read is not None:
            self.metrics.to_redis.observe(time.monotonic() - read, len(pending))
        wall = wall_seconds(placed[-1][0])
        if wall is not None:
            self.last_wall = wall

    # -- housekeeping -------------------------------------------------------------------------------------
    async def trim_by_age(self) -> None:
        """Drop history older than the retention age from the global stream and every room."""
        cutoff = int(time.time() - self.cfg.max_age)
        minid = f"{ev.time_part(max(cutoff, 0), 0)}-0"
        await self.redis.xtrim(self.keys.events, minid=minid, approximate=True)
        async for key in self.redis.scan_iter(match=self.keys.room_prefix + "*", count=1000):
            await self.redis.xtrim(key, minid=minid, approximate=True)

    def health(self) -> tuple[bool, str]:
        """Unhealthy when leading and the stream has been silent past the stall threshold, unless the watcher
        is retrying a dependency's outage (a restart would not help: it would wait the same way)."""
        silent = time.monotonic() - self.last_poll
        self.metrics.last_poll.set(silent if self.lease_value else 0.0)
        waiting = ", ".join(sorted(self.outages.current))
        if self.lease_value is not None and silent > self.cfg.stall_seconds:
            # Failed attempts come at most a backoff plus one bounded call apart (server selection or a socket
            # timeout): past that with no attempt, the watcher is stuck, not waiting.
            attempt = BACKOFF_CAP + 10.0 + self.cfg.max_await_ms / 1000 + 10.0
            if self.outages.retrying(within=self.cfg.stall_seconds + attempt):
                return True, f"leader, waiting for {waiting}"
            return False, f"the change stream has not answered for {silent:.0f}s"
        state = "standby" if self.lease_value is None else "leader" if self.streaming else \
            "leader (opening the stream)"
        return True, f"{state}, waiting for {waiting}" if waiting else state

    async def check_mongodb(self) -> None:
        """Ask MongoDB for a ping (bounded) when the watcher is not hearing from it otherwise: on a standby (it
        uses MongoDB only when it leads), and on a leader whose stream is not open or has been silent past its
        await time. The answer counts as any other call's, for the outage's log line and metrics."""
        silent = time.monotonic() - self.last_poll
        if self.lease_value is not None and self.streaming and silent < self.cfg.max_await_ms / 1000 + PING_TIMEOUT:
            return
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self.mongo.admin.command("ping")
        except TimeoutError:
            self.failed(NetworkTimeout(f"no answer to a ping within {PING_TIMEOUT:g}s"), "checking readiness")
        except PyMongoError as exc:
            self.failed(exc, "checking readiness")
        else:
            self.reachable(MONGODB)

    def problems(self) -> list[str]:
        """Why the watcher is not ready (empty when it is): outages under way, a stalled or unopened stream."""
        problems = self.outages.problems()
        ok, why = self.health()
        if not ok:
            problems.append(why)
        if self.lease_value is not None and not self.streaming and not self.outages.current:
            problems.append("the change stream is not open yet")
        return problems
