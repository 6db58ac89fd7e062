"""From a change document to typed events with their rooms: a pure function, no I/O.

The watcher calls :func:`subject` to learn which post a like or comment belongs to (so it can look up
that post's author and visibility), then :func:`map_change` with what it found. Everything else comes
from the change itself and the configuration.

Routing (DESIGN §3):

* a new public post goes to ``public``, ``author:{authorId}`` and ``hashtag:{tag}`` for each tag;
* updates and deletes of a post, and the likes and comments of a post, go to ``post:{postId}``;
* ``notification:new`` goes to ``user:{authorId}`` of the post when someone else likes or comments;
* a post that is not public, and its likes and comments, go only to ``user:{authorId}``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from realtime import events as ev
from realtime.events import Counter, Event
from watchers.config import MappingConfig
from watchers.payload import bound, pick

# Why a change produced no events (each is a metric label).
SKIP_NO_POST = "no_post_id"  # a like or comment without a usable postId
SKIP_UNROUTABLE_DELETE = "unroutable_delete"  # a delete with no pre-image and no index entry
SKIP_BAD_ID = "bad_id"  # an _id or user id that cannot appear in a room name
SKIP_BAD_DOCUMENT = "bad_document"
SKIP_NOT_WATCHED = "not_watched"


@dataclass(frozen=True)
class PostInfo:
    """What routing needs to know about a post."""

    author_id: str | None
    public: bool


@dataclass(frozen=True)
class Subject:
    """What a like or comment change refers to: its own id, its post, its actor."""

    kind: str  # "like" or "comment"
    id: str | None
    post_id: str | None
    user_id: str | None
    doc: dict[str, Any] | None  # the document as far as known (post-image, pre-image or index entry)


@dataclass
class Mapped:
    events: list[Event] = field(default_factory=list)
    skipped: str | None = None  # a SKIP_* reason when nothing could be published
    post_info: tuple[str, PostInfo | None] | None = None  # a post's routing info changed (None: deleted)
    index_set: tuple[str, str, dict[str, Any]] | None = None  # (kind, id, {postId, userId}) to remember
    index_del: tuple[str, str] | None = None  # (kind, id) to forget


def stream_pipeline(cfg: MappingConfig) -> list[dict[str, Any]]:
    """The change stream's ``$match``. Event ids count changes among those this pipeline lets through, so
    the watcher and every replay from the oplog must use exactly this one."""
    return [{"$match": {"$or": [{"ns.coll": {"$in": [cfg.posts, cfg.likes, cfg.comments]}},
                                {"operationType": {"$in": ["dropDatabase", "invalidate"]}}]}}]


def id_forms(post_id: str) -> list[Any]:
    """A post id as text and, when it could be one, as an ObjectId or an integer: producers store either."""
    from bson import ObjectId

    forms: list[Any] = [post_id]
    if len(post_id) == 24 and ObjectId.is_valid(post_id):
        forms.append(ObjectId(post_id))
    if post_id.isdigit() and len(post_id) < 19:
        forms.append(int(post_id))
    return forms


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


def is_public(doc: dict[str, Any] | None, cfg: MappingConfig) -> bool:
    if doc is None:
        return True
    value = doc.get(cfg.fields.visibility)
    return value is None or (isinstance(value, str) and value in cfg.public_values)


def post_info(doc: dict[str, Any] | None, cfg: MappingConfig) -> PostInfo | None:
    if doc is None:
        return None
    return PostInfo(ev.id_part(doc.get(cfg.fields.author_id)), is_public(doc, cfg))


def subject(change: dict[str, Any], cfg: MappingConfig, remembered: dict[str, Any] | None = None) -> Subject | None:
    """For a change on likes or comments: the ids it refers to. ``remembered`` is the index entry the
    watcher kept for a deleted document when the change carries no pre-image."""
    coll = _coll(change)
    if coll == cfg.likes:
        kind = "like"
    elif coll == cfg.comments:
        kind = "comment"
    else:
        return None
    doc = _doc(change) or _before(change)
    if doc is None and isinstance(remembered, dict):
        # An index entry is stored under fixed names ("postId", "userId"; see _map_reaction), whatever the
        # configured field names are.
        return Subject(kind, ev.id_part(_key(change)), ev.id_part(remembered.get("postId")),
                       ev.id_part(remembered.get("userId")), remembered)
    f = cfg.fields
    user = None
    if doc is not None:
        user = doc.get(f.user_id) if kind == "like" else doc.get(f.user_id, doc.get(f.author_id))
    return Subject(kind, ev.id_part(_key(change)), ev.id_part(doc.get(f.post_id)) if doc else None,
                   ev.id_part(user), doc)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _ts(change: dict[str, Any]) -> int:
    wall = change.get("wallTime")
    if isinstance(wall, dt.datetime):
        if wall.tzinfo is None:
            wall = wall.replace(tzinfo=dt.UTC)
        # Integer arithmetic: int(wall.timestamp() * 1000) is one millisecond short for some times.
        return (wall - _EPOCH) // dt.timedelta(milliseconds=1)
    ct = change.get("clusterTime")
    return int(getattr(ct, "time", 0)) * 1000


class _Builder:
    def __init__(self, change: dict[str, Any], position: int) -> None:
        ct = change["clusterTime"]
        self.seconds, self.increment = int(ct.time), int(ct.inc)
        self.position = position
        self.ts = _ts(change)
        self.out: list[Event] = []

    def add(self, type_: str, rooms: list[str], data: dict[str, Any], counter: Counter | None = None) -> None:
        unique = tuple(dict.fromkeys(r for r in rooms if ev.valid_room(r)))
        if not unique:
            return
        event_id = ev.make_id(self.seconds, self.increment, self.position, len(self.out))
        self.out.append(Event(event_id, type_, unique, data, self.ts, counter))


def map_change(change: dict[str, Any], position: int, cfg: MappingConfig,
               post: PostInfo | None = None, remembered: dict[str, Any] | None = None) -> Mapped:
    """Map one change (insert, update, replace or delete on a watched collection) to its events.

    ``position`` is the change's index among the changes sharing its ``clusterTime``. ``post`` is the
    routing info of the post a like or comment belongs to (or of the post itself for an update or delete
    that carries no document). Raises nothing for bad documents: the result says what was skipped.
    """
    op = change.get("operationType")
    coll = _coll(change)
    if op not in ("insert", "update", "replace", "delete") or coll not in (cfg.posts, cfg.likes, cfg.comments):
        return Mapped(skipped=SKIP_NOT_WATCHED)
    builder = _Builder(change, position)
    if coll == cfg.posts:
        mapped = _map_post(change, op, builder, cfg, post)
    else:
        sub = subject(change, cfg, remembered)
        assert sub is not None
        mapped = _map_reaction(change, op, sub, builder, cfg, post)
    mapped.events = builder.out
    return mapped


def _post_data(doc: dict[str, Any] | None, post_id: str, author: str | None, cfg: MappingConfig,
               changed: list[str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"id": post_id, "authorId": author}
    data.update(pick(doc, cfg.post_fields, max_string=cfg.max_string, max_depth=cfg.max_depth))
    if changed is None:
        return bound(data, cfg.max_payload, keep=("id", "authorId"))
    data["changed"] = changed  # inside the bound: the whole payload must fit max_payload
    return bound(data, cfg.max_payload, keep=("id", "authorId", "changed"))


def _map_post(change: dict[str, Any], op: str, b: _Builder, cfg: MappingConfig, known: PostInfo | None) -> Mapped:
    post_id = ev.id_part(_key(change))
    if post_id is None:
        return Mapped(skipped=SKIP_BAD_ID)
    doc = _doc(change)
    info = post_info(doc or _before(change), cfg) or known
    author = info.author_id if info else None
    public = info.public if info else True
    private_rooms = [ev.user_room(author)] if author else []
    if op == "insert":
        if doc is None:  # an insert always carries its document
            return Mapped(skipped=SKIP_BAD_DOCUMENT)
        data = _post_data(doc, post_id, author, cfg)
        if public:
            rooms = [ev.PUBLIC]
            if author:
                rooms.append(ev.author_room(author))
            tags = doc.get(cfg.fields.hashtags)
            if isinstance(tags, list):
                rooms += [ev.hashtag_room(t) for t in (ev.normalise_tag(x) for x in tags[:100]) if t]
        else:
            rooms = private_rooms
        b.add(ev.POST_CREATED, rooms, data)
        return Mapped(post_info=(post_id, info))
    if op == "delete":
        b.add(ev.POST_DELETED, [ev.post_room(post_id)] if public else private_rooms, {"id": post_id})
        return Mapped(post_info=(post_id, None))
    # update or replace
    changed: list[str]
    if op == "update":
        desc = change.get("updateDescription") or {}
        paths = list((desc.get("updatedFields") or {}).keys()) + list(desc.get("removedFields") or [])
        paths += [t.get("field", "") for t in desc.get("truncatedArrays") or [] if isinstance(t, dict)]
        tops = {p.split(".", 1)[0] for p in paths if isinstance(p, str)}
        changed = [f for f in cfg.post_fields if f in tops]
        routing_changed = bool(tops & {cfg.fields.visibility, cfg.fields.author_id})
        if not changed and not routing_changed:
            return Mapped(post_info=(post_id, info) if doc is not None else None)
        if doc is None:  # no post-image: what the update set is all we know
            updated = desc.get("updatedFields") or {}
            doc = {k: v for k, v in updated.items() if k in cfg.post_fields}
            if routing_changed:  # route as the post is after the update, not as it was known before it
                f = cfg.fields
                if f.visibility in updated:
                    public = is_public({f.visibility: updated[f.visibility]}, cfg)
                elif f.visibility in tops:  # removed (absent: public) or changed below (a subdocument: not public)
                    public = f.visibility in (desc.get("removedFields") or [])
                if f.author_id in tops:
                    author = ev.id_part(updated.get(f.author_id))
                info = PostInfo(author, public)
                private_rooms = [ev.user_room(author)] if author else []
    else:
        changed, routing_changed = list(cfg.post_fields), False
    data = _post_data(doc, post_id, author, cfg, changed)
    b.add(ev.POST_UPDATED, [ev.post_room(post_id)] if public else private_rooms, data)
    return Mapped(post_info=(post_id, info) if _doc(change) is not None or routing_changed else None)


def _map_reaction(change: dict[str, Any], op: str, sub: Subject, b: _Builder, cfg: MappingConfig,
                  post: PostInfo | None) -> Mapped:
    if sub.id is None:
        return Mapped(skipped=SKIP_BAD_ID)
    if sub.doc is None:
        return Mapped(skipped=SKIP_UNROUTABLE_DELETE if op == "delete" else SKIP_BAD_DOCUMENT,
                      index_del=(sub.kind, sub.id) if op == "delete" else None)
    if sub.post_id is None:
        return Mapped(skipped=SKIP_NO_POST, index_del=(sub.kind, sub.id) if op == "delete" else None)
    author = post.author_id if post else None
    public = post.public if post else True
    if public:
        rooms = [ev.post_room(sub.post_id)]
    else:
        rooms = [ev.user_room(author)] if author else []
    notify = author is not None and sub.user_id is not None and sub.user_id != author
    remember = {"postId": sub.post_id, "userId": sub.user_id}
    if sub.kind == "like":
        if op == "insert":
            b.add(ev.POST_LIKED, rooms, {"likes": 0, "id": sub.id, "postId": sub.post_id, "userId": sub.user_id},
                  Counter(sub.post_id, +1))
            if notify and author:
                b.add(ev.NOTIFICATION_NEW, [ev.user_room(author)],
                      {"kind": "like", "postId": sub.post_id, "fromUserId": sub.user_id, "likeId": sub.id})
            return Mapped(index_set=("like", sub.id, remember))
        if op == "delete":
            b.add(ev.POST_UNLIKED, rooms, {"likes": 0, "id": sub.id, "postId": sub.post_id, "userId": sub.user_id},
                  Counter(sub.post_id, -1))
            return Mapped(index_del=("like", sub.id))
        return Mapped(skipped=SKIP_BAD_DOCUMENT)  # likes are inserted and deleted, not edited
    data: dict[str, Any] = {"id": sub.id, "postId": sub.post_id, "userId": sub.user_id}
    if op == "delete":
        b.add(ev.COMMENT_DELETED, rooms, data)
        return Mapped(index_del=("comment", sub.id))
    data.update(pick(sub.doc, cfg.comment_fields, max_string=cfg.max_string, max_depth=cfg.max_depth))
    data = bound(data, cfg.max_payload, keep=("id", "postId", "userId"))
    if op == "insert":
        b.add(ev.COMMENT_ADDED, rooms, data)
        if notify and author:
            b.add(ev.NOTIFICATION_NEW, [ev.user_room(author)],
                  {"kind": "comment", "postId": sub.post_id, "fromUserId": sub.user_id, "commentId": sub.id})
        return Mapped(index_set=("comment", sub.id, remember))
    b.add(ev.COMMENT_UPDATED, rooms, data)
    return Mapped(index_set=("comment", sub.id, remember))
