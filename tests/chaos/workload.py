"""The producers: threads writing with PyMongo as any application would, some of it in transactions.

What they write: posts (public, private, some without a visibility field, hashtags, a field outside the
allow-list that must never be published), edits (of the text, the hashtags, the visibility, of a field outside
the allow-list only, whole replaces), deletes, likes, unlikes and comments (added, edited, deleted), and
transactions mixing them. Posts are of two kinds, so that no write races a post's deletion (the post index's
tombstones decide where such writes go; the watcher's own tests cover them): **stable** posts take likes and
comments and change visibility but are never deleted; **ephemeral** posts are edited and deleted by the
producer that made them and take no reactions.

Each producer draws from its own seeded generator; what it can draw depends on what exists, so the exact
sequence depends on timing too. What matters to the checks is not replayed from here but read back from
MongoDB by the model's tailer.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient
from pymongo.client_session import ClientSession
from pymongo.errors import PyMongoError

log = logging.getLogger("chaos.workload")

USERS = ("u1", "u2", "u3", "u4", "u5")
TAGS = ("cats", "dogs", "#Birds", "fish")


@dataclass
class World:
    """What exists, as far as the producers know (shared, under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    stable: list[str] = field(default_factory=list)  # post ids
    authors: dict[str, str] = field(default_factory=dict)
    likes: dict[str, str] = field(default_factory=dict)  # like id -> post id
    comments: dict[str, tuple[str, str]] = field(default_factory=dict)  # comment id -> (post id, user)
    serial: int = 0

    def next_id(self, prefix: str) -> str:
        with self.lock:
            self.serial += 1
            return f"{prefix}{self.serial}"

    def forget_all(self) -> None:
        """The database lost its data."""
        with self.lock:
            self.stable.clear()
            self.authors.clear()
            self.likes.clear()
            self.comments.clear()


def post_doc(post_id: str, author: str, rng: random.Random, *, visibility: str | None,
             text: str = "") -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": post_id, "authorId": author, "text": text or f"post {post_id} by {author}",
                           "hashtags": rng.sample(TAGS, rng.randint(0, 2)), "internal": f"not-for-clients-{post_id}"}
    if visibility is not None:
        doc["visibility"] = visibility
    return doc


class Producer:
    """One thread of writes; :meth:`pause` and :meth:`resume` let the cluster quiesce the writes."""

    def __init__(self, name: str, uri: str, db: str, world: World, seed: int, rate: float = 6.0) -> None:
        self.name = name
        self.uri = uri
        self.db_name = db
        self.world = world
        self.rng = random.Random(seed)
        self.rate = rate
        self.mine: list[str] = []  # ephemeral posts of this producer
        self.done = 0
        self.failed = 0
        self.running = threading.Event()
        self.running.set()
        self.idle = threading.Event()
        self._stop = threading.Event()
        self._client: MongoClient[dict[str, Any]] | None = None
        self._thread = threading.Thread(target=self._run, name=f"chaos-{name}", daemon=True)

    @property
    def db(self) -> Any:
        assert self._client is not None
        return self._client[self.db_name]

    def start(self) -> None:
        self._client = MongoClient(self.uri, appname="chaos-producer", serverSelectionTimeoutMS=5000,
                                   socketTimeoutMS=10_000)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.running.is_set():
                self.idle.set()
                self.running.wait(0.1)
                continue
            self.idle.clear()
            op = self._choose()
            try:
                op()
                self.done += 1
            except PyMongoError as exc:
                self.failed += 1
                log.info("%s: a write failed (%s: %s)", self.name, type(exc).__name__, exc)
                time.sleep(0.2)
            time.sleep(self.rng.expovariate(self.rate))
        self.idle.set()

    def pause(self, within: float = 30.0) -> None:
        self.running.clear()
        self.idle.wait(within)

    def resume(self) -> None:
        self.running.set()

    def forget(self) -> None:
        self.mine.clear()

    def stop(self) -> None:
        self._stop.set()
        self.running.set()
        self._thread.join(timeout=30)
        if self._client is not None:
            self._client.close()

    # -- what to do ----------------------------------------------------------------------------------------
    def _choose(self) -> Callable[[], None]:
        w = self.world
        with w.lock:
            have_stable, have_likes, have_comments = bool(w.stable), bool(w.likes), bool(w.comments)
        choices: list[tuple[float, Callable[[], None]]] = [(2, self.create_ephemeral), (0.3, self.create_stable)]
        if self.mine:
            choices += [(1.5, self.edit_ephemeral), (0.7, self.toggle_ephemeral), (1, self.delete_ephemeral),
                        (0.4, self.touch_unpublished), (0.5, self.retag_ephemeral), (0.5, self.replace_ephemeral)]
        if have_stable:
            choices += [(4, self.like), (2, self.comment), (1, self.edit_stable), (0.6, self.toggle_stable),
                        (1.2, self.transaction)]
        if have_likes:
            choices.append((2, self.unlike))
        if have_comments:
            choices += [(0.8, self.edit_comment), (0.6, self.delete_comment)]
        total = sum(weight for weight, _ in choices)
        pick = self.rng.random() * total
        for weight, op in choices:
            pick -= weight
            if pick <= 0:
                return op
        return choices[-1][1]

    def _visibility(self) -> str | None:
        return self.rng.choices(["public", "private", None], [6, 3, 1])[0]

    def create_ephemeral(self) -> None:
        post_id = self.world.next_id(f"e{self.name}-")
        self.db.posts.insert_one(post_doc(post_id, self.rng.choice(USERS), self.rng, visibility=self._visibility()))
        self.mine.append(post_id)

    def create_stable(self) -> None:
        post_id = self.world.next_id("s")
        author = self.rng.choice(USERS)
        self.db.posts.insert_one(post_doc(post_id, author, self.rng, visibility=self._visibility()))
        with self.world.lock:
            self.world.stable.append(post_id)
            self.world.authors[post_id] = author

    def edit_ephemeral(self) -> None:
        post_id = self.rng.choice(self.mine)
        self.db.posts.update_one({"_id": post_id}, {"$set": {"text": f"edit {self.world.next_id('x')}"}})

    def toggle_ephemeral(self) -> None:
        self._toggle(self.rng.choice(self.mine))

    def retag_ephemeral(self) -> None:
        """New hashtags: the feeds of the old and the new ones hear of it."""
        post_id = self.rng.choice(self.mine)
        tags = self.rng.sample(TAGS, self.rng.randint(0, 2))
        self.db.posts.update_one({"_id": post_id}, {"$set": {"hashtags": tags}})

    def replace_ephemeral(self) -> None:
        """The whole post rewritten (same author): sometimes with nothing a client sees changed."""
        post_id = self.rng.choice(self.mine)
        current = self.db.posts.find_one({"_id": post_id})
        if current is None:
            return
        doc = dict(current)
        if self.rng.random() < 0.3:
            doc["views"] = int(doc.get("views", 0)) + 1  # only outside the allow-list: no event
        else:
            doc = post_doc(post_id, str(current["authorId"]), self.rng, visibility=self._visibility(),
                           text=f"replaced {self.world.next_id('x')}")
        self.db.posts.replace_one({"_id": post_id}, doc)

    def touch_unpublished(self) -> None:
        """An update of a field outside the allow-list only: a change, but no event."""
        post_id = self.rng.choice(self.mine)
        self.db.posts.update_one({"_id": post_id}, {"$inc": {"views": 1}})

    def delete_ephemeral(self) -> None:
        post_id = self.mine.pop(self.rng.randrange(len(self.mine)))
        self.db.posts.delete_one({"_id": post_id})

    def _stable(self) -> str:
        with self.world.lock:
            return self.rng.choice(self.world.stable)

    def edit_stable(self, session: ClientSession | None = None) -> None:
        self.db.posts.update_one({"_id": self._stable()}, {"$set": {"text": f"edit {self.world.next_id('x')}"}},
                                 session=session)

    def toggle_stable(self) -> None:
        self._toggle(self._stable())

    def _toggle(self, post_id: str) -> None:
        if self.rng.random() < 0.15:
            self.db.posts.update_one({"_id": post_id}, {"$unset": {"visibility": ""}})
            return
        self.db.posts.update_one({"_id": post_id}, {"$set": {"visibility": self.rng.choice(["public", "private"])}})

    def like(self, session: ClientSession | None = None) -> None:
        post_id = self._stable()
        like_id = self.world.next_id("l")
        self.db.likes.insert_one({"_id": like_id, "postId": post_id, "userId": self.rng.choice(USERS)},
                                 session=session)
        with self.world.lock:
            self.world.likes[like_id] = post_id

    def unlike(self, session: ClientSession | None = None) -> None:
        with self.world.lock:
            if not self.world.likes:
                return
            like_id = self.rng.choice(sorted(self.world.likes))
            self.world.likes.pop(like_id)
        self.db.likes.delete_one({"_id": like_id}, session=session)

    def comment(self, session: ClientSession | None = None) -> None:
        post_id = self._stable()
        comment_id = self.world.next_id("c")
        user = self.rng.choice(USERS)
        self.db.comments.insert_one({"_id": comment_id, "postId": post_id, "userId": user,
                                     "text": f"comment {comment_id}", "internal": "not-for-clients"},
                                    session=session)
        with self.world.lock:
            self.world.comments[comment_id] = (post_id, user)

    def _a_comment(self) -> str | None:
        with self.world.lock:
            return self.rng.choice(sorted(self.world.comments)) if self.world.comments else None

    def edit_comment(self) -> None:
        comment_id = self._a_comment()
        if comment_id is not None:
            self.db.comments.update_one({"_id": comment_id}, {"$set": {"text": f"edited {self.world.next_id('x')}"}})

    def delete_comment(self) -> None:
        comment_id = self._a_comment()
        if comment_id is None:
            return
        with self.world.lock:
            self.world.comments.pop(comment_id, None)
        self.db.comments.delete_one({"_id": comment_id})

    def transaction(self) -> None:
        """Two to four writes committed together (retried by the driver on a transient error)."""
        steps = [self.rng.choice([self.like, self.like, self.unlike, self.comment, self.edit_stable])
                 for _ in range(self.rng.randint(2, 4))]
        assert self._client is not None
        with self._client.start_session() as session:
            session.with_transaction(lambda s: [step(s) for step in steps] and None)
