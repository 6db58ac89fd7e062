"""A post's like count as of a change, read from MongoDB the first time Redis needs it (the post's first like
since Redis was empty, or since Redis lost the count).

Every change of a transaction carries the transaction's ``clusterTime``, so a read as of that time already
holds all of the transaction's writes. The count right before the change at position ``p`` among the
changes at time ``T`` is therefore read in two parts:

1. the post's likes as of just before ``T`` (a snapshot read at ``T`` minus one increment), which holds
   none of them;
2. plus what the changes at ``T`` before this one (positions ``0 .. p-1``, read back from the change stream
   with ``startAtOperationTime: T``) did to the post's likes: each insert adds one, each delete of one of
   its likes takes one away (a delete without a pre-image is placed by the like as it was before ``T``,
   or by its insert earlier in the transaction).

That count holds at the point "after the first ``p`` changes at ``T``" (:func:`watchers.publish.point`); the
publish script adds this change and every later one to it. Where MongoDB cannot read that far back, the
count as of now, at the point "after every change up to the read": the changes between then carry that
count, and every later one is exact again.

The watcher reads changes in batches and needs the counts of several posts at once: :meth:`LikeCounts.seeds`
reads them all with one snapshot read (an aggregate counting the likes of each of those posts) as of just
before the first change that needs one, then carries each count forward through the changes between that
point and the post's own first change, as above (those at the first change's cluster time before the read
are read back from the change stream, as for a single count).
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from bson import Timestamp
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from realtime import events as ev
from realtime.ids import id_text, id_value
from watchers import mapping
from watchers.config import MappingConfig
from watchers.publish import ALL_CHANGES, Seed, point
from watchers.routing import just_before

log = logging.getLogger("realtime.watcher")

EMPTY_POLLS = 3  # empty batches in a row after which the change being seeded is taken as not found


class NotFound(Exception):
    """The change stream did not give back the changes before the one being seeded."""


class LikeChange(NamedTuple):
    """An insert or delete of a like, as far as counting goes."""

    insert: bool
    key: str  # the like's _id, as its repr (so that ids of any BSON type can be compared and looked up)
    post_id: str | None  # its post; None when the change does not say (a delete without a pre-image)
    raw_key: Any = None  # the like's _id as stored


def like_changes(changes: Iterable[dict[str, Any]], cfg: MappingConfig,
                 subject: Callable[[dict[str, Any]], mapping.Subject | None] | None = None) -> list[LikeChange]:
    """The inserts and deletes of likes among ``changes``, in order. ``subject``: a change's
    :func:`watchers.mapping.subject`, when the caller knows it already."""
    out = []
    for change in changes:
        op = change.get("operationType")
        ns = change.get("ns")
        if (op == "insert" or op == "delete") and isinstance(ns, dict) and ns.get("coll") == cfg.likes:
            found = _like_change(change, op, cfg, subject)
            if found is not None:
                out.append(found)
    return out


def _like_change(change: dict[str, Any], op: str, cfg: MappingConfig,
                 subject: Callable[[dict[str, Any]], mapping.Subject | None] | None) -> LikeChange | None:
    """An insert or delete (``op``) on the likes as a like change; None when it is not one of a like."""
    sub = mapping.subject(change, cfg) if subject is None else subject(change)
    key = change.get("documentKey")
    if sub is None or sub.kind != "like" or not isinstance(key, dict):
        return None
    return LikeChange(op == "insert", repr(key.get("_id")), sub.post_id if sub.doc is not None else None,
                      key.get("_id"))


def likes_of(changes: Sequence[tuple[dict[str, Any], int]], start: int, end: int, posts: Container[str] | None,
             cfg: MappingConfig, subject: Callable[[dict[str, Any]], mapping.Subject | None] | None = None
             ) -> tuple[list[LikeChange], list[int]]:
    """The like changes among ``changes[start:end]`` that :func:`deltas` needs to carry the counts of ``posts``
    forward, each with the index of its change: those of ``posts`` only (the others move none of their counts),
    unless a delete there does not say its like's post (no pre-image): placing it may take any like change
    before it, so then all of them, as when ``posts`` is None."""
    out: list[LikeChange] = []
    at: list[int] = []
    likes = cfg.likes
    for i in range(start, end):
        change = changes[i][0]
        op = change.get("operationType")  # like_changes(), one change at a time
        if op != "insert" and op != "delete":
            continue
        ns = change.get("ns")
        if not isinstance(ns, dict) or ns.get("coll") != likes:
            continue
        found = _like_change(change, op, cfg, subject)
        if found is None:
            continue
        if posts is None or found.post_id in posts:
            out.append(found)
            at.append(i)
        elif found.post_id is None and not found.insert:
            return likes_of(changes, start, end, None, cfg, subject)
    return out, at


def _of_posts(likes: list[LikeChange], at: list[int], end: int, posts: Container[str]
              ) -> tuple[list[LikeChange], list[int]]:
    """``likes_of(changes, start, end, posts)``, taken from ``likes_of(changes, start, len(changes), None)``."""
    stop = bisect_left(at, end)
    out: list[LikeChange] = []
    kept: list[int] = []
    for found, i in zip(likes[:stop], at[:stop], strict=True):
        if found.post_id in posts:
            out.append(found)
            kept.append(i)
        elif found.post_id is None and not found.insert:
            return likes[:stop], at[:stop]
    return out, kept


def liked(likes: list[LikeChange], at: list[int]) -> dict[str, int]:
    """The posts whose likes the like changes ``likes`` insert or delete (as the changes tell: not those of a
    delete without a pre-image), each with the index of its first such change (``at``: each one's index): the
    posts :meth:`LikeCounts.seeds` may be asked for, as of those changes or later ones."""
    out: dict[str, int] = {}
    for found, i in zip(likes, at, strict=True):
        if found.post_id is not None and found.post_id not in out:
            out[found.post_id] = i
    return out


def unplaced(earlier: Sequence[LikeChange]) -> list[LikeChange]:
    """The deletes among ``earlier`` whose like's post neither the delete nor an earlier insert tells."""
    inserted: set[str] = set()
    out = []
    for c in earlier:
        if c.insert:
            inserted.add(c.key)
        elif c.post_id is None and c.key not in inserted:
            out.append(c)
    return out


def delta(post_id: str, earlier: Sequence[LikeChange], owners: Mapping[str, str | None]) -> int:
    """What ``earlier`` did to the like count of ``post_id``. ``owners``: the post of each like in
    :func:`unplaced`, as it was before ``earlier`` (None: it did not exist, or had no usable post)."""
    posts = dict(owners)
    total = 0
    for c in earlier:
        if c.insert:
            posts[c.key] = c.post_id
            total += c.post_id == post_id
        else:
            total -= (c.post_id if c.post_id is not None else posts.get(c.key)) == post_id
            posts.pop(c.key, None)
    return total


def deltas(cuts: Mapping[str, int], earlier: Sequence[LikeChange], owners: Mapping[str, str | None]
           ) -> dict[str, int]:
    """For each post in ``cuts``: what the first ``cuts[post]`` changes of ``earlier`` did to its like count, as
    :func:`delta` tells, in one pass."""
    at: dict[int, list[str]] = {}
    for post_id, cut in cuts.items():
        at.setdefault(cut, []).append(post_id)
    posts = dict(owners)
    totals: dict[str, int] = dict.fromkeys(cuts, 0)
    out: dict[str, int] = {}
    for i in range(len(earlier) + 1):
        for post_id in at.get(i, ()):
            out[post_id] = totals[post_id]
        if i == len(earlier):
            break
        c = earlier[i]
        if c.insert:
            posts[c.key] = c.post_id
            post = c.post_id
            step = 1
        else:
            post = c.post_id if c.post_id is not None else posts.get(c.key)
            posts.pop(c.key, None)
            step = -1
        if post in totals:
            totals[post] += step
    return out


@dataclass(slots=True)
class Snapshot:
    """Like counts read from MongoDB for :meth:`LikeCounts.seeds` ahead of time (:meth:`LikeCounts.snapshot`):
    as of just before the change at index ``start`` of a run of changes, the first at its cluster time."""

    start: int
    before: Timestamp
    posts: frozenset[str]  # the posts counted
    earlier: list[LikeChange]  # the like changes at that cluster time before the run's first there
    counts: dict[str, int]  # as of ``before`` (absent: none)
    failed: OperationFailure | NotFound | None = None  # why MongoDB could not tell (then no counts)
    # every like change of the run from ``start`` on, and the index of each one's change: worked out by the first
    # seeds() that carries counts from the snapshot, for the others (one for each batch of the run)
    likes: tuple[list[LikeChange], list[int]] | None = None


class LikeCounts:
    """Reads seeds for the publish script (see the module's docstring)."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], db: AsyncDatabase[dict[str, Any]],
                 cfg: MappingConfig, pipeline: list[dict[str, Any]], *,
                 on_approximate: Callable[[], None] = lambda: None, max_await_ms: int = 100,
                 subject: Callable[[dict[str, Any]], mapping.Subject | None] | None = None) -> None:
        self.client = client
        self.db = db
        self.cfg = cfg
        self.pipeline = pipeline  # the watcher's: positions count the changes it lets through
        self.on_approximate = on_approximate
        self.max_await_ms = max_await_ms
        self.subject = subject  # a change's mapping.subject(), when the caller keeps them

    async def seed(self, post_id: str, change: dict[str, Any], position: int) -> Seed:
        """The like count of ``post_id`` right before ``change`` (at ``position`` among the changes sharing its
        cluster time), and the point it holds at."""
        ct: Timestamp = change["clusterTime"]
        before = just_before(ct)
        try:
            earlier = like_changes(await self._earlier(change, position), self.cfg) if position else []
            owners = await self._owners(unplaced(earlier), before)
            count = await self._count(post_id, before) + delta(post_id, earlier, owners)
            log.debug("like count of post %s before change %s:%d: %d", post_id, ct, position, count)
            return Seed(count, point(ev.time_part(ct.time, ct.inc), position))
        except (OperationFailure, NotFound) as exc:
            log.warning("cannot read the like count of post %s as of %s (%s); reading the current count",
                        post_id, ct, exc)
            self.on_approximate()
        return await self._now(post_id, ct)

    def likes(self, changes: Sequence[tuple[dict[str, Any], int]]) -> tuple[list[LikeChange], list[int]]:
        """The like changes among ``changes`` and the index of each one's change (for :func:`liked` and
        :meth:`snapshot`)."""
        return likes_of(changes, 0, len(changes), None, self.cfg, self.subject)

    async def snapshot(self, changes: Sequence[tuple[dict[str, Any], int]], first: Mapping[str, int],
                       likes: tuple[list[LikeChange], list[int]] | None = None) -> Snapshot:
        """What :meth:`seeds` reads from MongoDB for the posts in ``first`` (as for it), read ahead of it: then
        :meth:`seeds` only carries the counts forward, for those posts or some of them, as of those changes or
        later ones (the changes mapped meanwhile, to learn which of them count likes). ``likes``: those of
        ``changes`` (:meth:`likes`), when the caller has them."""
        start = min(first.values())
        ct: Timestamp = changes[start][0]["clusterTime"]
        while start > 0 and changes[start - 1][0]["clusterTime"] == ct:
            start -= 1  # the changes at that cluster time before the first one counted are counted too
        head, position = changes[start]
        before = just_before(ct)
        try:
            earlier = like_changes(await self._earlier(head, position), self.cfg) if position else []
            counts = await self._counts(list(first), before)
        except (OperationFailure, NotFound) as exc:
            return Snapshot(start, before, frozenset(first), [], {}, exc)
        snapshot = Snapshot(start, before, frozenset(first), earlier, counts)
        if likes is not None:
            cut = bisect_left(likes[1], start)
            snapshot.likes = (likes[0][cut:], likes[1][cut:])
        return snapshot

    async def seeds(self, changes: Sequence[tuple[dict[str, Any], int]], first: Mapping[str, int],
                    snapshot: Snapshot | None = None) -> dict[str, Seed]:
        """The like count of each post in ``first`` right before its first change: ``first[post]`` is the index
        in ``changes`` (consecutive changes of the stream, in order, each with its position among the changes
        at its cluster time) of the first one that counts the post's likes. One snapshot read for all of them
        (two when deletes without a pre-image must be placed), as of just before the earliest; none when
        ``snapshot`` (:meth:`snapshot`) counted them all as of before that."""
        if not first:
            return {}
        start = min(first.values())
        ct: Timestamp = changes[start][0]["clusterTime"]
        try:
            if snapshot is None or snapshot.start > start or not snapshot.posts.issuperset(first):
                snapshot = await self.snapshot(changes, first)
            if snapshot.failed is not None:
                raise snapshot.failed
            start, before, earlier = snapshot.start, snapshot.before, list(snapshot.earlier)
            if snapshot.likes is None:
                snapshot.likes = likes_of(changes, start, len(changes), None, self.cfg, self.subject)
            later, places = _of_posts(*snapshot.likes, max(first.values()), first)
            # a post's count is carried through the like changes before its first change
            cuts = {post_id: len(earlier) + bisect_left(places, i) for post_id, i in first.items()}
            earlier += later
            owners = await self._owners(unplaced(earlier), before)
            counts = snapshot.counts
            carried = deltas(cuts, earlier, owners)
        except (OperationFailure, NotFound) as exc:
            log.warning("cannot read the like counts of %d posts as of %s (%s); reading the current counts",
                        len(first), ct, exc)
            out = {}
            for post_id, i in first.items():
                self.on_approximate()
                out[post_id] = await self._now(post_id, changes[i][0]["clusterTime"])
            return out
        out = {}
        for post_id, i in first.items():
            change, position = changes[i]
            at: Timestamp = change["clusterTime"]
            count = counts.get(post_id, 0) + carried[post_id]
            out[post_id] = Seed(count, point(ev.time_part(at.time, at.inc), position))
        log.debug("like counts of %d posts from before change %s", len(out), ct)
        return out

    async def _earlier(self, change: dict[str, Any], position: int) -> list[dict[str, Any]]:
        """The ``position`` changes before ``change`` at its cluster time, in order."""
        ct = change["clusterTime"]
        target = change["_id"]["_data"]
        out: list[dict[str, Any]] = []
        empty = 0
        async with await self.db.watch(self.pipeline, start_at_operation_time=ct,
                                       full_document_before_change="whenAvailable",
                                       max_await_time_ms=self.max_await_ms) as stream:
            while empty < EMPTY_POLLS:
                found = await stream.try_next()
                if found is None:
                    empty += 1
                    continue
                empty = 0
                if found["_id"]["_data"] == target:
                    if len(out) != position:
                        raise NotFound(f"{len(out)} changes precede it at its time, not {position}")
                    return out
                if found.get("clusterTime") != ct:
                    break
                out.append(found)
        raise NotFound("the change stream did not give it back")

    async def _snapshot(self, pipeline: list[dict[str, Any]], at: Timestamp, most: int = 1) -> list[dict[str, Any]]:
        """What ``pipeline`` gives as of ``at``: at most ``most`` documents, in one reply."""
        reply = await self.db.command({"aggregate": self.cfg.likes, "pipeline": pipeline,
                                       "cursor": {"batchSize": most + 1},
                                       "readConcern": {"level": "snapshot", "atClusterTime": at}})
        return list(reply["cursor"]["firstBatch"])

    async def _count(self, post_id: str, at: Timestamp) -> int:
        field = self.cfg.fields.post_id
        batch = await self._snapshot([{"$match": {field: id_value(post_id)}}, {"$count": "n"}], at)
        return int(batch[0]["n"]) if batch else 0

    async def _counts(self, post_ids: list[str], at: Timestamp) -> dict[str, int]:
        """The like count of each post in ``post_ids`` as of ``at`` (absent: none)."""
        field = self.cfg.fields.post_id
        batch = await self._snapshot([{"$match": {field: {"$in": [id_value(p) for p in post_ids]}}},
                                      {"$group": {"_id": "$" + field, "n": {"$sum": 1}}}], at, len(post_ids))
        wanted = set(post_ids)
        out: dict[str, int] = {}
        for row in batch:
            text = id_text(row["_id"])  # ids MongoDB takes for the same value (5, 5.0) have one text
            if text in wanted:
                out[text] = out.get(text, 0) + int(row["n"])
        return out

    async def _owners(self, deletes: list[LikeChange], at: Timestamp) -> dict[str, str | None]:
        """The post of each deleted like in ``deletes``, as of ``at`` (None: none)."""
        if not deletes:
            return {}
        field = self.cfg.fields.post_id
        batch = await self._snapshot([{"$match": {"_id": {"$in": [c.raw_key for c in deletes]}}},
                                      {"$project": {field: 1}}], at, len(deletes))
        found = {repr(doc["_id"]): id_text(doc.get(field)) for doc in batch}
        return {c.key: found.get(c.key) for c in deletes}

    async def _now(self, post_id: str, ct: Timestamp) -> Seed:
        field = self.cfg.fields.post_id
        async with self.client.start_session(causal_consistency=True) as session:
            count = await self.db[self.cfg.likes].count_documents({field: id_value(post_id)}, session=session)
            op_time = session.operation_time
        at = op_time if op_time is not None else ct
        return Seed(count, point(ev.time_part(at.time, at.inc), ALL_CHANGES))

