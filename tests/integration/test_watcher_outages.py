"""The watcher through outages of Redis and MongoDB: killed, frozen, refusing, at start, while leading, while
standing by. The process lives through each, says so on /readyz, in its metrics and once in its log, and the
global stream ends up holding every change once, in order, with the ids the changes give."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from pymongo import MongoClient

from realtime import events as ev
from realtime.standin import StandIn
from tests.conftest import TIMEOUT
from tests.integration.producer import Producer
from tests.integration.watcherkit import (
    Proxy,
    RedisProcess,
    WatcherProcess,
    alive,
    check_counts,
    check_stream,
    expected_events,
    leader,
    leading,
    published,
    reference,
    start_time,
    stream,
    streaming,
    wait_for,
)

pytestmark = [pytest.mark.integration]

OUTAGE = 4.0  # seconds each outage lasts: four lease times of the tests' watchers


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def r(redis_proc: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_proc.port, socket_timeout=TIMEOUT)
    yield client
    client.close()


@pytest.fixture
def proxies() -> Iterator[Any]:
    started: list[Proxy] = []

    def make(port: int) -> Proxy:
        proxy = Proxy(port).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def watchers(standin: StandIn, redis_proc: RedisProcess, tmp_path: Path) -> Iterator[Any]:
    started: list[WatcherProcess] = []

    def make(name: str, mongo_uri: str | None = None, redis_url: str | None = None, **env: str) -> WatcherProcess:
        w = WatcherProcess(mongo_uri or standin.uri, redis_url or redis_proc.url, tmp_path, name, **env)
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


def ready(w: WatcherProcess) -> tuple[int, dict[str, Any]]:
    status, body = w.get("/readyz")
    return status, orjson.loads(body) if body else {}


def not_ready_because(w: WatcherProcess, dependency: str) -> bool:
    status, body = ready(w)
    return status == 503 and any(p.startswith(f"{dependency}:") for p in body.get("problems", []))


class Writes:
    """A producer writing in the background while a test runs its faults."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.producer.step()
            time.sleep(0.005)

    def __enter__(self) -> Producer:
        self.thread.start()
        return self.producer

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


def via(proxy: Proxy, what: str) -> str:
    """The URL a watcher uses to reach Redis or MongoDB through ``proxy``."""
    if what == "redis":
        return f"redis://127.0.0.1:{proxy.port}/0"
    return f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true"


def port_of(standin: StandIn) -> int:
    return int(standin.address.rsplit(":", 1)[1])


def checkpoint_at(client: MongoClient[dict[str, Any]]) -> tuple[int, int]:
    doc = client.realtime_meta.checkpoints.find_one({"_id": "app/rt"}) or {}
    head, _, tail = str(doc.get("at", "-1:-1")).partition(":")
    return int(head), int(tail)


def redis_at(r: redis.Redis) -> tuple[int, int]:
    head, _, tail = (r.hget("{rt}:meta", "at") or b"-1:-1").decode().partition(":")
    return int(head), int(tail)


def one_outage_logged(w: WatcherProcess, dependency: str) -> None:
    log = w.log()
    assert log.count(f"{dependency} is unavailable") == 1, "one line per outage, not one per retry"
    assert log.count(f"{dependency} is available again") == 1
    assert "Traceback" not in log
    assert w.metric("realtime_watcher_outages_total", dependency=dependency) == 1
    assert w.metric("realtime_watcher_outage_retries_total", dependency=dependency) >= 1
    assert w.metric("realtime_watcher_dependency_up", dependency=dependency) == 1


@pytest.mark.parametrize("data", ["kept", "lost"])
def test_leader_lives_through_redis_killed_and_restarted(data: str, r: redis.Redis, redis_proc: RedisProcess,
                                                         mongo_client: MongoClient[dict[str, Any]],
                                                         watchers: Any) -> None:
    """Pins: the leading watcher exited with a traceback when Redis went away (resume_point in the except).

    Restarted with its data, Redis gets every change once; restarted without (a data loss), a reset marker and
    then the MongoDB checkpoint's retention window published again, with the same ids."""
    redis_proc.start()
    start = start_time(mongo_client)
    w = leading(watchers("w").start(), r)
    with Writes(Producer(mongo_client, "app", seed=21)) as producer:
        assert producer.wait_for(200, TIMEOUT * 3)
        redis_proc.kill()
        if data == "lost":
            redis_proc.wipe()
        wait_for(lambda: not_ready_because(w, "redis"), "/readyz to report Redis")
        time.sleep(OUTAGE)
        assert alive(w), "the watcher lives through the outage"
        assert w.metric("realtime_watcher_dependency_up", dependency="redis") == 0
        redis_proc.start()
        wait_for(lambda: streaming(w) and ready(w)[0] == 200, "w to lead again")
        assert producer.wait_for(producer.changes + 200, TIMEOUT * 3)
    check_stream(r, mongo_client, start)
    check_counts(r, mongo_client)
    assert alive(w)
    one_outage_logged(w, "redis")
    events = stream(r)
    resets = [e["data"]["reason"] for e in events if e["type"] == ev.RESET]
    if data == "kept":
        assert resets == ["stream_started"]  # the deployment's first stream: none through the outage
    else:
        assert resets == ["redis_data_lost"] and events[0]["type"] == ev.RESET


def test_redis_back_with_older_data_gets_what_it_lost_again(tmp_path: Path, standin: StandIn,
                                                             mongo_client: MongoClient[dict[str, Any]],
                                                             watchers: Any) -> None:
    """Pins: after Redis came back from an older snapshot, the watcher resumed from its newer checkpoint and
    the changes in between were never published."""
    snapshots = RedisProcess(tmp_path / "snapshots", appendonly=False).start()
    r = redis.Redis(port=snapshots.port, socket_timeout=TIMEOUT)
    try:
        start = start_time(mongo_client)
        w = leading(watchers("w", redis_url=snapshots.url).start(), r)
        producer = Producer(mongo_client, "app", seed=23)
        producer.run(150)
        wait_for(lambda: checkpoint_at(mongo_client) >= redis_at(r) > (-1, -1), "a checkpoint of the first writes")
        r.save()  # what Redis will come back with
        saved = redis_at(r)
        producer.run(300)
        wait_for(lambda: checkpoint_at(mongo_client) >= redis_at(r) > saved, "a checkpoint past the snapshot")
        snapshots.kill()
        snapshots.start()  # within the lease time: the watcher's lease is in the snapshot, still valid
        assert redis_at(r) == saved, "Redis came back with the older data"
        producer.run(350)  # the next change finds Redis behind
        check_stream(r, mongo_client, start)
        check_counts(r, mongo_client)
        assert w.metric("realtime_watcher_resets_total") == 0, "the oplog holds it all: no reset"
        assert alive(w)
    finally:
        r.close()
        snapshots.stop()


@pytest.mark.parametrize("dependency", ["redis", "mongodb"])
def test_watcher_started_while_a_dependency_is_unreachable(
        dependency: str, r: redis.Redis, redis_proc: RedisProcess, standin: StandIn,
        mongo_client: MongoClient[dict[str, Any]], watchers: Any, proxies: Any) -> None:
    """A watcher (re)started while Redis or MongoDB refuses connections waits, says so, and then publishes
    everything written meanwhile."""
    redis_proc.start()
    proxy = {"redis": proxies(redis_proc.port), "mongodb": proxies(port_of(standin))}
    start = start_time(mongo_client)
    w = leading(watchers("w", redis_url=via(proxy["redis"], "redis"), mongo_uri=via(proxy["mongodb"], "mongodb"),
                 REALTIME_STALL_SECONDS="1").start(), r)
    producer = Producer(mongo_client, "app", seed=24)
    producer.run(100)
    wait_for(lambda: checkpoint_at(mongo_client) >= redis_at(r) > (-1, -1), "a checkpoint")
    assert w.stop() == 0
    proxy[dependency].refuse()
    with Writes(producer):
        w.start()
        wait_for(lambda: not_ready_because(w, dependency), f"/readyz to report {dependency}")
        time.sleep(OUTAGE)
        assert alive(w)
        assert w.metric("realtime_watcher_dependency_up", dependency=dependency) == 0
        status, body = w.get("/healthz")
        assert status == 200, "waiting for a dependency is healthy: a restart would not help"
        assert f"waiting for {dependency}" in orjson.loads(body)["state"]
        proxy[dependency].forward()
        wait_for(lambda: streaming(w) and ready(w)[0] == 200, "w to lead")
        assert producer.wait_for(producer.changes + 100, TIMEOUT * 3)
    check_stream(r, mongo_client, start)
    check_counts(r, mongo_client)
    one_outage_logged(w, dependency)


@pytest.mark.parametrize("fault", ["refuse", "hang"])
def test_leader_lives_through_mongodb_unreachable(
        fault: str, r: redis.Redis, redis_proc: RedisProcess, standin: StandIn,
        mongo_client: MongoClient[dict[str, Any]], watchers: Any, proxies: Any) -> None:
    """MongoDB refusing (as when it is killed and started again) or hanging while the watcher tails it."""
    redis_proc.start()
    proxy = proxies(port_of(standin))
    start = start_time(mongo_client)
    w = leading(watchers("w", mongo_uri=via(proxy, "mongodb"), REALTIME_STALL_SECONDS="1").start(), r)
    with Writes(Producer(mongo_client, "app", seed=25)) as producer:
        assert producer.wait_for(200, TIMEOUT * 3)
        proxy.refuse() if fault == "refuse" else proxy.hang()
        wait_for(lambda: not_ready_because(w, "mongodb"), "/readyz to report MongoDB")
        time.sleep(OUTAGE)
        assert alive(w)
        assert w.metric("realtime_watcher_dependency_up", dependency="mongodb") == 0
        status, body = w.get("/healthz")
        assert (status, orjson.loads(body)["state"]) == (200, "leader, waiting for mongodb")
        proxy.forward()
        wait_for(lambda: streaming(w) and ready(w)[0] == 200, "w to stream again", timeout=TIMEOUT * 3)
        assert producer.wait_for(producer.changes + 200, TIMEOUT * 3)
    check_stream(r, mongo_client, start)
    check_counts(r, mongo_client)
    assert leader(r) == "w"
    one_outage_logged(w, "mongodb")


def test_leader_lives_through_a_frozen_redis(r: redis.Redis, redis_proc: RedisProcess,
                                             mongo_client: MongoClient[dict[str, Any]], watchers: Any) -> None:
    """Redis stopped (SIGSTOP: connections open, no answer): every call times out, none waits forever, and the
    commands Redis runs late when it wakes up publish nothing twice."""
    redis_proc.start()
    start = start_time(mongo_client)
    w = leading(watchers("w").start(), r)
    with Writes(Producer(mongo_client, "app", seed=26)) as producer:
        assert producer.wait_for(200, TIMEOUT * 3)
        redis_proc.signal(signal.SIGSTOP)
        try:
            wait_for(lambda: not_ready_because(w, "redis"), "/readyz to report Redis")
            time.sleep(OUTAGE)
            assert alive(w)
            assert w.metric("realtime_watcher_leader") == 0, "unrenewed for a lease time: no longer the leader"
        finally:
            redis_proc.signal(signal.SIGCONT)
        wait_for(lambda: streaming(w) and ready(w)[0] == 200, "w to lead again")
        assert producer.wait_for(producer.changes + 200, TIMEOUT * 3)
    check_stream(r, mongo_client, start)
    check_counts(r, mongo_client)
    one_outage_logged(w, "redis")


def test_leader_cut_off_from_redis_comes_back_as_a_standby(
        r: redis.Redis, redis_proc: RedisProcess, mongo_client: MongoClient[dict[str, Any]], watchers: Any,
        proxies: Any) -> None:
    """The leader loses Redis (a partition: its commands hang) for longer than the lease; a standby takes over;
    the old leader comes back as a standby and its late commands are fenced off."""
    redis_proc.start()
    proxy = proxies(redis_proc.port)
    start = start_time(mongo_client)
    a = leading(watchers("a", redis_url=via(proxy, "redis")).start(), r)
    b = watchers("b").start()
    wait_for(lambda: ready(b)[0] == 200, "b to stand by")
    with Writes(Producer(mongo_client, "app", seed=27)) as producer:
        assert producer.wait_for(200, TIMEOUT * 3)
        proxy.hang()
        wait_for(lambda: leader(r) == "b" and streaming(b), "b to take over")
        time.sleep(OUTAGE)
        assert alive(a)
        assert a.metric("realtime_watcher_leader") == 0
        proxy.forward()
        wait_for(lambda: ready(a)[0] == 200, "a to be ready again")
        assert producer.wait_for(producer.changes + 200, TIMEOUT * 3)
    check_stream(r, mongo_client, start)
    check_counts(r, mongo_client)
    status, body = ready(a)
    assert (status, body["leader"]) == (200, False), "a came back as a standby"
    assert leader(r) == "b" and b.metric("realtime_watcher_leader") == 1
    assert "a lost the lease; back to standby" in a.log()
    one_outage_logged(a, "redis")
    assert b.metric("realtime_watcher_outages_total") == 0


def test_a_failed_post_lookup_is_retried_not_skipped(r: redis.Redis, redis_proc: RedisProcess, standin: StandIn,
                                                     mongo_client: MongoClient[dict[str, Any]],
                                                     watchers: Any) -> None:
    """Pins: a MongoDB outage while the watcher looked up a like's post skipped the like as a bad document."""
    redis_proc.start()
    start = start_time(mongo_client)
    mongo_client.app.posts.insert_one({"_id": "p", "authorId": "u1"})  # before the watcher: not in its cache
    w = leading(watchers("w").start(), r)
    wait_for(lambda: mongo_client.realtime_meta.checkpoints.find_one({"_id": "app/rt"}), "a first checkpoint")
    # the lookup (a snapshot aggregate; find as of now), and the driver's one retry
    standin.fail_command(["aggregate", "find"], times=2, close_connection=True)
    mongo_client.app.likes.insert_one({"_id": "l", "postId": "p", "userId": "u2"})
    changes = list(reference(mongo_client, "app", start))
    expected = expected_events(changes)
    assert expected[0][1] == ev.POST_CREATED
    wait_for(lambda: published(stream(r)), "the like's events")
    assert published(stream(r)) == expected[1:]
    assert w.metric("realtime_watcher_skipped_total", reason="bad_document") == 0
    assert alive(w)
    one_outage_logged(w, "mongodb")


def test_an_outage_during_the_republishing_after_a_data_loss(
        r: redis.Redis, redis_proc: RedisProcess, tmp_path: Path, mongo_client: MongoClient[dict[str, Any]],
        standin: StandIn, watchers: Any) -> None:
    """Pins: when MongoDB failed between the reset marker of a Redis data loss and the first change published
    again, the retry took the reset marker for published history and went on from the checkpoint."""
    redis_proc.start()
    mongo_client.app.posts.insert_one({"_id": "p", "authorId": "u1"})
    w = leading(watchers("w").start(), r)
    with mongo_client.start_session() as session:
        mongo_client.app.likes.insert_one({"_id": "l", "postId": "p", "userId": "u2"}, session=session)
        liked_at = session.operation_time
    wait_for(lambda: published(stream(r)), "the like's events")
    first = published(stream(r))
    wait_for(lambda: checkpoint_at(mongo_client) >= redis_at(r) > (-1, -1), "a checkpoint past the like")
    w.kill(signal.SIGKILL)
    r.flushall()
    # The oplog keeps the like and what follows it: the like is the first change to publish again, and its
    # post (not in the watcher's cache) must be looked up, which fails (after the checkpoint's own lookup).
    assert liked_at is not None
    standin.truncate_oplog(keep_last=len(standin.call(lambda: standin.oplog.since(liked_at))) + 1)
    mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": {"skip": 1},
                                "data": {"failCommands": ["find"], "closeConnection": True}})
    try:
        w.start()
        wait_for(lambda: [e["type"] for e in stream(r)] == [ev.RESET], "the reset marker")
        wait_for(lambda: w.metric("realtime_watcher_outage_retries_total", dependency="mongodb") >= 1,
                 "the failed lookup")
    finally:
        mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    wait_for(lambda: published(stream(r)), "the like published again")
    # The same events, with the same ids and counts. Their rooms may be narrower: with the post index lost and
    # the oplog truncated, MongoDB cannot say what the post was as of the like, so routing fails closed to the
    # author's room (docs/events.md, private posts).
    assert [(i, kind, likes) for i, kind, _, likes in published(stream(r))] == \
        [(i, kind, likes) for i, kind, _, likes in first]
    assert [e["type"] for e in stream(r)] == [ev.RESET, *(e[1] for e in first)], "one reset marker"
    assert alive(w)


def test_a_new_deployments_first_stream_fails_and_starts_again_where_it_did(
        r: redis.Redis, redis_proc: RedisProcess, mongo_client: MongoClient[dict[str, Any]], watchers: Any) -> None:
    """Pins: when the first stream of a new deployment failed before its first checkpoint, the retry started
    at a new "now", and what was written in between was never published."""
    redis_proc.start()
    # An error the driver does not resume from by itself (after a dropped connection it resumes quietly).
    mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": "alwaysOn",
                                "data": {"failCommands": ["getMore"], "errorCode": 2}})
    try:
        start = start_time(mongo_client)
        w = watchers("w").start()
        wait_for(lambda: w.metric("realtime_watcher_errors_total", kind="OperationFailure") >= 1,
                 "the first stream to fail")
        mongo_client.app.posts.insert_one({"_id": "p", "authorId": "u1"})
        time.sleep(1.0)  # the watcher retries meanwhile
    finally:
        mongo_client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    check_stream(r, mongo_client, start)
    assert [(e["type"], e["data"].get("id")) for e in stream(r)] == [(ev.RESET, None), (ev.POST_CREATED, "p")], \
        "one reset marker before the first stream, not one per attempt"
    assert alive(w)
