"""The model's eyes: its own change stream on the stand-in (directly, through no proxy and under an application
name no fault targets), read on a thread, turned into :class:`~tests.chaos.model.Change` records.

It is the record of what MongoDB committed, in commit order, with cluster and wall times: nothing of the
product is involved in reading it.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import logging
import threading
import time
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tests.chaos.model import Change

log = logging.getLogger("chaos.tailer")
WATCHED = ("posts", "likes", "comments")


def wall_ms(change: dict[str, Any]) -> int:
    wall = change.get("wallTime")
    if isinstance(wall, dt.datetime):
        return calendar.timegm(wall.utctimetuple()) * 1000 + wall.microsecond // 1000
    return int(change["clusterTime"].time) * 1000


def to_change(raw: dict[str, Any], epoch: int) -> Change | None:
    op = raw.get("operationType")
    coll = (raw.get("ns") or {}).get("coll")
    if op not in ("insert", "update", "replace", "delete") or coll not in WATCHED:
        return None
    desc = raw.get("updateDescription") or {}
    ct = raw["clusterTime"]
    doc = raw.get("fullDocument") if op != "delete" else None
    return Change(op, coll, str(raw["documentKey"]["_id"]), dict(doc) if doc is not None else None,
                  dict(desc.get("updatedFields") or {}), tuple(desc.get("removedFields") or ()),
                  (int(ct.time), int(ct.inc)), wall_ms(raw), epoch,
                  tuple(str(t.get("field")) for t in desc.get("truncatedArrays") or () if isinstance(t, dict)))


class Tailer:
    """Reads every change of the watched collections from the moment it opens, until :meth:`stop`."""

    def __init__(self, uri: str, db: str) -> None:
        self.uri = uri
        self.db = db
        self.changes: list[Change] = []
        self.epoch = 0
        self.errors = 0
        self.polls = 0
        self.empty_polls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client: MongoClient[dict[str, Any]] | None = None
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name="chaos-tailer", daemon=True)

    def _open(self) -> None:
        self._client = MongoClient(self.uri, appname="chaos-model", serverSelectionTimeoutMS=30_000)
        pipeline = [{"$match": {"ns.coll": {"$in": list(WATCHED)}}}]
        # The document as each write left it (post-images are on, as realtime mongo-setup sets them): an update's
        # paths may be dotted (``hashtags.0``), the document is the plain truth.
        self._stream = self._client[self.db].watch(pipeline, max_await_time_ms=100, full_document="whenAvailable")

    def _close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(PyMongoError):
                self._stream.close()
        if self._client is not None:
            self._client.close()
        self._stream = self._client = None

    def start(self) -> None:
        """Open the stream (now: it sees every write after this call), then read it on a thread."""
        self._open()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._stream is None:  # suspended while the database restarts
                time.sleep(0.05)
                continue
            with self._lock:
                try:
                    raw = self._stream.try_next() if self._stream is not None else None
                except PyMongoError as exc:
                    self.errors += 1
                    log.warning("the model's change stream failed (%s); it resumes", exc)
                    raw = None
                    time.sleep(0.2)
                self.polls += 1
                if raw is None:
                    self.empty_polls += 1
                    continue
                change = to_change(raw, self.epoch)
                if change is not None:
                    self.changes.append(change)

    def drain(self, within: float = 30.0) -> None:
        """Wait until the stream has nothing more to give (two polls that returned nothing, after this call)."""
        start = self.empty_polls
        deadline = time.monotonic() + within
        while self.empty_polls < start + 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the model's change stream did not catch up")
            time.sleep(0.05)

    def suspend(self) -> None:
        """Read to the end, then stop reading (the database is about to go away)."""
        self.drain()
        with self._lock:
            self._close()

    def new_epoch(self) -> None:
        """The database was restarted without its data: read the new one from now on, as a new life."""
        with self._lock:
            self._close()
            self.epoch += 1
            self._open()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        with self._lock:
            self._close()
