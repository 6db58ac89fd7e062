"""What the mapping needs to know of a post, found for each change; used by the watcher and by the server's
replay from the oplog (realtime/server/deep.py), so both route the same way.

For a like, a comment, or an update or delete of a post that carries no pre-image, routing needs the post's
author and visibility (and, for a post's own changes, its hashtags) as they were at that change. The
:class:`Router` looks, in order:

1. in its cache, then in the post index in Redis (``{rt}:post:{id}``). The index is written by the publish
   script with the change that taught it (a post's insert, replace, routing update or delete, or a lookup
   below), so it matches the last change published; a deleted post stays there as a tombstone for
   ``REALTIME_POST_TOMBSTONE_SECONDS``. An entry only says something of changes after its ``since``. A
   public post's change needs its hashtags too: when the entry does not know them (written by an earlier
   release, or after an update that changed them below the top level), MongoDB is asked as below, and
   where it cannot tell, the entry serves without them;
2. in MongoDB, as of just before the change (a snapshot read at that cluster time): exact, and remembered;
3. where MongoDB cannot read that far back, in the post as it is now, of which only the author is trusted:
   the change then goes to the author alone (counted as ``visibility_as_of_now``).

The watcher maps a read's changes before it publishes them: :meth:`Router.prefetch` reads the index entries
of the read's posts with one MGET, and until :meth:`Router.settle` (everything mapped is published) the
router keeps what the changes mapped so far write to the indexes (posts, likes and comments), which Redis
does not hold yet, and looks there first.

Nothing found: the mapping publishes nothing public (see watchers/mapping.py). A comment update's document
is the comment as it is now (``updateLookup``), so its post must also be public now for it to go to
``post:{id}``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from bson import Timestamp
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure
from redis.asyncio import Redis

from realtime import events as ev
from realtime.ids import id_text, id_value
from watchers import mapping
from watchers.config import MappingConfig
from watchers.keys import Keys
from watchers.mapping import Mapped, PostInfo

CACHE_SIZE = 100_000


class SnapshotUnavailable(Exception):
    """MongoDB cannot read the post as of that time (older than its snapshot history, for example)."""


class Memory(Protocol):
    """What the watcher keeps in Redis for routing."""

    async def post(self, post_id: str) -> PostInfo | None: ...

    async def posts(self, post_ids: list[str]) -> dict[str, PostInfo | None]: ...

    async def reaction(self, kind: str, ident: str) -> dict[str, Any] | None: ...


class Documents(Protocol):
    """Posts in MongoDB."""

    async def post(self, post_id: str, at: Timestamp | None) -> dict[str, Any] | None:
        """The post (its author, visibility and hashtags at least) as of cluster time ``at``, or now when None.
        Raises :class:`SnapshotUnavailable` when it cannot be read as of ``at``."""
        ...

    async def posts_now(self, post_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        """Several posts as they are now, with one query (None: no such post)."""
        ...


class RedisMemory:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def post(self, post_id: str) -> PostInfo | None:
        raw = await self.redis.get(self.keys.post(post_id))
        return mapping.from_entry(_json(raw)) if raw else None

    async def posts(self, post_ids: list[str]) -> dict[str, PostInfo | None]:
        """Several posts' entries with one MGET."""
        raws = await self.redis.mget([self.keys.post(post_id) for post_id in post_ids])
        return {post_id: mapping.from_entry(_json(raw)) if raw else None
                for post_id, raw in zip(post_ids, raws, strict=True)}

    async def reaction(self, kind: str, ident: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(self.keys.index(kind), ident)
        entry = _json(raw) if raw else None
        return entry if isinstance(entry, dict) else None


class ReplayMemory:
    """For a replay from the oplog: what the watcher keeps in Redis (as it is now), under what the replay
    learnt of likes and comments from the changes it read. The delete of a like inserted within the replay
    is then routed by the entry the watcher had when it published it (the watcher removed it since)."""

    def __init__(self, base: Memory) -> None:
        self.base = base
        self.reactions: dict[tuple[str, str], dict[str, Any] | None] = {}

    async def post(self, post_id: str) -> PostInfo | None:
        return await self.base.post(post_id)

    async def posts(self, post_ids: list[str]) -> dict[str, PostInfo | None]:
        return await self.base.posts(post_ids)

    async def reaction(self, kind: str, ident: str) -> dict[str, Any] | None:
        if (kind, ident) in self.reactions:
            return self.reactions[(kind, ident)]
        return await self.base.reaction(kind, ident)

    def learn(self, mapped: Mapped) -> None:
        """What a change mapped in the replay set in the watcher's index of likes and comments."""
        if mapped.index_set is not None:
            kind, ident, entry = mapped.index_set
            self.reactions[(kind, ident)] = entry
        if mapped.index_del is not None:
            self.reactions[mapped.index_del] = None


def _json(raw: Any) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


class MongoDocuments:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], cfg: MappingConfig) -> None:
        self.db = db
        self.cfg = cfg

    async def post(self, post_id: str, at: Timestamp | None) -> dict[str, Any] | None:
        f = self.cfg.fields
        match = {"_id": id_value(post_id)}  # this id, of this type: never a post whose id has the same text
        projection = {f.author_id: 1, f.visibility: 1, f.hashtags: 1}
        if at is None:
            return await self.db[self.cfg.posts].find_one(match, projection)
        try:
            reply = await self.db.command({
                "aggregate": self.cfg.posts, "pipeline": [{"$match": match}, {"$limit": 1}, {"$project": projection}],
                "cursor": {}, "readConcern": {"level": "snapshot", "atClusterTime": at}})
        except OperationFailure as exc:
            raise SnapshotUnavailable(str(exc)) from exc
        batch = reply["cursor"]["firstBatch"]
        return dict(batch[0]) if batch else None

    async def posts_now(self, post_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        f = self.cfg.fields
        found: dict[str, dict[str, Any] | None] = dict.fromkeys(post_ids)
        cursor = self.db[self.cfg.posts].find({"_id": {"$in": [id_value(p) for p in post_ids]}},
                                              {f.author_id: 1, f.visibility: 1, f.hashtags: 1})
        async for doc in cursor:
            text = id_text(doc.get("_id"))
            if text in found:
                found[text] = doc
        return found


def just_before(ct: Timestamp) -> Timestamp:
    """The cluster time right before ``ct``: what a change at ``ct`` saw."""
    return Timestamp(ct.time, ct.inc - 1) if ct.inc > 0 else Timestamp(ct.time - 1, 0xFFFFFFFF)


class Router:
    """Maps changes with what is known of their posts (see the module's docstring)."""

    def __init__(self, cfg: MappingConfig, memory: Memory, documents: Documents, *, lookup_documents: bool,
                 tombstone_ms: int = 0, cache_size: int = CACHE_SIZE,
                 on_as_of_now: Callable[[], None] = lambda: None) -> None:
        self.cfg = cfg
        self.memory = memory
        self.documents = documents
        self.lookup_documents = lookup_documents  # update changes carry the document as it is now
        self.tombstone_ms = tombstone_ms
        self.cache_size = cache_size
        self.on_as_of_now = on_as_of_now
        self.cache: OrderedDict[str, PostInfo] = OrderedDict()
        # Until settle(): the post index entries read ahead (None: none) and written by the changes mapped, and
        # the like and comment index entries those changes wrote (None: removed)
        self.posts: dict[str, PostInfo | None] = {}
        self.reactions: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.now: dict[str, dict[str, Any] | None] = {}  # posts as they are now, read ahead for comment updates
        # the subjects of the changes read ahead, by the change's id() (with the change, so that the id is not
        # reused meanwhile)
        self.subjects: dict[int, tuple[dict[str, Any], mapping.Subject | None]] = {}

    def clear(self) -> None:
        """Forget the cache: call it whenever the stream may resume elsewhere than after the last change
        this router mapped (a new stream, another leader meanwhile)."""
        self.cache.clear()
        self.settle()

    def settle(self) -> None:
        """Everything mapped so far is published: Redis holds what it wrote to the indexes."""
        self.posts.clear()
        self.reactions.clear()
        self.now.clear()
        self.subjects.clear()

    async def prefetch(self, changes: list[dict[str, Any]], now: dict[str, dict[str, Any] | None] | None = None
                       ) -> None:
        """Read ahead, with one MGET, the post index entries that mapping ``changes`` may look up, and with one
        query the posts as they are now that comment updates may need (``now``: those :meth:`posts_now` read
        already)."""
        if now:
            self.now.update(now)
        wanted, now_wanted = [], []
        cfg, subjects = self.cfg, self.subjects
        for change in changes:
            sub = mapping.subject(change, cfg)
            subjects[id(change)] = (change, sub)
            ref = mapping.post_ref(change, cfg, None, sub)
            if ref is None:
                continue
            if ref[0] not in self.cache and ref[0] not in self.posts:
                wanted.append(ref[0])
            if self._as_of_now(change) and ref[0] not in self.now:
                now_wanted.append(ref[0])
        if wanted:
            self.posts.update(await self.memory.posts(list(dict.fromkeys(wanted))))
        if now_wanted:
            self.now.update(await self.documents.posts_now(list(dict.fromkeys(now_wanted))))

    async def posts_now(self, changes: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
        """The posts as they are now that the comment updates among ``changes`` need, with one query: to read
        with the changes, ahead of :meth:`prefetch` (after the changes were read, so as they are now for them)."""
        wanted = []
        for change in changes:
            if self._as_of_now(change):
                sub = mapping.subject(change, self.cfg)
                if sub is not None and sub.post_id is not None:
                    wanted.append(sub.post_id)
        return await self.documents.posts_now(list(dict.fromkeys(wanted))) if wanted else {}

    def _as_of_now(self, change: dict[str, Any]) -> bool:
        """Whether a change carries a document as it is now, whose post must be public now too (a comment's
        update read with updateLookup)."""
        return (self.lookup_documents and change.get("operationType") == "update"
                and (change.get("ns") or {}).get("coll") == self.cfg.comments
                and isinstance(change.get("fullDocument"), dict))

    def subject(self, change: dict[str, Any]) -> mapping.Subject | None:
        """``mapping.subject(change, cfg)``, worked out once for the changes read ahead."""
        known = self.subjects.get(id(change))
        return known[1] if known is not None and known[0] is change else mapping.subject(change, self.cfg)

    async def map(self, change: dict[str, Any], position: int) -> Mapped:
        cfg = self.cfg
        remembered = None
        sub = self.subject(change)
        if sub is not None and sub.doc is None and sub.id is not None and change.get("operationType") == "delete":
            if (sub.kind, sub.id) in self.reactions:
                remembered = self.reactions[(sub.kind, sub.id)]
            else:
                remembered = await self.memory.reaction(sub.kind, sub.id)
        ref = mapping.post_ref(change, cfg, remembered, sub)
        post: PostInfo | None = None
        learned = False
        if ref is not None:
            post, learned = await self._post(ref[0], change["clusterTime"], lookup=ref[1], tags=sub is None)
        routing = post
        if ref is not None and self._now_too(change, sub, post):
            # the comment as it is now goes public only if its post is public now too
            now = self.now[ref[0]] if ref[0] in self.now else await self.documents.post(ref[0], None)
            routing = mapping.combine(post, mapping.post_info(now, cfg))
        return self._mapped(change, position, sub, remembered, ref, post, learned, routing)

    def map_known(self, change: dict[str, Any], position: int, at: int) -> Mapped | None:
        """:meth:`map` without a coroutine, when everything it needs is at hand (in the cache, read ahead, or
        written by the changes mapped since); None when it would need Redis or MongoDB: then call :meth:`map`.
        ``at``: the change's cluster time (``seconds << 32 | increment``)."""
        sub = self.subject(change)
        if sub is not None and sub.doc is None and sub.id is not None and change.get("operationType") == "delete":
            return None  # routed by its like's or comment's index entry
        ref = mapping.post_ref(change, self.cfg, None, sub)
        post: PostInfo | None = None
        learned = False
        if ref is not None:
            held, entry = self._held(ref[0])
            known = self._as_of(entry, at, lookup=ref[1], tags=sub is None) if held else None
            if known is None:
                return None
            post, learned = known
        routing = post
        if ref is not None and self._now_too(change, sub, post):
            if ref[0] not in self.now:
                return None
            routing = mapping.combine(post, mapping.post_info(self.now[ref[0]], self.cfg))
        return self._mapped(change, position, sub, None, ref, post, learned, routing, at)

    def _now_too(self, change: dict[str, Any], sub: mapping.Subject | None, post: PostInfo | None) -> bool:
        """Whether a change must be routed by its post as it is now too: a comment's update that carries the
        comment as it is now, on a post that was public."""
        return sub is not None and sub.kind == "comment" and post is not None and post.public is True \
            and self._as_of_now(change)

    def _mapped(self, change: dict[str, Any], position: int, sub: mapping.Subject | None,
                remembered: dict[str, Any] | None, ref: tuple[str, bool] | None, post: PostInfo | None,
                learned: bool, routing: PostInfo | None, at: int | None = None) -> Mapped:
        """Map a change with what was found, and keep what its mapping teaches until :meth:`settle`."""
        mapped = mapping.map_change(change, position, self.cfg, routing, remembered, sub, at)
        if mapped.post_info is None and learned and ref is not None and post is not None:
            mapped.post_info = (ref[0], post)
        if mapped.post_info is not None:
            self._cache(*mapped.post_info)
            self.posts[mapped.post_info[0]] = mapped.post_info[1]
        if mapped.index_set is not None:
            kind, ident, entry = mapped.index_set
            self.reactions[(kind, ident)] = entry
        if mapped.index_del is not None:
            self.reactions[mapped.index_del] = None
        return mapped

    def writes(self, mapped: Mapped) -> list[tuple[str, bytes | None, int]]:
        """The post index writes to publish with a change: (post id, entry or None to forget, ttl in ms)."""
        if mapped.post_info is None:
            return []
        post_id, info = mapped.post_info
        if info.deleted and self.tombstone_ms <= 0:
            return [(post_id, None, 0)]
        return [(post_id, orjson.dumps(mapping.post_entry(info)), self.tombstone_ms if info.deleted else 0)]

    def _held(self, post_id: str) -> tuple[bool, PostInfo | None]:
        """A post's index entry when it is at hand, in the cache or read ahead: (True, entry or None for none),
        or (False, None) when only Redis can tell."""
        entry = self.cache.get(post_id)
        if entry is not None:
            self.cache.move_to_end(post_id)
            return True, entry
        if post_id not in self.posts:
            return False, None
        entry = self.posts[post_id]
        if entry is not None:
            self._cache(post_id, entry)
        return True, entry

    @staticmethod
    def _as_of(entry: PostInfo | None, at: int, *, lookup: bool, tags: bool) -> tuple[PostInfo | None, bool] | None:
        """What a post's index entry tells of it as of the change at cluster time ``at`` (see :meth:`_post`);
        None when MongoDB must be asked."""
        if entry is not None and entry.since <= at:  # entry.as_of(at)
            if lookup and entry.since < at and entry.author_id is None and entry.public is None:
                return None  # it knows nothing past its own time (see mapping.blind_entry): ask MongoDB
            if not (lookup and tags and entry.public is True and entry.tags is None):
                return entry, False
        elif not lookup:
            return None, False
        return None

    async def _post(self, post_id: str, ct: Timestamp, *, lookup: bool, tags: bool = False
                    ) -> tuple[PostInfo | None, bool]:
        """What is known of a post as of the change at ``ct`` (its hashtags too when ``tags``: a change of
        the post itself), and whether it was learnt from MongoDB (and should be remembered)."""
        held, entry = self._held(post_id)
        if not held:
            entry = await self.memory.post(post_id)
            if entry is not None:
                self._cache(post_id, entry)
        at = ev.time_part(ct.time, ct.inc)
        known = self._as_of(entry, at, lookup=lookup, tags=tags)
        if known is not None:
            return known
        # the entry tells nothing as of this change, or lacks the hashtags a change of the post itself needs
        untagged = entry is not None and entry.as_of(at) is not None
        before = just_before(ct)
        try:
            info = mapping.post_info(await self.documents.post(post_id, before), self.cfg,
                                     since=ev.time_part(before.time, before.inc))
            if untagged and info is None:
                return entry, False
            # remembered unless the index knows of a later state (an entry newer than this change)
            return info, info is not None and (entry is None or untagged)
        except SnapshotUnavailable:
            if untagged:
                return entry, False
            self.on_as_of_now()
        now = mapping.post_info(await self.documents.post(post_id, None), self.cfg)
        author = now.author_id if now is not None else entry.author_id if entry is not None else None
        return (PostInfo(author, None), False) if author is not None else (None, False)

    def _cache(self, post_id: str, info: PostInfo) -> None:
        self.cache[post_id] = info
        self.cache.move_to_end(post_id)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
