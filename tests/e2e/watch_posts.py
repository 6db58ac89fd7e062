"""A client in a process of its own: opens a db-level change stream on ``app``, writes, prints what it saw.

Run as ``python -m tests.e2e.watch_posts <uri> <timeout seconds>``. It inserts, updates and deletes
``app.posts`` ``{_id: 1}`` (with a write to another database in between, which the stream must not
show), then prints each change event it received as one line of relaxed Extended JSON. It waits up to
the timeout for the three events, then once more for any extra one, so the caller can check there was
none. Exits 0 when it saw at least three events, 1 otherwise (having printed what it did see).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bson import json_util
from pymongo import MongoClient

EXPECTED_COUNT = 3


def watch(uri: str, timeout: float) -> list[dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=int(timeout * 1000))
    events: list[dict[str, Any]] = []
    try:
        db = client["app"]
        with db.watch(max_await_time_ms=100) as stream:
            posts = db["posts"]
            posts.insert_one({"_id": 1, "title": "hi", "likes": 0})
            posts.update_one({"_id": 1}, {"$inc": {"likes": 2}, "$set": {"title": "hey"}})
            client["other"]["posts"].insert_one({"_id": 1})  # another database: not on this stream
            posts.delete_one({"_id": 1})
            deadline = time.monotonic() + timeout
            while len(events) < EXPECTED_COUNT and time.monotonic() < deadline:
                event = stream.try_next()
                if event is not None:
                    events.append(event)
            extra = stream.try_next()  # one more await (max_await_time_ms): there should be nothing
            if extra is not None:
                events.append(extra)
    finally:
        client.close()
    return events


def main(argv: list[str]) -> int:
    uri, timeout = argv[0], float(argv[1])
    events = watch(uri, timeout)
    for event in events:
        print(json_util.dumps(event, json_options=json_util.RELAXED_JSON_OPTIONS), flush=True)
    return 0 if len(events) >= EXPECTED_COUNT else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
