"""The oplog: a bounded, ordered log of change events, and the cluster clock that stamps it.

Every write the stand-in commits appends one entry per changed document (one per operation of a
committed transaction, all sharing the commit's ``clusterTime``). Change-stream cursors scan it by
sequence number. It is bounded by entries and by bytes; the oldest entries fall off, and a resume point
older than what is left fails with ``ChangeStreamHistoryLost`` (286), as on a real replica set whose
oplog has rolled over.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bson
from bson import Timestamp
from bson.raw_bson import RawBSONDocument

from realtime.standin import tokens


class ClusterClock:
    """Hands out strictly increasing ``Timestamp(seconds, increment)`` values based on wall time."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._last = Timestamp(int(now()), 0)

    @property
    def last(self) -> Timestamp:
        return self._last

    def tick(self) -> Timestamp:
        secs = int(self._now())
        if secs > self._last.time:
            self._last = Timestamp(secs, 1)
        else:
            self._last = Timestamp(self._last.time, self._last.inc + 1)
        return self._last


@dataclass(slots=True)
class Entry:
    """One oplog entry: a change event (or a no-op) at a cluster time.

    ``event`` holds the event's fields other than ``_id`` and ``clusterTime`` (``operationType``,
    ``wallTime``, ``ns``, ``documentKey``, ``updateDescription``, ``fullDocument`` for inserts and
    replaces, ``to``, ``lsid``/``txnNumber``). ``pre`` and ``post`` are the point-in-time images, kept
    only when the collection had ``changeStreamPreAndPostImages`` enabled at the time of the write.
    """

    seq: int
    ts: Timestamp
    token: dict[str, str]
    event: dict[str, Any] | None  # None for a no-op
    pre: dict[str, Any] | None = None
    post: dict[str, Any] | None = None
    size: int = 0
    before: dict[str, Any] | None = None  # internal: the document before the write, for snapshot reads
    rendered: tuple[Any, ...] = ()  # the event as cursors of each kind show it, encoded: kind, raw, kind, raw, ...

    @property
    def data(self) -> str:
        return self.token["_data"]

    @property
    def op(self) -> str | None:
        return None if self.event is None else str(self.event["operationType"])


@dataclass
class Change:
    """A change to record, before it has a time and a token."""

    op: str
    db: str
    coll: str | None
    key: Any = None  # documentKey value (_id) for document changes
    fields: dict[str, Any] = field(default_factory=dict)  # fullDocument, updateDescription, to, ...
    pre: dict[str, Any] | None = None
    post: dict[str, Any] | None = None
    before: dict[str, Any] | None = None  # the document before the write, always (for snapshot reads)


def _wall_time() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Entries:
    """The oplog's entries, oldest first: a list read by position in constant time (a deque takes time in
    proportion to the distance from its ends), whose front is dropped by moving a start index, and compacted once
    the dropped part is as long as the rest."""

    def __init__(self) -> None:
        self._items: list[Entry | None] = []
        self._start = 0

    def __len__(self) -> int:
        return len(self._items) - self._start

    def __getitem__(self, i: int) -> Entry:
        item = self._items[self._start + i] if i >= 0 else self._items[i]
        assert item is not None
        return item

    def append(self, entry: Entry) -> None:
        self._items.append(entry)

    def popleft(self) -> Entry:
        entry = self[0]
        self._items[self._start] = None
        self._start += 1
        if self._start >= 1024 and self._start * 2 >= len(self._items):
            del self._items[: self._start]
            self._start = 0
        return entry


class Oplog:
    def __init__(self, max_entries: int = 1_000_000, max_bytes: int = 1 << 30,
                 clock: ClusterClock | None = None,
                 encode: Callable[[Entry], RawBSONDocument] | None = None) -> None:
        """``encode``: an entry as change streams show it (and remember it), which then measures it; without it
        the entry's fields are measured."""
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("the oplog must hold at least one entry")
        self.encode = encode
        self.on_drop: Callable[[Entry], None] | None = None  # told of every entry that falls off
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock or ClusterClock()
        self._entries = _Entries()
        self._next_seq = 0
        self._bytes = 0
        self._changed = asyncio.Event()
        self.truncations = 0
        self.append_noop()  # like a replica set's initiation entry: the start of history

    # -- reading ---------------------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def first_seq(self) -> int:
        return self._entries[0].seq

    @property
    def oldest_ts(self) -> Timestamp:
        return self._entries[0].ts

    @property
    def latest_ts(self) -> Timestamp:
        return self._entries[-1].ts

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, seq: int) -> Entry | None:
        """The entry at ``seq``, or None when it has been truncated away or does not exist yet."""
        i = seq - self.first_seq
        if 0 <= i < len(self._entries):
            return self._entries[i]
        return None

    def first_seq_after(self, data: str) -> int:
        """The sequence number of the first entry whose token sorts after ``data``."""
        lo, hi = 0, len(self._entries)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._entries[mid].data <= data:
                lo = mid + 1
            else:
                hi = mid
        return self.first_seq + lo

    def first_seq_at_or_after(self, ts: Timestamp) -> int:
        lo, hi = 0, len(self._entries)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._entries[mid].ts < ts:
                lo = mid + 1
            else:
                hi = mid
        return self.first_seq + lo

    def find(self, data: str) -> Entry | None:
        seq = self.first_seq_after(data) - 1
        entry = self.get(seq)
        return entry if entry is not None and entry.data == data else None

    def first_seq_after_time(self, ts: Timestamp) -> int:
        """The sequence number of the first entry after cluster time ``ts``."""
        return self.first_seq_at_or_after(Timestamp(ts.time, ts.inc + 1) if ts.inc < 0xFFFFFFFF
                                          else Timestamp(ts.time + 1, 0))

    def since(self, ts: Timestamp) -> list[Entry]:
        """The entries after ``ts``, oldest first."""
        start = self.first_seq_after_time(ts)
        return [self._entries[i - self.first_seq] for i in range(start, self._next_seq)]

    async def wait(self, seconds: float) -> None:
        """Wait until something is appended, or ``seconds`` pass."""
        if seconds <= 0:
            return
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)

    # -- writing ---------------------------------------------------------------------------------
    def append(self, changes: list[Change], txn: dict[str, Any] | None = None) -> list[Entry]:
        """Append changes. With ``txn`` (``{lsid, txnNumber}``) they share one cluster time."""
        if not changes:
            return []
        added = []
        ts = self.clock.tick()
        for index, change in enumerate(changes):
            if txn is None and index > 0:
                ts = self.clock.tick()
            event: dict[str, Any] = {"operationType": change.op, "wallTime": _wall_time()}
            event["ns"] = {"db": change.db} if change.coll is None else {"db": change.db, "coll": change.coll}
            if change.key is not None:
                event["documentKey"] = {"_id": change.key}
            event.update(change.fields)
            if txn is not None:
                event.update(txn)
            identity = [change.db, change.coll, change.op, change.key]
            token = tokens.make_token(ts, tokens.EVENT, index if txn is not None else 0, identity)
            entry = Entry(self._next_seq, ts, token, event, change.pre, change.post, 0, change.before)
            shown = len(self.encode(entry).raw) if self.encode is not None else len(bson.encode(event))
            entry.size = shown + (len(bson.encode(change.pre)) if change.pre else 0) + (
                len(bson.encode(change.post)) if change.post else 0
            )
            added.append(entry)
            self._push(entry)
        self._trim()
        self._changed.set()
        return added

    def append_noop(self) -> Entry:
        ts = self.clock.tick()
        entry = Entry(self._next_seq, ts, tokens.make_token(ts, tokens.EVENT, 0, ["noop"]), None, size=64)
        self._push(entry)
        self._trim()
        self._changed.set()
        return entry

    def _push(self, entry: Entry) -> None:
        self._entries.append(entry)
        self._next_seq += 1
        self._bytes += entry.size

    def _trim(self) -> None:
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_entries or self._bytes > self.max_bytes
        ):
            self._pop_oldest_group()

    def _pop_oldest_group(self) -> None:
        """Drop the oldest oplog entry; a transaction's events go together, as one applyOps entry."""
        ts = self._entries[0].ts
        while len(self._entries) > 1 and self._entries[0].ts == ts:
            entry = self._entries.popleft()
            self._bytes -= entry.size
            if self.on_drop is not None:
                self.on_drop(entry)
        self.truncations += 1

    def truncate(self, keep_last: int = 0) -> None:
        """Drop all but the newest ``keep_last`` entries (fault injection: the oplog rolled over).

        A no-op entry is appended first, so that history before this moment is gone even when
        ``keep_last`` is 0.
        """
        self.append_noop()
        keep = max(keep_last, 0) + 1
        while len(self._entries) > keep:
            self._pop_oldest_group()
