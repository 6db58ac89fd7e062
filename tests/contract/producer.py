"""A producer, as any application would be: plain PyMongo writes to posts, likes and comments.

Run as ``python -m tests.contract.producer <uri> <db>``. It prints nothing; the change stream is the
only witness of what it did. :data:`EXPECTED` lists the events a db-level stream must show, in order.
"""

from __future__ import annotations

import sys

from pymongo import MongoClient

# (operationType, collection, documentKey _id, check) in stream order
EXPECTED: list[tuple[str, str, object]] = [
    ("insert", "posts", "p1"),
    ("insert", "posts", "p2"),
    ("update", "posts", "p1"),  # $set + $push + $inc
    ("insert", "likes", "l1"),  # transaction 1: like + counter
    ("update", "posts", "p1"),
    ("insert", "comments", "c1"),  # transaction 2: comment + counter + tag
    ("update", "posts", "p1"),
    ("update", "posts", "p2"),  # $unset + $mul + $addToSet
    ("replace", "comments", "c1"),
    ("delete", "likes", "l1"),
    ("update", "posts", "p1"),  # $inc -1, outside any transaction
    ("insert", "likes", "l2"),  # upsert
    ("update", "posts", "p1"),  # update_many over p1, p2: p2 already has score 6, a no-op
    ("delete", "posts", "p2"),
]


def produce(uri: str, db_name: str) -> None:
    client: MongoClient[dict[str, object]] = MongoClient(uri)
    db = client[db_name]
    db.posts.insert_one({"_id": "p1", "authorId": "u1", "text": "hello", "tags": ["a"], "likes": 0})
    db.posts.insert_one({"_id": "p2", "authorId": "u2", "text": "world", "score": 2, "draft": True})
    db.posts.update_one({"_id": "p1"}, {"$set": {"text": "hello!"}, "$push": {"tags": "b"}, "$inc": {"views": 1}})
    with client.start_session() as session:
        with session.start_transaction():
            db.likes.insert_one({"_id": "l1", "postId": "p1", "userId": "u2"}, session=session)
            db.posts.update_one({"_id": "p1"}, {"$inc": {"likes": 1}}, session=session)
        with session.start_transaction():
            db.comments.insert_one({"_id": "c1", "postId": "p1", "userId": "u3", "text": "nice"}, session=session)
            db.posts.update_one({"_id": "p1"}, {"$inc": {"comments": 1}, "$addToSet": {"tags": "c"}},
                                session=session)
        session.start_transaction()  # aborted: leaves no trace in the stream
        db.likes.insert_one({"_id": "ghost", "postId": "p1"}, session=session)
        session.abort_transaction()
    db.posts.update_one({"_id": "p2"}, {"$unset": {"draft": ""}, "$mul": {"score": 3}, "$addToSet": {"tags": "z"}})
    db.comments.replace_one({"_id": "c1"}, {"postId": "p1", "userId": "u3", "text": "nice (edited)"})
    db.likes.delete_one({"_id": "l1"})
    db.posts.update_one({"_id": "p1"}, {"$inc": {"likes": -1}})
    db.likes.update_one({"_id": "l2"}, {"$setOnInsert": {"postId": "p2", "userId": "u1"}}, upsert=True)
    db.posts.update_many({}, {"$set": {"score": 6}})
    db.posts.delete_one({"_id": "p2"})
    client.close()


if __name__ == "__main__":
    produce(sys.argv[1], sys.argv[2])
