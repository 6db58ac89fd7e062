"""Like counts the chaos suite (tests/chaos) found wrong, pinned here at the tier that reaches the cause: the
watcher against the stand-in and a real Redis (the fixtures of tests/integration/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo import MongoClient

from realtime.standin import StandIn
from tests.conftest import TIMEOUT, RedisServer
from tests.integration.watcherkit import WatcherProcess, stream, streaming, wait_for

pytestmark = [pytest.mark.integration]


@pytest.fixture
def watcher(standin: StandIn, redis_server: RedisServer, tmp_path: Path) -> Iterator[WatcherProcess]:
    w = WatcherProcess(standin.uri, redis_server.url, tmp_path, "w1")
    w.start()
    wait_for(lambda: streaming(w), "the watcher to stream", timeout=TIMEOUT * 3)
    yield w
    w.stop()


def test_first_likes_of_a_post_made_in_one_transaction_count_one_by_one(
        r: redis.Redis, mongo_client: MongoClient[dict[str, Any]], watcher: WatcherProcess) -> None:
    """Regression: likes and unlikes in one transaction, a post's first, all carried the count after the commit."""
    db = mongo_client.app
    db.posts.insert_one({"_id": "p1", "authorId": "a", "text": "hello"})
    with mongo_client.start_session() as session, session.start_transaction():
        db.likes.insert_one({"_id": "l1", "postId": "p1", "userId": "u1"}, session=session)
        db.likes.insert_one({"_id": "l2", "postId": "p1", "userId": "u2"}, session=session)
        db.likes.delete_one({"_id": "l1"}, session=session)

    def likes() -> list[tuple[str, int]] | None:
        found = [(e["data"]["id"], e["data"]["likes"]) for e in stream(r)
                 if e["type"] in ("post:liked", "post:unliked")]
        return found if len(found) == 3 else None

    got = wait_for(likes, "the three like events", timeout=TIMEOUT * 3)
    assert got == [("l1", 1), ("l2", 2), ("l1", 1)], got
