"""The watcher against the stand-in and a real Redis: exactly once through crashes, leader changes,
lost history and lost Redis data."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo import MongoClient

from realtime import events as ev
from realtime.events import parse_id
from realtime.standin import StandIn
from tests.conftest import TIMEOUT, RedisServer
from tests.integration.producer import Producer
from tests.integration.watcherkit import (
    WatcherProcess,
    check_counts,
    check_stream,
    leader,
    leading,
    published,
    start_time,
    stream,
    streaming,
    wait_for,
)

pytestmark = [pytest.mark.integration]


@pytest.fixture
def watchers(standin: StandIn, redis_server: RedisServer, tmp_path: Path) -> Iterator[Any]:
    started: list[WatcherProcess] = []

    def make(name: str, **env: str) -> WatcherProcess:
        w = WatcherProcess(standin.uri, redis_server.url, tmp_path, name, **env)
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


def test_exactly_once_through_two_sigkills(r: redis.Redis, mongo_client: MongoClient[dict[str, Any]],
                                           watchers: Any) -> None:
    total = 5000
    start = start_time(mongo_client)
    watcher = leading(watchers("w1").start(), r)
    producer = Producer(mongo_client, "app")
    thread = threading.Thread(target=producer.run, args=(total,))
    thread.start()
    rng = random.Random(11)
    try:
        for kill_at in sorted(rng.sample(range(500, total - 500), 2)):
            assert producer.wait_for(kill_at, TIMEOUT * 6)
            watcher.kill(signal.SIGKILL)
            watcher.start()
    finally:
        thread.join(TIMEOUT * 12)
    assert not thread.is_alive()
    check_stream(r, mongo_client, start)
    check_counts(r, mongo_client)
    assert watcher.metric("realtime_watcher_resets_total") == 0


def test_standby_takes_over_within_the_lease(r: redis.Redis, mongo_client: MongoClient[dict[str, Any]],
                                             watchers: Any) -> None:
    start = start_time(mongo_client)
    a = leading(watchers("a").start(), r)
    b = watchers("b").start()
    wait_for(lambda: b.get("/healthz")[0] == 200, "b to answer")
    assert leader(r) == "a"
    producer = Producer(mongo_client, "app", seed=3)
    thread = threading.Thread(target=producer.run, args=(1500,))
    thread.start()
    try:
        assert producer.wait_for(500, TIMEOUT * 3)
        a.kill(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: leader(r) == "b", "b to take over", timeout=TIMEOUT)
        took = time.monotonic() - killed
    finally:
        thread.join(TIMEOUT * 6)
    assert took < 1.0 + 1.0 / 4 + 1.0, f"takeover took {took:.2f}s with a 1s lease"
    check_stream(r, mongo_client, start)
    check_counts(r, mongo_client)
    assert b.metric("realtime_watcher_leader") == 1


def test_deposed_leader_cannot_publish(r: redis.Redis, mongo_client: MongoClient[dict[str, Any]],
                                       watchers: Any) -> None:
    a = leading(watchers("a").start(), r)
    a.kill(signal.SIGSTOP)  # frozen, not dead: its lease runs out while it sleeps
    try:
        wait_for(lambda: leader(r) is None, "the lease to expire", timeout=TIMEOUT)
        leading(watchers("b").start(), r)
        mongo_client.app.posts.insert_one({"_id": "x", "authorId": "u1"})
        wait_for(lambda: len(published(stream(r))) == 1, "b to publish")
    finally:
        a.kill(signal.SIGCONT)
    time.sleep(1.0)  # a wakes up and finds its lease gone
    mongo_client.app.posts.insert_one({"_id": "y", "authorId": "u1"})
    wait_for(lambda: len(published(stream(r))) == 2, "b to publish again")
    time.sleep(0.5)
    ids = [e[0] for e in published(stream(r))]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert leader(r) == "b"


def test_lost_history_gives_one_reset_and_a_fresh_stream(r: redis.Redis, standin: StandIn,
                                                         mongo_client: MongoClient[dict[str, Any]],
                                                         watchers: Any) -> None:
    w = leading(watchers("w").start(), r)
    mongo_client.app.posts.insert_one({"_id": "before", "authorId": "u1"})
    wait_for(lambda: len(stream(r)) == 2, "the first event")  # after the new deployment's reset marker
    w.stop()
    mongo_client.app.posts.insert_one({"_id": "lost", "authorId": "u1"})
    standin.truncate_oplog()
    mongo_client.app.checkpoints_noise.insert_one({})  # some oplog after the truncation
    w.start()
    wait_for(lambda: len(stream(r)) == 3, "a reset marker for the lost history")
    mongo_client.app.posts.insert_one({"_id": "after", "authorId": "u1"})
    wait_for(lambda: len(stream(r)) == 4, "the event after the reset")
    time.sleep(1.0)  # a looping watcher would publish more resets meanwhile
    events = stream(r)
    assert [e["type"] for e in events] == [ev.RESET, ev.POST_CREATED, ev.RESET, ev.POST_CREATED]
    assert [e["data"].get("id") for e in events if e["type"] == ev.POST_CREATED] == ["before", "after"]
    started, reset = events[0], events[2]
    assert started["data"]["reason"] == "stream_started"
    assert reset["rooms"] == [ev.ALL_ROOMS] and reset["data"]["reason"] == "history_lost"
    assert [e["id"] for e in stream(r, "{rt}:resets")] == [started["id"], reset["id"]]
    assert w.metric("realtime_watcher_resets_total", reason="history_lost") == 1
    assert "history is gone" in w.log()


def test_like_counts_are_read_again_after_a_reset(r: redis.Redis, standin: StandIn,
                                                  mongo_client: MongoClient[dict[str, Any]], watchers: Any) -> None:
    """Likes made while the history was lost are in no event: the count Redis held is stale after the reset, so
    it is forgotten and the next like's count is read from MongoDB (it stayed off for good)."""
    db = mongo_client.app
    w = leading(watchers("w").start(), r)
    db.posts.insert_one({"_id": "p1", "authorId": "u1"})
    db.likes.insert_one({"_id": "l1", "postId": "p1", "userId": "u2"})
    wait_for(lambda: r.hget("{rt}:likes", "p1") == b"1", "the first like counted")
    w.stop()
    db.likes.insert_many([{"_id": f"gap{i}", "postId": "p1", "userId": f"g{i}"} for i in range(5)])
    standin.truncate_oplog()
    db.checkpoints_noise.insert_one({})
    w.start()
    wait_for(lambda: any(e["type"] == ev.RESET and e["data"]["reason"] == "history_lost" for e in stream(r)),
             "the reset for the lost history")
    db.likes.insert_one({"_id": "after", "postId": "p1", "userId": "u9"})
    wait_for(lambda: [e for e in stream(r) if e["type"] == ev.POST_LIKED and e["data"]["id"] == "after"],
             "the like after the reset")
    liked = [e for e in stream(r) if e["type"] == ev.POST_LIKED and e["data"]["id"] == "after"]
    assert liked[0]["data"]["likes"] == 7 == db.likes.count_documents({"postId": "p1"})
    assert r.hget("{rt}:likes", "p1") == b"7"


def test_a_new_deployments_watcher_stopped_at_once_goes_on_where_its_stream_started(
        r: redis.Redis, mongo_client: MongoClient[dict[str, Any]], watchers: Any) -> None:
    """Pins: a new deployment's watcher stopped before its first checkpoint (its first read had not come back)
    started again from a later "now": what was written while it was down was never published."""
    w = leading(watchers("w", REALTIME_MAX_AWAIT_MS="5000").start(), r)  # its first read waits 5 s
    assert [e["data"]["reason"] for e in stream(r)] == ["stream_started"]
    w.kill(signal.SIGKILL)
    mongo_client.app.posts.insert_many([{"_id": f"down{i}", "authorId": "u1"} for i in range(5)])
    w.start()
    wait_for(lambda: len(published(stream(r))) == 5, "the posts written while it was down")
    time.sleep(0.5)
    assert [e["data"]["id"] for e in stream(r) if e["type"] == ev.POST_CREATED] == [f"down{i}" for i in range(5)]


def test_a_change_over_16_mb_is_published_as_a_reset_in_its_place(
        r: redis.Redis, mongo_client: MongoClient[dict[str, Any]], watchers: Any) -> None:
    """Pins: a change whose event MongoDB cannot send (over 16 MB with its pre- and post-image) stopped the stream
    for good, MongoDB closing it at each retry: nothing after it was ever published. The stream now sends its
    place alone, and the watcher publishes a reset marker there, then goes on."""
    w = leading(watchers("w").start(), r)
    db = mongo_client.app
    db.posts.insert_one({"_id": "big", "authorId": "u1", "text": "x" * 8_500_000})
    db.posts.update_one({"_id": "big"}, {"$set": {"views": 1}})  # the event would hold the post twice: 17 MB
    db.posts.insert_one({"_id": "after", "authorId": "u1"})
    db.likes.insert_one({"_id": "l1", "postId": "after", "userId": "u2"})
    wait_for(lambda: any(e["type"] == ev.POST_LIKED for e in stream(r)), "the like after it")
    events = stream(r)
    assert [(e["type"], e["data"].get("reason") or e["data"].get("id")) for e in events] == [
        (ev.RESET, "stream_started"), (ev.POST_CREATED, "big"), (ev.RESET, "event_too_large"),
        (ev.POST_CREATED, "after"), (ev.POST_LIKED, "l1"), (ev.NOTIFICATION_NEW, None)]
    marker = events[2]
    assert marker["rooms"] == [ev.ALL_ROOMS] and marker["data"] == {"reason": "event_too_large",
                                                                    "collection": "posts", "id": "big"}
    assert marker["id"] in [e["id"] for e in stream(r, "{rt}:resets")]
    assert events[1]["id"] < marker["id"] < events[3]["id"]
    assert w.metric("realtime_watcher_errors_total", kind="event_too_large") == 1  # refused once, then passed
    assert w.metric("realtime_watcher_skipped_total", reason="too_large") == 1
    assert "over MongoDB's 16 MB limit" in w.log()


def test_a_change_over_16_mb_inside_a_transaction_keeps_its_place_and_the_counts(
        r: redis.Redis, mongo_client: MongoClient[dict[str, Any]], watchers: Any) -> None:
    """The marker takes the change's own place among the transaction's changes (they share a cluster time), and
    the like counts after it are exact (Redis forgets those it held: they are read from MongoDB again)."""
    leading(watchers("w").start(), r)
    db = mongo_client.app
    db.posts.insert_one({"_id": "p", "authorId": "u1"})
    db.likes.insert_one({"_id": "big", "postId": "p", "userId": "u9", "pad": "x" * 9_000_000})
    with mongo_client.start_session() as session, session.start_transaction():
        db.likes.insert_one({"_id": "a", "postId": "p", "userId": "u2"}, session=session)
        db.likes.update_one({"_id": "big"}, {"$set": {"seen": True}}, session=session)  # 18 MB with its images
        db.likes.insert_one({"_id": "b", "postId": "p", "userId": "u3"}, session=session)
    wait_for(lambda: any(e["type"] == ev.POST_LIKED and e["data"]["id"] == "b" for e in stream(r)), "the last like")
    events = [e for e in stream(r) if e["type"] in (ev.POST_LIKED, ev.RESET)]
    assert [(e["type"], e["data"].get("reason") or e["data"]["id"]) for e in events] == [
        (ev.RESET, "stream_started"), (ev.POST_LIKED, "big"), (ev.POST_LIKED, "a"), (ev.RESET, "event_too_large"),
        (ev.POST_LIKED, "b")]
    ids = [parse_id(e["id"]) for e in events[2:]]
    assert ids == sorted(ids) and ids[0][0] == ids[1][0] == ids[2][0]  # one cluster time, in the changes' order
    assert [e["data"]["likes"] for e in events if e["type"] == ev.POST_LIKED] == [1, 2, 3]
    assert db.likes.count_documents({"postId": "p"}) == 3


def test_a_post_made_private_by_a_change_over_16_mb_leaks_nothing_to_public_rooms(
        r: redis.Redis, mongo_client: MongoClient[dict[str, Any]], watchers: Any) -> None:
    """Pins (found by an outside attack): the reactions that came after such a change in its transaction went to the
    post's public room: the post, read from MongoDB as of just before the transaction, was public still. Its routing
    is unknown for the rest of the transaction (nothing public), and read from MongoDB again after it."""
    leading(watchers("w").start(), r)
    db = mongo_client.app
    db.posts.insert_one({"_id": "p", "authorId": "u1", "visibility": "public", "text": "x" * 8_500_000})
    with mongo_client.start_session() as session, session.start_transaction():
        db.posts.update_one({"_id": "p"}, {"$set": {"visibility": "private", "text": "y" * 8_500_000}},
                            session=session)
        db.comments.insert_one({"_id": "c1", "postId": "p", "userId": "u2", "text": "private"}, session=session)
        db.likes.insert_one({"_id": "l1", "postId": "p", "userId": "u2"}, session=session)
    db.comments.insert_one({"_id": "c2", "postId": "p", "userId": "u3", "text": "private too"})
    wait_for(lambda: any(e["data"].get("id") == "c2" for e in stream(r)), "the comment after the transaction")
    events = stream(r)
    assert any(e["type"] == ev.RESET and e["data"].get("reason") == "event_too_large" for e in events)
    after = [e for e in events if e["data"].get("id") in ("c1", "l1", "c2")]
    assert after and all(room == "user:u1" for e in after for room in e["rooms"]), after
    assert [e["rooms"] for e in after if e["data"]["id"] == "c2"] == [["user:u1"]]  # MongoDB asked again


def test_quiet_database_keeps_the_checkpoint_moving(r: redis.Redis, mongo_client: MongoClient[dict[str, Any]],
                                                    watchers: Any) -> None:
    watchers("w").start()
    wait_for(lambda: leader(r) == "w", "w to lead")
    checkpoints = mongo_client.realtime_meta.checkpoints

    def token() -> str | None:
        doc = checkpoints.find_one({"_id": "app/rt"})
        return doc["token"]["_data"] if doc else None

    first = wait_for(token, "a first checkpoint")
    second = wait_for(lambda: (t := token()) is not None and t > first and t, "the checkpoint to advance")
    wait_for(lambda: (t := token()) is not None and t > second, "the checkpoint to advance again")
    assert [(e["type"], e["data"]) for e in stream(r)] == [(ev.RESET, {"reason": "stream_started"})]


def test_redis_data_loss_republishes_with_the_same_ids(r: redis.Redis, mongo_client: MongoClient[dict[str, Any]],
                                                       watchers: Any) -> None:
    start = start_time(mongo_client)
    w = leading(watchers("w").start(), r)
    producer = Producer(mongo_client, "app", seed=5)
    producer.run(300)
    before = check_stream(r, mongo_client, start)
    first = published(stream(r))
    w.kill(signal.SIGKILL)
    r.flushall()
    w.start()
    wait_for(lambda: len(published(stream(r))) >= len(first), "the events to be published again")
    assert published(stream(r)) == first
    events = stream(r)
    assert events[0]["type"] == ev.RESET and events[0]["data"]["reason"] == "redis_data_lost"
    assert events[0]["id"] < events[1]["id"]
    check_counts(r, mongo_client)
    assert len(before) >= 300


def test_the_watcher_records_the_full_document_mode_it_reads_changes_with(
        r: redis.Redis, mongo_client: MongoClient[dict[str, Any]], watchers: Any) -> None:
    """Replays from the oplog read changes as the watchers did: with the mode they record, from when they did."""
    def mode() -> tuple[bytes | None, int]:
        got = r.hmget("{rt}:meta", ["full_document", "full_document_since"])
        return got[0], int(got[1] or 0)

    w = leading(watchers("w").start(), r)
    first = wait_for(lambda: mode()[0] == b"updateLookup" and mode(), "the mode recorded")
    mongo_client.app.posts.insert_one({"_id": "p", "authorId": "u1"})
    wait_for(lambda: published(stream(r)), "the post")
    w.stop()
    again = leading(watchers("again").start(), r)  # the same mode: it holds from when it was first recorded
    wait_for(lambda: streaming(again), "the second watcher to stream")
    assert mode() == first
    again.stop()
    other = leading(watchers("other", REALTIME_FULL_DOCUMENT="whenAvailable").start(), r)
    wait_for(lambda: streaming(other), "the third watcher to stream")
    got, read_before = mode(), ev.parse_id(published(stream(r))[-1][0])[0]  # the post, read with updateLookup
    # From strictly after every change read with the old mode; never before the old mode's start (the two may
    # coincide: the third stream resumes just after the post, which can share the first stream's start time).
    assert got[0] == b"whenAvailable" and got[1] > read_before and got[1] >= first[1]
