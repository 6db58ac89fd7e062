"""A busy social app's writes, reproducible from a seed: posts, likes, unlikes, comments, edits, transactions."""

from __future__ import annotations

import random
import threading
from typing import Any

from pymongo import MongoClient


class Producer:
    def __init__(self, client: MongoClient[dict[str, Any]], db: str, seed: int = 7, users: int = 30) -> None:
        self.client = client
        self.db = client[db]
        self.rng = random.Random(seed)
        self.users = [f"u{i}" for i in range(users)]
        self.posts: list[str] = []
        self.likes: dict[tuple[str, str], str] = {}  # (post, user) -> like id
        self.comments: list[str] = []
        self.changes = 0  # change events caused so far
        self.serial = 0
        self.progress = threading.Condition()

    def _next(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def _count(self, n: int = 1) -> None:
        with self.progress:
            self.changes += n
            self.progress.notify_all()

    def new_post(self) -> None:
        post_id = self._next("p")
        doc: dict[str, Any] = {"_id": post_id, "authorId": self.rng.choice(self.users), "text": f"post {post_id}",
                               "hashtags": self.rng.sample(["news", "cats", "Python", "#Mongo"], 2)}
        if self.rng.random() < 0.1:
            doc["visibility"] = "private"
        self.db.posts.insert_one(doc)
        self.posts.append(post_id)
        self._count()

    def step(self) -> None:
        if len(self.posts) < 5:
            self.new_post()
            return
        roll = self.rng.random()
        post = self.rng.choice(self.posts)
        user = self.rng.choice(self.users)
        if roll < 0.40:
            if (post, user) in self.likes:
                self.db.likes.delete_one({"_id": self.likes.pop((post, user))})
            else:
                like_id = self._next("l")
                self.db.likes.insert_one({"_id": like_id, "postId": post, "userId": user})
                self.likes[(post, user)] = like_id
            self._count()
        elif roll < 0.50 and self.likes:
            key = self.rng.choice(sorted(self.likes))
            self.db.likes.delete_one({"_id": self.likes.pop(key)})
            self._count()
        elif roll < 0.65:
            comment_id = self._next("c")
            self.db.comments.insert_one({"_id": comment_id, "postId": post, "userId": user, "text": "nice"})
            self.comments.append(comment_id)
            self._count()
        elif roll < 0.70 and self.comments:
            self.db.comments.update_one({"_id": self.rng.choice(self.comments)}, {"$set": {"text": "edited"}})
            self._count()
        elif roll < 0.80:
            self.db.posts.update_one({"_id": post}, {"$set": {"text": f"edit {self.serial}"}})
            self._count()
        elif roll < 0.90:
            self.new_post()
        else:  # a like and a comment in one transaction
            with self.client.start_session() as session, session.start_transaction():
                like_id = self._next("l")
                if (post, user) in self.likes:
                    self.db.likes.delete_one({"_id": self.likes.pop((post, user))}, session=session)
                else:
                    self.db.likes.insert_one({"_id": like_id, "postId": post, "userId": user}, session=session)
                    self.likes[(post, user)] = like_id
                comment_id = self._next("c")
                self.db.comments.insert_one({"_id": comment_id, "postId": post, "userId": user, "text": "+1"},
                                            session=session)
            self.comments.append(comment_id)
            self._count(2)

    def run(self, changes: int) -> None:
        while self.changes < changes:
            self.step()

    def wait_for(self, changes: int, timeout: float) -> bool:
        with self.progress:
            return self.progress.wait_for(lambda: self.changes >= changes, timeout)
