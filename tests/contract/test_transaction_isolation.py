"""Reads outside a transaction do not see its uncommitted writes; reads inside it do."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient

pytestmark = [pytest.mark.contract]


def test_uncommitted_writes_are_invisible_outside(client: MongoClient[dict[str, Any]], db_name: str) -> None:
    likes = client[db_name].likes
    likes.insert_many([{"_id": 1, "postId": "p"}, {"_id": 2, "postId": "p"}])
    with client.start_session() as session:
        session.start_transaction()
        likes.insert_one({"_id": 3, "postId": "p"}, session=session)
        likes.delete_one({"_id": 1}, session=session)
        likes.update_one({"_id": 2}, {"$set": {"postId": "q"}}, session=session)
        assert sorted(d["_id"] for d in likes.find({"postId": "p"}, session=session)) == [3]
        assert sorted(d["_id"] for d in likes.find({"postId": "p"})) == [1, 2]
        assert likes.count_documents({"postId": "p"}) == 2
        assert list(likes.aggregate([{"$match": {"postId": "p"}}, {"$count": "n"}])) == [{"n": 2}]
        session.commit_transaction()
    assert sorted(d["_id"] for d in likes.find({"postId": "p"})) == [3]
