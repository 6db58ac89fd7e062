"""The independent model: from the writes MongoDB committed, in its order, what every room must carry.

Written for the suite from docs/events.md and docs/guarantees.md alone; it imports nothing from ``watchers/``
or ``realtime/``. Its input is the list of committed changes, as the model's own tailer read them straight from
MongoDB (the only thing taken from MongoDB is what MongoDB decides: which writes committed, in which order, at
which cluster time and wall time). Routing, visibility, notifications, payloads, like counts and event ids are
computed here, from the documents written.

The rules, as the docs give them (see docs/chaos.md for where they are silent and what the model assumes):

- A post is public when its ``visibility`` is absent or ``"public"``; otherwise private.
- ``post:created`` of a public post goes to ``public``, ``author:{authorId}`` and ``hashtag:{tag}`` for each tag
  (lowercased, ``#`` dropped); of a private post to ``user:{authorId}`` only.
- ``post:updated`` (an update touching an allow-listed field, the author or the visibility; a replace changing
  one of them) of a post public after it goes to ``post:{id}`` and the feed rooms (those of ``post:created``) of
  the post before and after it, as far as each was public; of a post private after it, to ``user:{authorId}``,
  followed, when the post was public before, by a ``post:deleted`` (its id only) to ``post:{id}`` and the feed
  rooms it had before. ``post:deleted`` of a public post goes to ``post:{id}`` and its feed rooms, of a private
  one to ``user:{authorId}``. ``changed`` lists the allow-listed fields the update set or removed, or that differ
  between the two versions of a replace, in the allow-list's order.
- Likes and comments go to ``post:{postId}`` while their post is public at that change, else to
  ``user:{authorId}``; ``notification:new`` to ``user:{authorId}`` when someone else liked or commented.
- ``likes`` is the exact count of the post's likes right after the like or unlike, in change order.
- An event's id is ``(seconds << 32 | increment)-(position * 8 + index)``: the change's cluster time, its
  position among the changes sharing that time, the event's index among its change's events.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

POST_FIELDS = ("title", "text", "hashtags", "visibility", "media", "createdAt", "updatedAt")
COMMENT_FIELDS = ("text", "createdAt", "updatedAt")
EVENTS_PER_CHANGE = 8


@dataclass(frozen=True)
class Change:
    """One committed change of ``posts``, ``likes`` or ``comments``, as MongoDB reports it."""

    op: str  # insert, update, replace, delete
    coll: str
    key: str  # the document's _id
    doc: dict[str, Any] | None  # insert, replace: the document written; update: the document after it
    updated: dict[str, Any]  # update: the paths set (dotted below the top level)
    removed: tuple[str, ...]  # update: the paths unset
    time: tuple[int, int]  # cluster time (seconds, increment)
    wall_ms: int
    epoch: int = 0  # which life of the database (a restart that lost the data starts a new one)
    truncated: tuple[str, ...] = ()  # update: the arrays it truncated

    @property
    def touched(self) -> set[str]:
        """The top-level fields an update set, removed or truncated."""
        return {path.split(".", 1)[0] for path in (*self.updated, *self.removed, *self.truncated)}

    def applied_to(self, before: dict[str, Any]) -> dict[str, Any]:
        """The document after this update (its post-image when the change carries it)."""
        if self.doc is not None:
            return dict(self.doc)
        if self.truncated or any("." in k for k in self.updated):
            raise ValueError(f"an update of {self.key} below the top level, without the document after it")
        after = dict(before)
        after.update(self.updated)
        for name in self.removed:
            after.pop(name, None)
        return after


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    rooms: tuple[str, ...]
    data: dict[str, Any]
    ts: int
    private_of: str | None = None  # the author, when the event is about a post that is private at that change
    canary: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return key_of(self.id)


def key_of(event_id: str) -> tuple[int, int]:
    head, _, tail = event_id.partition("-")
    return int(head), int(tail or 0)


def tag_room(tag: Any) -> str | None:
    if not isinstance(tag, str):
        return None
    text = tag.strip().lstrip("#").lower()
    return f"hashtag:{text}" if text and text.replace("_", "").replace("-", "").isalnum() else None


def is_public(doc: dict[str, Any]) -> bool:
    return "visibility" not in doc or doc["visibility"] == "public"


def _allowed(doc: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: doc[f] for f in fields if f in doc}


@dataclass
class Model:
    """Feed it changes in order (:meth:`apply`); it keeps the events, and per room their ids in order."""

    events: list[Event] = field(default_factory=list)
    by_id: dict[str, Event] = field(default_factory=dict)
    posts: dict[str, dict[str, Any]] = field(default_factory=dict)
    likes: dict[str, dict[str, Any]] = field(default_factory=dict)
    comments: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    unknown: list[str] = field(default_factory=list)  # changes the docs leave undefined (reported, not guessed)
    _last_time: tuple[int, int] = (-1, -1)
    _position: int = -1
    _epoch: int = 0

    def apply(self, change: Change) -> list[Event]:
        if change.epoch != self._epoch:  # the database lost its data: its documents are gone
            self._epoch = change.epoch
            self.posts.clear()
            self.likes.clear()
            self.comments.clear()
            self.counts.clear()
        self._position = self._position + 1 if change.time == self._last_time else 0
        self._last_time = change.time
        out: list[Event] = []
        if change.coll == "posts":
            self._post(change, out)
        elif change.coll == "likes":
            self._like(change, out)
        elif change.coll == "comments":
            self._comment(change, out)
        for e in out:
            self.events.append(e)
            self.by_id[e.id] = e
        return out

    # -- helpers -----------------------------------------------------------------------------------------------
    def _event(self, change: Change, out: list[Event], type_: str, rooms: list[str], data: dict[str, Any],
               private_of: str | None = None, canary: bool = False) -> None:
        seconds, increment = change.time
        event_id = f"{seconds << 32 | increment}-{self._position * EVENTS_PER_CHANGE + len(out)}"
        out.append(Event(event_id, type_, tuple(dict.fromkeys(rooms)), data, change.wall_ms, private_of, canary))

    def _post_rooms(self, post_id: str, post: dict[str, Any]) -> tuple[list[str], str | None]:
        """Where what is about a post goes (its likes, comments): its room, or its author's when private."""
        author = str(post.get("authorId"))
        if is_public(post):
            return [f"post:{post_id}"], None
        return [f"user:{author}"], author

    @staticmethod
    def _feed(post: dict[str, Any]) -> list[str]:
        """A public post's feed rooms: those its post:created went to."""
        rooms = ["public", f"author:{post.get('authorId')}"]
        return rooms + [r for r in (tag_room(t) for t in post.get("hashtags") or []) if r]

    def _public_rooms(self, post_id: str, *versions: dict[str, Any]) -> list[str]:
        """A post's room and the feed rooms of those of its versions (before, after a change) that are public."""
        rooms = [f"post:{post_id}"]
        for version in versions:
            if is_public(version):
                rooms += self._feed(version)
        return rooms

    # -- posts -------------------------------------------------------------------------------------------------
    def _post(self, c: Change, out: list[Event]) -> None:
        if c.op == "insert":
            assert c.doc is not None
            post = dict(c.doc)
            self.posts[c.key] = post
            author = str(post.get("authorId"))
            data = {"id": c.key, "authorId": author, **_allowed(post, POST_FIELDS)}
            canary = str(post.get("text", "")).startswith("canary")
            if is_public(post):
                self._event(c, out, "post:created", self._feed(post), data, canary=canary)
            else:
                self._event(c, out, "post:created", [f"user:{author}"], data, author, canary)
            return
        before = self.posts.get(c.key)
        if before is None:
            self.unknown.append(f"{c.op} of post {c.key}, which the model never saw inserted")
            return
        if c.op == "delete":
            del self.posts[c.key]
            if is_public(before):
                self._event(c, out, "post:deleted", self._public_rooms(c.key, before), {"id": c.key})
            else:
                author = str(before.get("authorId"))
                self._event(c, out, "post:deleted", [f"user:{author}"], {"id": c.key}, author)
            return
        if c.op == "replace":
            assert c.doc is not None
            after = dict(c.doc)
            changed = [f for f in POST_FIELDS if (f in before) != (f in after) or before.get(f) != after.get(f)]
        else:
            after = c.applied_to(before)
            changed = [f for f in POST_FIELDS if f in c.touched]
        self.posts[c.key] = after
        moved = (before.get("authorId"), is_public(before)) != (after.get("authorId"), is_public(after))
        touched_routing = bool(c.touched & {"visibility", "authorId"})
        if not changed and not moved and not touched_routing:
            return  # nothing a client sees changed: no event
        author = str(after.get("authorId"))
        data = {"id": c.key, "authorId": author, **_allowed(after, POST_FIELDS), "changed": changed}
        if is_public(after):
            self._event(c, out, "post:updated", self._public_rooms(c.key, before, after), data)
            return
        self._event(c, out, "post:updated", [f"user:{author}"], data, author)
        if is_public(before):  # made private: announced as deleted, its id only, where it was public
            self._event(c, out, "post:deleted", self._public_rooms(c.key, before), {"id": c.key})

    # -- likes and comments ----------------------------------------------------------------------------------
    def _reaction_post(self, c: Change, post_id: str) -> dict[str, Any] | None:
        post = self.posts.get(post_id)
        if post is None:
            self.unknown.append(f"{c.op} on {c.coll} {c.key} of post {post_id}, which does not exist (the docs "
                                "do not say where it goes)")
        return post

    def _like(self, c: Change, out: list[Event]) -> None:
        if c.op == "insert":
            assert c.doc is not None
            like = {"postId": str(c.doc["postId"]), "userId": str(c.doc["userId"])}
            self.likes[c.key] = like
            delta, type_ = 1, "post:liked"
        elif c.op == "delete":
            found = self.likes.pop(c.key, None)
            if found is None:
                self.unknown.append(f"delete of like {c.key}, which the model never saw inserted")
                return
            like, delta, type_ = found, -1, "post:unliked"
        else:
            self.unknown.append(f"{c.op} of like {c.key}: likes are inserted and deleted, not edited")
            return
        post_id, user = like["postId"], like["userId"]
        post = self._reaction_post(c, post_id)
        if post is None:
            return
        self.counts[post_id] += delta
        author = str(post.get("authorId"))
        rooms, private_of = self._post_rooms(post_id, post)
        data = {"likes": self.counts[post_id], "id": c.key, "postId": post_id, "userId": user}
        self._event(c, out, type_, rooms, data, private_of)
        if c.op == "insert" and user != author:
            self._event(c, out, "notification:new", [f"user:{author}"],
                        {"kind": "like", "postId": post_id, "fromUserId": user, "likeId": c.key}, private_of)

    def _comment(self, c: Change, out: list[Event]) -> None:
        if c.op == "insert":
            assert c.doc is not None
            comment = dict(c.doc)
            self.comments[c.key] = comment
        else:
            found = self.comments.get(c.key)
            if found is None:
                self.unknown.append(f"{c.op} of comment {c.key}, which the model never saw inserted")
                return
            comment = found
            if c.op == "delete":
                del self.comments[c.key]
            elif c.op == "update":
                comment = self.comments[c.key] = c.applied_to(comment)
            else:
                assert c.doc is not None
                comment = self.comments[c.key] = dict(c.doc)
        post_id, user = str(comment["postId"]), str(comment["userId"])
        post = self._reaction_post(c, post_id)
        if post is None:
            return
        author = str(post.get("authorId"))
        rooms, private_of = self._post_rooms(post_id, post)
        canary = str(comment.get("text", "")).startswith("canary")
        data: dict[str, Any] = {"id": c.key, "postId": post_id, "userId": user}
        if c.op == "delete":
            self._event(c, out, "comment:deleted", rooms, data, private_of)
            return
        data.update(_allowed(comment, COMMENT_FIELDS))
        if c.op == "insert":
            self._event(c, out, "comment:added", rooms, data, private_of, canary)
            if user != author:
                self._event(c, out, "notification:new", [f"user:{author}"],
                            {"kind": "comment", "postId": post_id, "fromUserId": user, "commentId": c.key},
                            private_of)
        else:  # any update or replace of a comment (an update that changes nothing is no change at all)
            self._event(c, out, "comment:updated", rooms, data, private_of)

    # -- views -------------------------------------------------------------------------------------------------
    def room(self, room: str) -> list[Event]:
        """The events a room carries, in id order."""
        return [e for e in self.events if room in e.rooms]


def rooms_index(events: list[Event]) -> dict[str, list[Event]]:
    index: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        for r in e.rooms:
            index[r].append(e)
    return index
