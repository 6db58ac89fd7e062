"""From a change document to typed events with their rooms: a pure function, no I/O.

The watcher calls :func:`subject` to learn which post a like or comment belongs to and :func:`post_ref` to
learn which post's routing a change needs, looks that post up (see watchers/routing.py), then calls
:func:`map_change` with what it found. Everything else comes from the change itself and the configuration.

Routing (DESIGN §3, docs/events.md):

* a new public post goes to ``public``, ``author:{authorId}`` and ``hashtag:{tag}`` for each tag (its feed
  rooms);
* updates and deletes of a public post go to ``post:{postId}`` and to its feed rooms (as they were before
  the change and after it, for an update that changes the author or the hashtags); an update that makes a
  public post private is announced there as a ``post:deleted`` with its id only;
* the likes and comments of a post go to ``post:{postId}``;
* ``notification:new`` goes to ``user:{authorId}`` of the post when someone else likes or comments;
* a post that is not public, and its likes and comments, go only to ``user:{authorId}``.

Routing fails closed. A post is public only when its visibility is one of the public values (or the field
is absent and ``missing_visibility_public`` says so): ``null``, ``""`` or any other value is private. What
refers to a post whose visibility is unknown (no index entry, no document, knowledge only from after the
change, or two sources that disagree) goes to ``user:{authorId}`` when the author is known, and otherwise
nowhere, with a skip reason; never to a public room.

Every id (in payloads, room names, the post index, like counters) is an id's text (realtime/ids.py): an
ObjectId and the string of its digits, or 5 and "5", are different posts with different rooms. A text read
back from the index is checked, never written again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from realtime import events as ev
from realtime.events import Counter, Event
from realtime.ids import checked, id_text, is_id_text
from watchers.config import MappingConfig
from watchers.payload import bound, json_safe

# Why a change produced no events (each is a metric label).
SKIP_NO_POST = "no_post_id"  # a like or comment without a usable postId
SKIP_UNROUTABLE_DELETE = "unroutable_delete"  # a delete with no pre-image and no index entry
SKIP_UNKNOWN_POST = "unknown_post"  # refers to a post of unknown visibility and unknown author
SKIP_NO_AUTHOR = "no_author"  # a post that is not public (or of unknown visibility) whose author is unusable
SKIP_BAD_ID = "bad_id"  # an _id or user id that cannot appear in a room name
SKIP_BAD_DOCUMENT = "bad_document"
SKIP_NOT_WATCHED = "not_watched"
SKIP_TOO_LARGE = "too_large"  # MongoDB could not send its documents (over 16 MB): a reset marker takes its place


class PostInfo(NamedTuple):  # a tuple, not a frozen dataclass: one is made for most changes, and that is cheaper
    """What routing knows of a post.

    ``public`` is None when the visibility is unknown (then only the author may be told); ``author_id`` is
    None when the author is unknown or cannot be a room. ``since`` is the cluster time (``seconds << 32 |
    increment``) from which this is known to hold, 0 for always: it says nothing of changes before it.
    ``deleted`` marks a tombstone: the routing the post had when it was deleted. ``tags`` are the post's
    hashtags as rooms name them (its ``hashtag:`` rooms while it is public); None when unknown."""

    author_id: str | None
    public: bool | None
    since: int = 0
    deleted: bool = False
    tags: tuple[str, ...] | None = ()

    def as_of(self, at: int) -> PostInfo | None:
        """This knowledge for a change at cluster time ``at``: None when it is only known from later."""
        return self if self.since <= at else None


class Subject(NamedTuple):
    """What a like or comment change refers to: its own id, its post, its actor."""

    kind: str  # "like" or "comment"
    id: str | None
    post_id: str | None
    user_id: str | None
    doc: dict[str, Any] | None  # the document as far as known (post-image, pre-image or index entry)


@dataclass(slots=True)
class Mapped:
    events: list[Event] = field(default_factory=list)
    skipped: str | None = None  # a SKIP_* reason when nothing could be published
    post_info: tuple[str, PostInfo] | None = None  # what the post index should now remember of a post
    index_set: tuple[str, str, dict[str, Any]] | None = None  # (kind, id, {postId, userId}) to remember
    index_del: tuple[str, str] | None = None  # (kind, id) to forget


# A change event MongoDB can send is at most 16 MB with its documents (16 MiB + 16 KiB in all): past this, their
# share, the stream sends the change's place alone (stream_pipeline's places); what else an event holds is small.
EVENT_DOCUMENTS_MAX = 16 * 1024 * 1024 - 64 * 1024
TOO_LARGE = "realtimeTooLarge"  # the field that marks a change sent without its documents


def _size(field: str) -> dict[str, Any]:
    return {"$ifNull": [{"$bsonSize": field}, 0]}


def stream_pipeline(cfg: MappingConfig, *, places: bool = False) -> list[dict[str, Any]]:
    """The change stream's ``$match``. Event ids count changes among those this pipeline lets through, so
    the watcher and every replay from the oplog must use exactly this one.

    ``places``: then also send the place alone (``_id``, cluster time, namespace, document key, and
    ``realtimeTooLarge: true``) of a change whose documents MongoDB could not send in one event, where the stream
    would otherwise stop for good (``BSONObjectTooLarge``). It lets through the same changes (ids are the same),
    but costs a server more per event: the watcher adds it only to go past such a change."""
    match = [{"$match": {"$or": [{"ns.coll": {"$in": [cfg.posts, cfg.likes, cfg.comments]}},
                                 {"operationType": {"$in": ["dropDatabase", "invalidate"]}}]}}]
    if not places:
        return match
    documents = {"$add": [_size("$fullDocument"), _size("$fullDocumentBeforeChange"), _size("$updateDescription")]}
    place = {name: f"${name}" for name in ("_id", "operationType", "clusterTime", "wallTime", "ns", "documentKey",
                                            "lsid", "txnNumber")}
    return [*match, {"$replaceWith": {"$cond": [{"$gt": [documents, EVENT_DOCUMENTS_MAX]},
                                                {**place, TOO_LARGE: True}, "$$ROOT"]}}]


def _key(change: dict[str, Any]) -> Any:
    key = change.get("documentKey")
    return key.get("_id") if isinstance(key, dict) else None


def _coll(change: dict[str, Any]) -> str | None:
    ns = change.get("ns")
    coll = ns.get("coll") if isinstance(ns, dict) else None
    return coll if isinstance(coll, str) else None


def _doc(change: dict[str, Any]) -> dict[str, Any] | None:
    doc = change.get("fullDocument")
    return doc if isinstance(doc, dict) else None


def _before(change: dict[str, Any]) -> dict[str, Any] | None:
    doc = change.get("fullDocumentBeforeChange")
    return doc if isinstance(doc, dict) else None


def visibility_public(value: Any, cfg: MappingConfig) -> bool:
    """Whether a visibility value that is present makes a post public: only one of the public values does;
    ``None``, ``""``, other strings and other types do not."""
    return isinstance(value, str) and value != "" and value in cfg.public_values


def is_public(doc: dict[str, Any] | None, cfg: MappingConfig) -> bool:
    """Whether a post document is public. No document: not public (nothing proves it is)."""
    if not isinstance(doc, dict):
        return False
    name = cfg.fields.visibility
    if name not in doc:
        return cfg.missing_visibility_public
    return visibility_public(doc[name], cfg)


def public_query(cfg: MappingConfig) -> dict[str, Any]:
    """A MongoDB filter for the posts :func:`is_public` calls public (an array holding a public value
    matches it too: check the documents it returns with :func:`is_public`)."""
    name = cfg.fields.visibility
    clauses: list[dict[str, Any]] = [{name: {"$in": [v for v in cfg.public_values if v]}}]
    if cfg.missing_visibility_public:
        clauses.append({name: {"$exists": False}})
    return {"$or": clauses}


MAX_TAGS = 100  # hashtags of a post that get a room


def tags_of(value: Any) -> tuple[str, ...]:
    """The hashtag rooms' names for a hashtags field's value: normalised, valid, each once, the first 100
    entries only; none unless it is an array."""
    if not isinstance(value, list) or not value:
        return ()
    return tuple(dict.fromkeys([t for t in map(ev.normalise_tag, value[:MAX_TAGS]) if t]))


def post_info(doc: dict[str, Any] | None, cfg: MappingConfig, since: int = 0) -> PostInfo | None:
    if not isinstance(doc, dict):
        return None
    return PostInfo(id_text(doc.get(cfg.fields.author_id)), is_public(doc, cfg), since,
                    tags=tags_of(doc.get(cfg.fields.hashtags)))


def combine(a: PostInfo | None, b: PostInfo | None) -> PostInfo | None:
    """What two sources (say, the post as of a change and as it is now) tell together, failing closed:
    public only when both say public, private when either says private, otherwise unknown; the author
    they agree on (or the one only one of them knows). None only when neither knows anything."""
    if a is None or b is None:
        known = a if b is None else b
        if known is None:
            return None
        return PostInfo(known.author_id, False if known.public is False else None, tags=known.tags)
    if a.public is False or b.public is False:
        public: bool | None = False
    else:
        public = True if a.public and b.public else None
    if a.author_id is None or b.author_id is None or a.author_id == b.author_id:
        author = a.author_id if a.author_id is not None else b.author_id
    else:
        author = None
    return PostInfo(author, public, tags=a.tags)


def post_entry(info: PostInfo) -> dict[str, Any]:
    """A post index entry (stored as JSON in Redis)."""
    return {"authorId": info.author_id, "public": info.public, "since": info.since, "deleted": info.deleted,
            "tags": None if info.tags is None else list(info.tags)}


def blind_entry(at: int) -> PostInfo:
    """What is known of a post from a change of it at cluster time ``at`` whose documents did not come (over MongoDB's
    16 MB): nothing, for the changes at that time (a transaction's: a read of MongoDB just before it would show the
    post as it was before the transaction; routing then fails closed); after it, MongoDB is asked again."""
    return PostInfo(None, None, at, False, None)


def from_entry(entry: Any) -> PostInfo | None:
    """A post index entry read back; None when it is not one (then nothing is known). An entry written by an
    earlier release has no ``tags``: they are unknown."""
    if not isinstance(entry, dict):
        return None
    author, public, since, deleted, tags = (entry.get(k) for k in ("authorId", "public", "since", "deleted", "tags"))
    if (author is not None and not is_id_text(author)) or not (public is None or isinstance(public, bool)) \
            or not isinstance(since, int) or isinstance(since, bool) or since < 0 or not isinstance(deleted, bool) \
            or not (tags is None or (isinstance(tags, list) and tags_of(tags) == tuple(tags))):
        return None
    return PostInfo(author, public, since, deleted, None if tags is None else tuple(tags))


def post_ref(change: dict[str, Any], cfg: MappingConfig, remembered: dict[str, Any] | None = None,
             sub: Subject | None = None) -> tuple[str, bool] | None:
    """Which post's routing :func:`map_change` wants for this change, and whether it must look as far as
    MongoDB for it (False: what the post index holds is enough). None: no post to look up."""
    op = change.get("operationType")
    if op not in ("insert", "update", "replace", "delete"):
        return None
    if sub is not None and remembered is None:  # a like's or a comment's, worked out already
        return None if sub.post_id is None else (sub.post_id, True)
    coll = _coll(change)
    if coll == cfg.posts:
        post_id = id_text(_key(change))
        if post_id is None or op == "insert":
            return None
        # an update, replace or delete is routed by the post as it was before it (where it was public, for a
        # replace too): the pre-image, or what is known
        return post_id, _before(change) is None
    if sub is None or remembered is not None:
        sub = subject(change, cfg, remembered)
    if sub is None or sub.post_id is None:
        return None
    return sub.post_id, True


def subject(change: dict[str, Any], cfg: MappingConfig, remembered: dict[str, Any] | None = None) -> Subject | None:
    """For a change on likes or comments: the ids it refers to. ``remembered`` is the index entry the
    watcher kept for a deleted document when the change carries no pre-image."""
    ns = change.get("ns")  # what _coll, _doc, _before and _key read, read once: this runs for most changes
    coll = ns.get("coll") if isinstance(ns, dict) else None
    if coll == cfg.likes:
        kind = "like"
    elif coll == cfg.comments:
        kind = "comment"
    else:
        return None
    doc = change.get("fullDocument")
    if not isinstance(doc, dict) or not doc:
        doc = change.get("fullDocumentBeforeChange")
        if not isinstance(doc, dict):
            doc = None
    key = change.get("documentKey")
    ident = id_text(key.get("_id") if isinstance(key, dict) else None)
    if doc is None and isinstance(remembered, dict):
        # An index entry is stored under fixed names ("postId", "userId"; see _map_reaction), whatever the
        # configured field names are, and holds ids' texts: read back as they are, never written again.
        return Subject(kind, ident, checked(remembered.get("postId")), checked(remembered.get("userId")),
                       remembered)
    f = cfg.fields
    if doc is None:
        return Subject(kind, ident, None, None, None)
    user = doc.get(f.user_id) if kind == "like" else doc.get(f.user_id, doc.get(f.author_id))
    return Subject(kind, ident, id_text(doc.get(f.post_id)) if doc else None, id_text(user), doc)


def may_reach(change: dict[str, Any], cfg: MappingConfig, room: str) -> bool:
    """Whether an event of this change could go to ``room``, whatever its post's routing was: what a replay
    that cannot place the change as it was published must assume. A post's change may reach any room but
    another post's; a like's or comment's, its post's room (any post's when the post is unknown) and any
    user's."""
    coll = _coll(change)
    if coll == cfg.posts:
        post_id = id_text(_key(change))
        return post_id is not None and (not room.startswith("post:") or room == ev.post_room(post_id))
    if coll not in (cfg.likes, cfg.comments):
        return False
    if room.startswith("user:"):
        return True
    sub = subject(change, cfg)
    if sub is None or sub.post_id is None:
        return room.startswith("post:")
    return room == ev.post_room(sub.post_id)


def images_missing(change: dict[str, Any], cfg: MappingConfig) -> bool:
    """Whether a change lacks an image that a stream reading pre- and post-images (``whenAvailable``) gets when
    the collection keeps them: the document before an update, replace or delete, and after an update."""
    if _coll(change) not in (cfg.posts, cfg.likes, cfg.comments):
        return False
    op = change.get("operationType")
    if op not in ("update", "replace", "delete"):
        return False
    return _before(change) is None or (op == "update" and _doc(change) is None)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)  # for a naive wall time (UTC, as PyMongo decodes it)
_MS = dt.timedelta(milliseconds=1)


def _ts(change: dict[str, Any]) -> int:
    wall = change.get("wallTime")
    if isinstance(wall, dt.datetime):
        # Integer arithmetic: int(wall.timestamp() * 1000) is one millisecond short for some times.
        return (wall - (_NAIVE_EPOCH if wall.tzinfo is None else _EPOCH)) // _MS
    ct = change.get("clusterTime")
    return int(getattr(ct, "time", 0)) * 1000


_VALID_ROOMS: dict[str, bool] = {}  # the rooms' names seen last, and whether each is valid


def _valid_room(name: str) -> bool:
    valid = _VALID_ROOMS.get(name)
    if valid is None:
        if len(_VALID_ROOMS) >= 100_000:
            _VALID_ROOMS.clear()
        valid = _VALID_ROOMS[name] = ev.valid_room(name)
    return valid


class _Builder:
    __slots__ = ("at", "head", "out", "position", "ts")

    def __init__(self, change: dict[str, Any], position: int, at: int | None = None) -> None:
        if at is None:
            ct = change["clusterTime"]
            at = ev.time_part(int(ct.time), int(ct.inc))
        self.at = at
        self.position = position
        self.ts = _ts(change)
        self.out: list[Event] = []
        self.head = ""  # "<time part>-", the events' ids' first half, written at the first event

    def add(self, type_: str, rooms: list[str], data: dict[str, Any], counter: Counter | None = None) -> None:
        if len(rooms) == 1:  # the commonest
            room = rooms[0]
            unique: tuple[str, ...] = (room,) if _VALID_ROOMS.get(room) or _valid_room(room) else ()
        else:
            unique = tuple(dict.fromkeys([r for r in rooms if _valid_room(r)]))
        if not unique:
            return
        k = len(self.out)
        if k >= ev.EVENTS_PER_CHANGE:
            raise ValueError(f"a change has at most {ev.EVENTS_PER_CHANGE} events")
        # ev.make_id(seconds, increment, position, k), with the time part written once per change
        if not self.head:
            self.head = f"{self.at}-"
        event_id = self.head + str(self.position * ev.EVENTS_PER_CHANGE + k)
        self.out.append(Event(event_id, type_, unique, data, self.ts, counter))


def _author_only(info: PostInfo | None) -> tuple[list[str], str | None]:
    """The rooms of what belongs to a post that is not public, or whose visibility is unknown: its
    author's, or none (with the reason) when the author is unknown or unusable."""
    if info is not None and info.author_id is not None:
        return [ev.user_room(info.author_id)], None
    if info is None or info.public is None:
        return [], SKIP_UNKNOWN_POST
    return [], SKIP_NO_AUTHOR


def _post_rooms(info: PostInfo | None, post_id: str) -> tuple[list[str], str | None]:
    if info is not None and info.public is True:
        return [ev.post_room(post_id)], None
    return _author_only(info)


def _feed_rooms(infos: list[PostInfo]) -> list[str]:
    """The rooms a public post's ``post:created`` went to (``public``, ``author:``, ``hashtag:``), for each
    of the routings in ``infos`` (all public: the post before and after a change)."""
    rooms = [ev.PUBLIC]
    rooms += [ev.author_room(i.author_id) for i in infos if i.author_id is not None]
    rooms += [ev.hashtag_room(t) for i in infos for t in i.tags or ()]
    return rooms


def _public_post_rooms(post_id: str, *infos: PostInfo | None) -> list[str]:
    """A public post's own room and its feed rooms, for the routings in ``infos`` that are public (the
    rooms of one that is not would tell what the post was while private: its old tags), each once: an update
    that leaves the author and the hashtags as they were (most) names them once."""
    public: list[PostInfo] = []
    for i in infos:
        if i is not None and i.public is True and not any((i.author_id, i.tags) == (p.author_id, p.tags)
                                                             for p in public):
            public.append(i)
    return [ev.post_room(post_id), *_feed_rooms(public)]


def map_change(change: dict[str, Any], position: int, cfg: MappingConfig,
               post: PostInfo | None = None, remembered: dict[str, Any] | None = None,
               sub: Subject | None = None, at: int | None = None) -> Mapped:
    """Map one change (insert, update, replace or delete on a watched collection) to its events.

    ``position`` is the change's index among the changes sharing its ``clusterTime``. ``post`` is what is
    known of the post a like or comment belongs to (or of the post itself, for an update, replace or
    delete), as of the change; None when nothing is. Knowledge that only holds from after the change is
    ignored. ``sub``: the change's :func:`subject` without ``remembered``, and ``at``: its cluster time
    (``seconds << 32 | increment``), when the caller has them already.
    Raises nothing for bad documents: the result says what was skipped.
    """
    op = change.get("operationType")
    coll = _coll(change)
    if op not in ("insert", "update", "replace", "delete") or coll not in (cfg.posts, cfg.likes, cfg.comments):
        return Mapped(skipped=SKIP_NOT_WATCHED)
    if change.get(TOO_LARGE) is True:  # its documents did not come (see stream_pipeline)
        return Mapped(skipped=SKIP_TOO_LARGE)
    builder = _Builder(change, position, at)
    known = post if post is not None and post.since <= builder.at else None  # post.as_of(builder.at)
    if coll == cfg.posts:
        mapped = _map_post(change, op, builder, cfg, known)
    else:
        if sub is None or remembered is not None:
            sub = subject(change, cfg, remembered)
        assert sub is not None
        mapped = _map_reaction(op, sub, builder, cfg, known)
    mapped.events = builder.out
    return mapped


def _post_data(doc: dict[str, Any] | None, post_id: str, author: str | None, cfg: MappingConfig,
               changed: list[str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"id": post_id, "authorId": author}
    _add_fields(data, doc, cfg.post_fields, cfg)
    if changed is None:
        return bound(data, cfg.max_payload, keep=("id", "authorId"))
    data["changed"] = changed  # inside the bound: the whole payload must fit max_payload
    return bound(data, cfg.max_payload, keep=("id", "authorId", "changed"))


def _add_fields(data: dict[str, Any], doc: dict[str, Any] | None, names: tuple[str, ...], cfg: MappingConfig
                ) -> None:
    """Add a document's allow-listed fields to a payload, but those named like one of the ids it already
    holds (``id``, ``authorId``, ``postId``, ``userId``): a field's value (an ObjectId's digits, any string)
    is not an id's text, and would name another post or user."""
    if not isinstance(doc, dict):
        return
    max_string, max_depth = cfg.max_string, cfg.max_depth
    for name in names:  # pick(), without the copy
        if name in doc and name not in data:
            value = doc[name]
            if type(value) is str:  # json_safe's first case, without the call
                data[name] = value if len(value) <= max_string else value[:max_string]
            else:
                data[name] = json_safe(value, max_string=max_string, max_depth=max_depth)


def _same(a: Any, b: Any) -> bool:
    """Whether two BSON values are the same: equal, of the same types, with fields in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _same_field(old: dict[str, Any], new: dict[str, Any], name: str) -> bool:
    """Whether a field is the same in two versions of a document (absent from both counts as the same)."""
    if (name in old) != (name in new):
        return False
    return name not in old or _same(old[name], new[name])


def _since(known: PostInfo | None, info: PostInfo, at: int) -> int:
    """Since when ``info`` holds: as long as what was known, when the change left the routing as it was."""
    if known is not None and (known.author_id, known.public, known.tags) == (info.author_id, info.public, info.tags):
        return known.since
    return at


def _learned(post_id: str, known: PostInfo | None, info: PostInfo) -> tuple[str, PostInfo] | None:
    """What the post index should remember after a change (nothing when it knows it already)."""
    return None if info == known else (post_id, info)


def _after_update(base: PostInfo | None, desc: dict[str, Any], tops: set[str], cfg: MappingConfig
                  ) -> tuple[PostInfo, bool]:
    """A post's routing right after an update, from its routing before (None: unknown) and what the
    update did; and whether that is exact (the routing before was known, or the update set both). Its tags
    are unknown (None) when the update changed them below the top level (``hashtags.3``)."""
    f = cfg.fields
    updated = desc.get("updatedFields") or {}
    removed = desc.get("removedFields") or []
    author = base.author_id if base is not None else None
    public = base.public if base is not None else None
    tags = base.tags if base is not None else None
    if f.hashtags in updated:
        tags = tags_of(updated[f.hashtags])
    elif f.hashtags in removed:
        tags = ()
    elif f.hashtags in tops:
        tags = None
    if f.visibility in updated:
        public = visibility_public(updated[f.visibility], cfg)
    elif f.visibility in removed:
        public = cfg.missing_visibility_public
    elif f.visibility in tops:  # changed below the top level: a subdocument or an array, not a public value
        public = False
    if f.author_id in updated:
        author = id_text(updated[f.author_id])
    elif f.author_id in tops:  # removed, or changed below the top level: no usable author
        author = None
    exact = (base is not None and base.public is not None) or (f.visibility in tops and f.author_id in tops)
    return PostInfo(author, public, tags=tags), exact


def _map_post(change: dict[str, Any], op: str, b: _Builder, cfg: MappingConfig, known: PostInfo | None) -> Mapped:
    post_id = id_text(_key(change))
    if post_id is None:
        return Mapped(skipped=SKIP_BAD_ID)
    doc = _doc(change)
    if op == "insert":
        if doc is None:  # an insert always carries its document
            return Mapped(skipped=SKIP_BAD_DOCUMENT)
        info = post_info(doc, cfg, b.at)
        assert info is not None
        data = _post_data(doc, post_id, info.author_id, cfg)
        reason = None
        if info.public:
            rooms = _feed_rooms([info])
        else:
            rooms, reason = _author_only(info)
        b.add(ev.POST_CREATED, rooms, data)
        return Mapped(skipped=reason, post_info=(post_id, info))
    # an update, replace or delete: routed as the post was right before it (its pre-image, or what was
    # known of it) and, but for a delete, as it is right after it
    old = _before(change)
    before = post_info(old, cfg)
    prior = before if before is not None else known
    if op == "delete":
        if prior is not None and prior.public is True:
            rooms, reason = _public_post_rooms(post_id, prior), None
        else:
            rooms, reason = _author_only(prior)
        b.add(ev.POST_DELETED, rooms, {"id": post_id})
        if prior is None:
            return Mapped(skipped=reason)
        tomb = PostInfo(prior.author_id, prior.public, _since(known, prior, b.at), deleted=True, tags=prior.tags)
        return Mapped(skipped=reason, post_info=(post_id, tomb))
    if op == "replace":
        if doc is None:  # a replace always carries the new document
            return Mapped(skipped=SKIP_BAD_DOCUMENT)
        new = post_info(doc, cfg)
        assert new is not None
        info = PostInfo(new.author_id, new.public, _since(known, new, b.at), tags=new.tags)
        if old is None or before is None:  # without the post before it, any allow-listed field may have changed
            changed = list(cfg.post_fields)
        else:
            changed = [f for f in cfg.post_fields if not _same_field(old, doc, f)]
            if not changed and (before.author_id, before.public) == (new.author_id, new.public):
                return Mapped(post_info=_learned(post_id, known, info))
        data = _post_data(doc, post_id, info.author_id, cfg, changed)
        reason = _published_update(b, post_id, prior, info, info, data)
        return Mapped(skipped=reason, post_info=_learned(post_id, known, info))
    # an update: its routing is the post's before it plus what it set. The document it carries
    # (fullDocument) may be the post as it is now (updateLookup), not as of this change: its content goes to
    # a public room only if it is public too.
    desc = change.get("updateDescription") or {}
    paths = list((desc.get("updatedFields") or {}).keys()) + list(desc.get("removedFields") or [])
    paths += [t.get("field", "") for t in desc.get("truncatedArrays") or [] if isinstance(t, dict)]
    tops = {p.split(".", 1)[0] for p in paths if isinstance(p, str)}
    changed = [f for f in cfg.post_fields if f in tops]
    routing_changed = bool(tops & {cfg.fields.visibility, cfg.fields.author_id})
    after, exact = _after_update(prior, desc, tops, cfg)
    after = PostInfo(after.author_id, after.public, _since(known, after, b.at), tags=after.tags)
    learned = _learned(post_id, known, after) if exact else None
    if not changed and not routing_changed:
        return Mapped(post_info=learned)
    now = post_info(doc, cfg)
    route = after if now is None else combine(after, now) or after
    if after.tags is None and now is not None:  # hashtags changed below the top level: the document tells
        route = PostInfo(route.author_id, route.public, tags=now.tags)
    if doc is None:  # no post-image: what the update set is all that is known of the content
        updated = desc.get("updatedFields") or {}
        doc = {k: v for k, v in updated.items() if k in cfg.post_fields}
    data = _post_data(doc, post_id, route.author_id, cfg, changed)
    reason = _published_update(b, post_id, prior, after, route, data)
    return Mapped(skipped=reason, post_info=learned)


def _published_update(b: _Builder, post_id: str, prior: PostInfo | None, after: PostInfo, route: PostInfo,
                      data: dict[str, Any]) -> str | None:
    """Add the events of a post's update or replace: ``post:updated`` with ``data``, to the post's room and
    its feed rooms (before and after) when ``route`` (``after``, and the document the change carries) is
    public, to its author alone otherwise; and a ``post:deleted`` with its id only to the rooms where the
    post was public before the change, when it is not public after it. Returns the skip reason when the
    update reached no room."""
    if route.public is True:
        b.add(ev.POST_UPDATED, _public_post_rooms(post_id, prior, route), data)
        return None
    rooms, reason = _author_only(route)
    b.add(ev.POST_UPDATED, rooms, data)
    if prior is not None and prior.public is True and after.public is not True:
        b.add(ev.POST_DELETED, _public_post_rooms(post_id, prior), {"id": post_id})
        return None
    return reason


def _map_reaction(op: str, sub: Subject, b: _Builder, cfg: MappingConfig, post: PostInfo | None) -> Mapped:
    kind, ident, post_id, user_id, doc = sub  # read once: a named tuple's fields are dearer to read
    if ident is None:
        return Mapped(skipped=SKIP_BAD_ID)
    forget = (kind, ident) if op == "delete" else None
    if doc is None:
        return Mapped(skipped=SKIP_UNROUTABLE_DELETE if op == "delete" else SKIP_BAD_DOCUMENT, index_del=forget)
    if post_id is None:
        return Mapped(skipped=SKIP_NO_POST, index_del=forget)
    if kind == "like" and op not in ("insert", "delete"):
        return Mapped(skipped=SKIP_BAD_DOCUMENT)  # likes are inserted and deleted, not edited
    remember = None if op == "delete" else (kind, ident, {"postId": post_id, "userId": user_id})
    rooms, reason = _post_rooms(post, post_id)
    author = post.author_id if post is not None else None
    notify = author is not None and user_id is not None and user_id != author
    if kind == "like":
        data = {"likes": 0, "id": ident, "postId": post_id, "userId": user_id}
        if op == "insert":
            b.add(ev.POST_LIKED, rooms, data, Counter(post_id, +1))
            if notify and author and rooms:
                b.add(ev.NOTIFICATION_NEW, [ev.user_room(author)],
                      {"kind": "like", "postId": post_id, "fromUserId": user_id, "likeId": ident})
        else:
            b.add(ev.POST_UNLIKED, rooms, data, Counter(post_id, -1))
        return Mapped(skipped=reason, index_set=remember, index_del=forget)
    data = {"id": ident, "postId": post_id, "userId": user_id}
    if op == "delete":
        b.add(ev.COMMENT_DELETED, rooms, data)
        return Mapped(skipped=reason, index_del=forget)
    _add_fields(data, doc, cfg.comment_fields, cfg)
    data = bound(data, cfg.max_payload, keep=("id", "postId", "userId"))
    if op == "insert":
        b.add(ev.COMMENT_ADDED, rooms, data)
        if notify and author and rooms:
            b.add(ev.NOTIFICATION_NEW, [ev.user_room(author)],
                  {"kind": "comment", "postId": post_id, "fromUserId": user_id, "commentId": ident})
    else:
        b.add(ev.COMMENT_UPDATED, rooms, data)
    return Mapped(skipped=reason, index_set=remember)
