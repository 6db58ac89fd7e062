#!/usr/bin/env python
"""Watcher benchmark: how fast changes go from MongoDB through the watcher into Redis, and how late.

Not a test: it measures. Everything runs on this machine, each in a process of its own: a private
``redis-server``, the MongoDB stand-in (``python -m realtime mongo``), the watcher (``python -m watchers``)
and a reader that stamps each event as it arrives (``XREAD BLOCK``). The producer (threads in this process,
PyMongo sync) writes a realistic mix: like inserts (~50%), comments (~25%, inserts and edits), post edits
(~15%) and new posts (~10%), some of the like and comment inserts in a transaction with a counter update
on their post (``--txn-fraction``).

Two phases:

* **live**: the watcher tails the stream while the producer writes ``--changes`` changes. Throughput is
  changes / (last event's arrival - first change's wall time); latency, per event, is its arrival in the
  reader minus the change's wall time (the envelope's ``ts``): the publish latency plus one ``XREAD`` hop.
  When the producer is slower than the watcher, live throughput is the producer's rate; hence:
* **backlog**: the watcher is stopped (SIGTERM), ``--changes`` more changes are written, the watcher is
  started again, and the time it takes to publish them all is the watcher's own maximum rate.

Each phase ends with a sentinel like whose event marks "everything before it is published". At the end the
results are checked cheaply (post:liked events = like inserts; like counters in Redis = count_documents)
and written to ``bench/results/watcher.json`` and the ``## Watcher`` section of ``docs/benchmarks.md``.

    python bench/watcher_bench.py [--changes 5000] [--concurrency 4] [--txn-fraction 0.1] [--seconds-max 300]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchkit
import orjson
import pymongo
import redis
from benchkit import DOCS, ROOT, free_port, git, log, replace_section
from pymongo import MongoClient
from pymongo.client_session import ClientSession
from pymongo.database import Database

RESULTS = ROOT / "bench" / "results" / "watcher.json"
DB = "bench"
PREFIX = "rt"
EVENTS_KEY = "{" + PREFIX + "}:events"
LIKES_KEY = "{" + PREFIX + "}:likes"
SEEDED_KEY = "{" + PREFIX + "}:likes:since"  # one field per post whose like count the watcher read from MongoDB
META_KEY = "{" + PREFIX + "}:meta"
READY = re.compile(r"MongoDB stand-in listening: (mongodb://\S+)")
PRE_POSTS = 200
PRE_COMMENTS = 400
USERS = 500
TAGS = [f"tag{i}" for i in range(30)]
SENTINEL_POST = "p0"
VOCABULARY = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do", "eiusmod",
              "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua"]
Row = tuple[float, str, str, int, Any]  # arrival (time.time()), entry id, type, envelope ts (ms), data.id


class BenchTimeout(Exception):
    pass


# -- processes -------------------------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    target_pid: int | None = None  # the Python process itself when it runs under py-spy

    def signal(self, sig: int) -> None:
        pid = self.target_pid or self.popen.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait (bounded), then SIGKILL. Returns the exit status."""
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not exit within {timeout}s of SIGTERM; killing it")
                self.signal(signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return self.popen.wait(timeout=5)
        return self.popen.poll()

    def tail(self, lines: int = 20) -> str:
        return benchkit.tail(self.log_path, lines)


@dataclass
class Stack:
    workdir: Path
    profile_dir: Path | None
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, profile: bool = False,
              stdout: int | None = subprocess.DEVNULL) -> Proc:
        log_path = self.workdir / f"{name}.log"
        if profile and self.profile_dir is not None:
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            out = self.profile_dir / f"{name}.txt"
            argv = [spy, "record", "--rate", "200", "--format", "raw", "--output", str(out), "--", *argv]
        with log_path.open("ab") as err:
            popen = subprocess.Popen(argv, stdout=stdout, stderr=err, env=env, cwd=ROOT)
        proc = Proc(name, popen, log_path)
        if profile and self.profile_dir is not None:
            proc.target_pid = _child_of(popen.pid)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=5)

    def log_summary(self) -> dict[str, Any]:
        """Per process: how many log lines at each level, and the first few warnings and errors."""
        out: dict[str, Any] = {}
        for proc in self.procs:
            levels: Counter[str] = Counter()
            notable: list[str] = []
            with contextlib.suppress(OSError):
                for line in proc.log_path.read_text(errors="replace").splitlines():
                    found = re.search(r" (DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line)
                    if found:
                        levels[found.group(1)] += 1
                        if found.group(1) in ("WARNING", "ERROR", "CRITICAL") and len(notable) < 5:
                            notable.append(line[:300])
            out[proc.name] = {"levels": dict(levels), "notable": notable}
        return out


def _child_of(pid: int, timeout: float = 5.0) -> int:
    """The (first) child of ``pid``: the profiled Python process under py-spy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                if children:
                    return int(children[0])
        time.sleep(0.02)
    raise RuntimeError(f"py-spy (pid {pid}) started no child")


def start_redis(stack: Stack) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    stack.spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", str(stack.workdir), "--logfile", str(stack.workdir / "redis-server.log")])
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    return url


def start_standin(stack: Stack) -> str:
    port = free_port()
    proc = stack.spawn("standin", [sys.executable, "-m", "realtime", "mongo", "--port", str(port)],
                       profile=True, stdout=subprocess.PIPE)
    assert proc.popen.stdout is not None
    fd = proc.popen.stdout.fileno()
    deadline = time.monotonic() + 20
    buffer = b""
    while (match := READY.search(buffer.decode(errors="replace"))) is None:  # py-spy may print lines first
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.popen.poll() is not None:
            raise RuntimeError(f"the stand-in did not start: {buffer!r}\n{proc.tail()}")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the stand-in exited: {buffer!r}\n{proc.tail()}")
            buffer += chunk
    return match.group(1)


def start_watcher(stack: Stack, name: str, mongo_uri: str, redis_url: str, http_port: int, *,
                  profile: bool) -> Proc:
    env = dict(os.environ)
    env.update({"MONGODB_URI": mongo_uri, "REDIS_URL": redis_url, "MONGODB_DB": DB,
                "REALTIME_WATCHER_HTTP": f"127.0.0.1:{http_port}", "REALTIME_REDIS_PREFIX": PREFIX,
                "REALTIME_WATCHER_NAME": "bench-watcher", "REALTIME_LEASE_SECONDS": "5"})
    return stack.spawn(name, [sys.executable, "-m", "watchers"], env=env, profile=profile)


def start_server(stack: Stack, name: str, redis_url: str, *, mongo_uri: str | None = None,
                 extra: dict[str, str] | None = None, profile: Path | None = None,
                 deadline: float | None = None) -> tuple[Proc, int]:
    """A realtime server (anonymous, one worker) on a free port, ready (its /readyz answers 200) within 30 s
    or by ``deadline``; with ``mongo_uri``, deep replay reads that MongoDB; ``profile``: a cProfile output."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    env.update({"REDIS_URL": redis_url, "REALTIME_LISTEN": f"127.0.0.1:{port}", "REALTIME_ALLOW_ANONYMOUS": "true",
                "REALTIME_REDIS_PREFIX": PREFIX, "PYTHONUNBUFFERED": "1", **(extra or {})})
    if mongo_uri is not None:
        env.update({"MONGODB_URI": mongo_uri, "MONGODB_DB": DB})
    prof = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    proc = stack.spawn(name, [sys.executable, *prof, "-m", "realtime", "--log-level", "WARNING", "serve"], env=env)
    until = time.monotonic() + 30 if deadline is None else min(deadline, time.monotonic() + 30)
    while True:
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            if reply.status == 200:
                return proc, port
        if proc.popen.poll() is not None or time.monotonic() > until:
            raise RuntimeError(f"the server did not become ready:\n{proc.tail()}")
        time.sleep(0.1)


def fresh_database(client: MongoClient[dict[str, Any]]) -> None:
    """Drop the benchmark's database and create its collections with pre- and post-images on."""
    client.drop_database(DB)
    for name in ("posts", "likes", "comments"):
        client[DB].create_collection(name, changeStreamPreAndPostImages={"enabled": True})


def scrape(port: int) -> dict[str, float]:
    """The watcher's counters, summed over their labels (``{}`` when the endpoint does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


# -- the reader --------------------------------------------------------------------------------------------

def reader_main(url: str, key: str, conn: multiprocessing.connection.Connection) -> None:
    """In its own process: XREAD BLOCK the global stream, stamp each entry's arrival with time.time()."""
    client = redis.Redis.from_url(url)
    newest: Any = client.xrevrange(key, count=1)
    last: bytes | str = newest[0][0] if newest else "0-0"
    rows: list[tuple[float, bytes, bytes]] = []
    conn.send(("ready", time.time()))
    while not conn.poll():
        reply: Any = client.xread({key: last}, count=10_000, block=100)
        now = time.time()
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                env = fields[b"e"]
                rows.append((now, entry_id, env))
                if b'"id":"sentinel-' in env:
                    conn.send(("sentinel", orjson.loads(env)["data"]["id"], now))
            if entries:
                last = entries[-1][0]
    out = []
    for now, entry_id, env in rows:
        e = orjson.loads(env)
        out.append((now, entry_id.decode(), e["type"], e["ts"], (e.get("data") or {}).get("id")))
    conn.send(("rows", out))
    client.close()


class Reader:
    def __init__(self, redis_url: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=reader_main, args=(redis_url, EVENTS_KEY, child), daemon=True)
        self.process.start()
        child.close()
        self.sentinels: dict[str, float] = {}
        self.rows: list[Row] = []
        kind, _ = self._recv(20)
        assert kind == "ready"

    def _recv(self, timeout: float) -> tuple[str, Any]:
        if not self.conn.poll(max(timeout, 0)):
            raise BenchTimeout(f"the reader sent nothing within {timeout:.0f}s")
        try:
            msg = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the reader process exited (status {self.process.exitcode})") from None
        return msg[0], msg[1:]

    def wait_sentinel(self, name: str, deadline: float, watcher: Proc) -> float:
        """The arrival time of the sentinel's event; fails early when the watcher exits meanwhile."""
        while name not in self.sentinels:
            if watcher.popen.poll() is not None:
                raise RuntimeError(f"the watcher exited ({watcher.popen.returncode}):\n{watcher.tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchTimeout(f"{name} was not published in time")
            if not self.conn.poll(min(remaining, 1.0)):
                continue
            kind, rest = self._recv(0)
            if kind == "sentinel":
                self.sentinels[rest[0]] = rest[1]
        return self.sentinels[name]

    def finish(self, timeout: float = 30) -> list[Row]:
        self.conn.send("stop")
        deadline = time.monotonic() + timeout
        while True:
            kind, rest = self._recv(deadline - time.monotonic())
            if kind == "rows":
                self.rows = rest[0]
                break
            if kind == "sentinel":
                self.sentinels[rest[0]] = rest[1]
        self.process.join(5)
        return self.rows

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


# -- the producer -------------------------------------------------------------------------------------------

@dataclass
class Op:
    kind: str  # like, comment, comment_edit, post_edit, post
    doc_id: str
    post_id: str
    user: str
    txn: bool = False

    @property
    def changes(self) -> int:
        return 2 if self.txn else 1


@dataclass
class Tally:
    ops: Counter[str] = field(default_factory=Counter)
    changes: int = 0
    like_inserts: int = 0
    txn_retries: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: Op) -> None:
        with self.lock:
            self.ops[op.kind + (" (txn)" if op.txn else "")] += 1
            self.changes += op.changes
            self.like_inserts += op.kind == "like"


def plan(rng: random.Random, phase: str, changes: int, concurrency: int, txn_fraction: float,
         newest: float = 0.0) -> list[list[Op]]:
    """The operations of each producer thread: about ``changes`` changes in all (a transaction counts 2).
    ``newest``: the share of likes that go to one of the lane's ten newest posts (first likes of a post, whose
    count the watcher reads from MongoDB)."""
    lanes: list[list[Op]] = [[] for _ in range(concurrency)]
    new_posts: list[list[str]] = [[] for _ in range(concurrency)]
    hot = [f"p{i}" for i in range(PRE_POSTS // 10)]
    posts = [f"p{i}" for i in range(PRE_POSTS)]
    total, n = 0, 0
    while total < changes:
        lane = n % concurrency
        user = f"u{rng.randrange(USERS)}"
        roll = rng.random()
        pool = posts + new_posts[lane]  # a lane likes only posts it knows exist already
        post = rng.choice(hot) if rng.random() < 0.4 else rng.choice(pool)
        if roll < 0.50 and new_posts[lane] and rng.random() < newest:
            post = rng.choice(new_posts[lane][-10:])
        if roll < 0.50:
            op = Op("like", f"{phase}-l{n}", post, user, txn=rng.random() < txn_fraction)
        elif roll < 0.75:
            if rng.random() < 0.2:
                op = Op("comment_edit", f"c{rng.randrange(PRE_COMMENTS)}", post, user)
            else:
                op = Op("comment", f"{phase}-c{n}", post, user, txn=rng.random() < txn_fraction)
        elif roll < 0.90:
            op = Op("post_edit", rng.choice(posts), "", user)
        else:
            op = Op("post", f"{phase}-p{n}", "", user)
            new_posts[lane].append(op.doc_id)
        if total + op.changes > changes:
            op.txn = False
        lanes[lane].append(op)
        total += op.changes
        n += 1
    return lanes


def _text(rng: random.Random, words: int) -> str:
    vocabulary = VOCABULARY
    return " ".join(rng.choice(vocabulary) for _ in range(words))


def post_doc(rng: random.Random, post_id: str, author: str) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {"_id": post_id, "authorId": author, "title": _text(rng, 6), "text": _text(rng, 40),
            "hashtags": rng.sample(TAGS, rng.randrange(4)),
            "visibility": "public" if rng.random() < 0.9 else "followers",
            "likeCount": 0, "commentCount": 0, "createdAt": now, "updatedAt": now}


def execute(db: Database[dict[str, Any]], client: MongoClient[dict[str, Any]], op: Op, rng: random.Random,
            tally: Tally) -> None:
    now = dt.datetime.now(dt.UTC)
    if op.kind == "like":
        doc: dict[str, Any] = {"_id": op.doc_id, "postId": op.post_id, "userId": op.user, "createdAt": now}
        counter = "likeCount"
    elif op.kind == "comment":
        doc = {"_id": op.doc_id, "postId": op.post_id, "userId": op.user, "text": _text(rng, 12), "createdAt": now}
        counter = "commentCount"
    elif op.kind == "comment_edit":
        db.comments.update_one({"_id": op.doc_id}, {"$set": {"text": _text(rng, 12), "updatedAt": now}})
        return tally.add(op)
    elif op.kind == "post_edit":
        db.posts.update_one({"_id": op.doc_id}, {"$set": {"text": _text(rng, 40), "updatedAt": now}})
        return tally.add(op)
    else:
        db.posts.insert_one(post_doc(rng, op.doc_id, op.user))
        return tally.add(op)
    coll = db.likes if op.kind == "like" else db.comments
    if not op.txn:
        coll.insert_one(doc)
        return tally.add(op)
    attempts = 0

    def body(session: ClientSession) -> None:
        nonlocal attempts
        attempts += 1
        coll.insert_one(doc, session=session)
        db.posts.update_one({"_id": op.post_id}, {"$inc": {counter: 1}}, session=session)

    with client.start_session() as session:
        session.with_transaction(body)
    with tally.lock:
        tally.txn_retries += attempts - 1
    tally.add(op)


def produce(client: MongoClient[dict[str, Any]], lanes: list[list[Op]], seed: int, stop: threading.Event,
            deadline: float, rate: float = 0.0) -> Tally:
    """Run each lane on a thread of its own; ``rate`` > 0 paces all of them together to that many changes
    per second (open loop: a lane that falls behind does not sleep until it has caught up)."""
    db = client[DB]
    tally = Tally()
    errors: list[BaseException] = []

    def lane(k: int, ops: list[Op]) -> None:
        rng = random.Random(seed * 1000 + k)
        interval = len(lanes) / rate if rate > 0 else 0.0
        due = time.monotonic()
        try:
            for op in ops:
                if stop.is_set() or time.monotonic() > deadline:
                    return
                if interval:
                    ahead = due - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                    due += interval * op.changes
                execute(db, client, op, rng, tally)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    started = time.perf_counter()
    threads = [threading.Thread(target=lane, args=(k, ops), daemon=True, name=f"producer-{k}")
               for k, ops in enumerate(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.1))
    tally.seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads) or time.monotonic() > deadline:
        stop.set()
        raise BenchTimeout("the producer did not finish in time")
    return tally


def sentinel(client: MongoClient[dict[str, Any]], phase: str, tally: Tally) -> None:
    """A like whose event, once published, says every change before it is published."""
    op = Op("like", f"sentinel-{phase}", SENTINEL_POST, "u-bench")
    client[DB].likes.insert_one({"_id": op.doc_id, "postId": op.post_id, "userId": op.user,
                                 "createdAt": dt.datetime.now(dt.UTC)})
    tally.add(op)


def prepare(client: MongoClient[dict[str, Any]], rng: random.Random) -> None:
    db = client[DB]
    fresh_database(client)
    for name in ("likes", "comments"):  # as `realtime mongo-setup` makes them
        db[name].create_index("postId")
    db.posts.insert_many([post_doc(rng, f"p{i}", f"u{rng.randrange(USERS)}") for i in range(PRE_POSTS)])
    db.comments.insert_many([{"_id": f"c{i}", "postId": f"p{rng.randrange(PRE_POSTS)}",
                              "userId": f"u{rng.randrange(USERS)}", "text": _text(rng, 12),
                              "createdAt": dt.datetime.now(dt.UTC)} for i in range(PRE_COMMENTS)])


def wait_streaming(client: MongoClient[dict[str, Any]], r: redis.Redis, watcher: Proc, deadline: float) -> float:
    """Nudge a post (a change that publishes no event) until the watcher records its token: then its stream
    is open. Returns the seconds that took."""
    started = time.monotonic()
    before = r.hget(META_KEY, "token")
    n = 0
    while True:
        n += 1
        client[DB].posts.update_one({"_id": SENTINEL_POST}, {"$set": {"nudge": n}})
        wait_until = time.monotonic() + 0.25
        while time.monotonic() < wait_until:
            token = r.hget(META_KEY, "token")
            if token is not None and token != before:
                return time.monotonic() - started
            time.sleep(0.01)
        if watcher.popen.poll() is not None:
            raise RuntimeError(f"the watcher exited ({watcher.popen.returncode}):\n{watcher.tail()}")
        if time.monotonic() > deadline:
            raise BenchTimeout(f"the watcher did not start streaming:\n{watcher.tail()}")


# -- statistics and reports ------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def machine() -> dict[str, Any]:
    return {**benchkit.machine(), "pymongo": pymongo.version, "redis_py": redis.__version__}


def source_state() -> dict[str, Any]:
    """The commit measured, and whether the measured code (realtime/, watchers/) differs from it."""
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_changes": git("status", "--porcelain", "--", "realtime", "watchers").splitlines()}


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def markdown(result: dict[str, Any]) -> str:
    live, backlog, m, cfg = result["live"], result["backlog"], result["machine"], result["config"]
    lat = live["latency_ms"]
    check = result["check"]
    changes = cfg["changes"]
    source = (cfg.get("commit") or "?") + (" with uncommitted changes to the code measured"
                                           if cfg.get("uncommitted_changes") else "")
    pacing = f"live producer paced to {cfg['rate']:.0f} changes/s" if cfg["rate"] else "producer unpaced"
    queueing = ""
    if live["producer_rate"] > 1.1 * live["throughput"]:
        queueing = ("The producer outran the watcher, so live latency is mostly time spent queued in the oplog;\n"
                    "`--rate` below the backlog throughput measures the publish path itself.\n")
    return f"""## Watcher

`python bench/watcher_bench.py` (`bench/watcher_bench.py`; raw results in `bench/results/watcher.json`).
The MongoDB stand-in, redis-server, the watcher, a reader (`XREAD BLOCK`) and the producer each run in a
process of their own. The producer ({cfg['concurrency']} threads, PyMongo) writes a mix of like inserts (~50%),
comments (~25%), post edits (~15%) and new posts (~10%); {cfg['txn_fraction']:.0%} of the like and comment
inserts are in a transaction with a counter update on their post (2 changes). Live: the watcher tails while
the producer writes. Backlog: the watcher is stopped, the changes are written, the watcher is started and
drains them: its own maximum rate. Latency is the event's arrival in the reader minus the change's
`wallTime` (ms resolution), live phase only.

Measured {result['date']} on {m['cpus']} CPUs ({m['cpu'] or 'unknown CPU'}), Python {m['python']},
redis-server {m['redis_server']}, PyMongo {m['pymongo']}, commit {source};
{changes} changes per phase, {pacing}.
MongoDB is the stand-in, not `mongod`: its costs are part of these numbers.

| phase | changes | events | producer (changes/s) | watcher (changes/s) | latency p50 / p95 / p99 / max (ms) |
|---|---:|---:|---:|---:|---|
| live | {live['changes']} | {live['events']} | {live['producer_rate']:.0f} | {live['throughput']:.0f} | \
{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f} |
| backlog | {backlog['changes']} | {backlog['events']} | {backlog['producer_rate']:.0f} | \
{backlog['throughput']:.0f} | - |

{queueing}Backlog: {backlog['drain_seconds']:.2f} s from starting the watcher process to the last event published, of
which {backlog['startup_seconds']:.2f} s before the first event (process start, lease, resume).
Like counts the watcher read from MongoDB (first like of a post it has no count for): {live['like_count_seeds']}
live, {backlog['like_count_seeds']} backlog.
Checks: post:liked events = like inserts: {check['liked_events']}; like counters = `count_documents`:
{check['like_counters']}.
"""


def markdown_backlog(result: dict[str, Any]) -> str:
    backlog, m, cfg, check = result["backlog"], result["machine"], result["config"], result["check"]
    source = (cfg.get("commit") or "?") + (" with uncommitted changes to the code measured"
                                           if cfg.get("uncommitted_changes") else "")
    return f"""## Watcher

`python bench/watcher_bench.py --mode backlog --changes {cfg['changes']}` (`bench/watcher_bench.py`; raw results in
`bench/results/watcher.json`). The MongoDB stand-in, redis-server, the watcher, a reader (`XREAD BLOCK`) and
the producer each run in a process of their own. The watcher starts once (to place its resume point) and
stops; the producer ({cfg['concurrency']} threads, PyMongo) then writes a mix of like inserts (~50%, 30% of them on
one of the newest posts, whose first like makes the watcher read the post's count from MongoDB), comments
(~25%), post edits (~15%) and new posts (~10%); {cfg['txn_fraction']:.0%} of the like and comment inserts are in a
transaction with a counter update on their post (2 changes). The watcher is started again and drains the
backlog: its own maximum rate. CPU per change is the watcher process's user + system time (`/proc`) from its
first event published to the last, divided by the changes.

Measured {result['date']} on {m['cpus']} CPUs ({m['cpu'] or 'unknown CPU'}), Python {m['python']},
redis-server {m['redis_server']}, PyMongo {m['pymongo']}, commit {source}; load average
{backlog['load_average_before'][0]} before the drain, {backlog['load_average_after'][0]} after it (the stand-in, Redis
and the watcher share the 2 CPUs). MongoDB is the stand-in, not `mongod`: its costs are part of these numbers.

| changes | events | watcher (changes/s) | watcher CPU per change (µs) | drain from spawn (s) | startup (s) |
|---:|---:|---:|---:|---:|---:|
| {backlog['changes']} | {backlog['events']} | {backlog['throughput']:.0f} | {backlog['cpu_us_per_change']:.1f} | \
{backlog['drain_seconds']:.2f} | {backlog['startup_seconds']:.2f} |

Publish script calls (batches): {backlog['watcher_metrics'].get('realtime_watcher_batches_total', 0):.0f}; like
counts read from MongoDB (first like of a post): {backlog['like_count_seeds']}.
Checks: post:liked events = like inserts: {check['liked_events']}; like counters = `count_documents`:
{check['like_counters']}.
"""


def profile_summary(path: Path, top: int = 15) -> list[tuple[str, float]]:
    """Self time per function from a py-spy raw (collapsed) profile, as shares of all samples."""
    selfs: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames = stack.split(";")
            selfs[frames[-1]] += int(count)
            total += int(count)
    return [(frame, n / total) for frame, n in selfs.most_common(top)] if total else []


# -- the run -------------------------------------------------------------------------------------------------

def _change_of(entry_id: str) -> int:
    """The change an entry belongs to: its id's first half (the change's cluster time)."""
    return int(entry_id.split("-", 1)[0])


def phase_rows(rows: list[Row], after: str | None, through: str) -> list[Row]:
    """The reader's rows of the changes after the sentinel ``after``'s, through the sentinel ``through``'s
    (every event of both sentinels' changes: a like has a notification too)."""
    def change(name: str | None) -> int:
        if name is None:
            return -1
        return next(_change_of(row[1]) for row in rows if row[4] == name and row[2] == "post:liked")

    lo, hi = change(after), change(through)
    return [row for row in rows if lo < _change_of(row[1]) <= hi]


def run(args: argparse.Namespace, stack: Stack, deadline: float) -> dict[str, Any]:
    rng = random.Random(args.seed)
    redis_url = start_redis(stack)
    mongo_uri = start_standin(stack)
    log(f"redis {redis_url}, stand-in {mongo_uri}")
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, maxPoolSize=args.concurrency + 4)
    r = redis.Redis.from_url(redis_url)
    reader: Reader | None = None
    stop = threading.Event()
    try:
        prepare(client, rng)
        log(f"created {PRE_POSTS} posts and {PRE_COMMENTS} comments")
        http_port = free_port()
        watcher = start_watcher(stack, "watcher-live", mongo_uri, redis_url, http_port, profile=False)
        reader = Reader(redis_url)
        warmup = wait_streaming(client, r, watcher, deadline)
        log(f"watcher streaming after {warmup:.2f}s; live phase: {args.changes} changes, "
            f"{args.concurrency} producer threads")

        # -- live ----------------------------------------------------------------------------------
        live_tally = produce(client, plan(rng, "live", args.changes, args.concurrency, args.txn_fraction),
                             args.seed, stop, deadline, args.rate)
        sentinel(client, "live", live_tally)
        log(f"producer done: {live_tally.changes} changes in {live_tally.seconds:.2f}s; waiting for the watcher")
        live_end = reader.wait_sentinel("sentinel-live", deadline, watcher)
        live_metrics = scrape(http_port)
        live_seeds = r.hlen(SEEDED_KEY)
        log(f"live phase published ({live_end - time.time():+.2f}s from now)")

        # -- backlog -------------------------------------------------------------------------------
        status = watcher.stop(timeout=15)
        log(f"watcher stopped (exit {status}); writing the backlog")
        backlog_tally = produce(client, plan(rng, "backlog", args.changes, args.concurrency, args.txn_fraction),
                                args.seed + 1, stop, deadline)
        sentinel(client, "backlog", backlog_tally)
        log(f"producer done: {backlog_tally.changes} changes in {backlog_tally.seconds:.2f}s; starting the watcher")
        spawned = time.time()
        watcher = start_watcher(stack, "watcher-backlog", mongo_uri, redis_url, http_port,
                                profile=args.profile is not None)
        backlog_end = reader.wait_sentinel("sentinel-backlog", deadline, watcher)
        backlog_metrics = scrape(http_port)
        backlog_seeds = r.hlen(SEEDED_KEY) - live_seeds
        log(f"backlog drained in {backlog_end - spawned:.2f}s")
        rows = reader.finish()

        # -- results -------------------------------------------------------------------------------
        live_rows = phase_rows(rows, None, "sentinel-live")
        backlog_rows = phase_rows(rows, "sentinel-live", "sentinel-backlog")
        first_wall = min(row[3] for row in live_rows) / 1000
        latencies = [(row[0] - row[3] / 1000) * 1000 for row in live_rows]
        live = {
            "changes": live_tally.changes, "events": len(live_rows), "ops": dict(live_tally.ops),
            "txn_retries": live_tally.txn_retries, "producer_seconds": live_tally.seconds,
            "producer_rate": live_tally.changes / live_tally.seconds,
            "seconds": live_end - first_wall, "throughput": live_tally.changes / (live_end - first_wall),
            "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                           "p99": percentile(latencies, 99), "max": max(latencies), "mean":
                           sum(latencies) / len(latencies), "samples": len(latencies)},
            "like_count_seeds": live_seeds, "watcher_metrics": live_metrics,
        }
        backlog_first = min(row[0] for row in backlog_rows)
        backlog = {
            "changes": backlog_tally.changes, "events": len(backlog_rows), "ops": dict(backlog_tally.ops),
            "txn_retries": backlog_tally.txn_retries, "producer_seconds": backlog_tally.seconds,
            "producer_rate": backlog_tally.changes / backlog_tally.seconds,
            "drain_seconds": backlog_end - spawned, "startup_seconds": backlog_first - spawned,
            "seconds": backlog_end - backlog_first,
            "throughput": backlog_tally.changes / (backlog_end - backlog_first),
            "throughput_including_startup": backlog_tally.changes / (backlog_end - spawned),
            "like_count_seeds": backlog_seeds, "watcher_metrics": backlog_metrics,
        }
        check = verify(client, r, rows, live_tally.like_inserts + backlog_tally.like_inserts, rng)
        return {"live": live, "backlog": backlog, "check": check}
    finally:
        stop.set()
        if reader is not None:
            reader.kill()
        r.close()
        client.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/<pid>/stat; clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_backlog(args: argparse.Namespace, stack: Stack, deadline: float) -> dict[str, Any]:
    """The backlog alone: the watcher starts once (to place its resume point) and stops, ``--changes`` changes
    are written, the watcher starts again and drains them. Its CPU is read from /proc when its first event is
    published and when the sentinel's is."""
    rng = random.Random(args.seed)
    redis_url = start_redis(stack)
    mongo_uri = start_standin(stack)
    log(f"redis {redis_url}, stand-in {mongo_uri}")
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, maxPoolSize=args.concurrency + 4)
    r = redis.Redis.from_url(redis_url)
    reader: Reader | None = None
    stop = threading.Event()
    try:
        prepare(client, rng)
        http_port = free_port()
        watcher = start_watcher(stack, "watcher-start", mongo_uri, redis_url, http_port, profile=False)
        reader = Reader(redis_url)
        wait_streaming(client, r, watcher, deadline)
        status = watcher.stop(timeout=15)
        log(f"watcher placed its resume point and stopped (exit {status}); writing {args.changes} changes")
        tally = produce(client, plan(rng, "backlog", args.changes, args.concurrency, args.txn_fraction,
                                     newest=0.3), args.seed + 1, stop, deadline)
        sentinel(client, "backlog", tally)
        log(f"producer done: {tally.changes} changes in {tally.seconds:.2f}s; starting the watcher")
        load_before = load_average()
        before = r.hget(META_KEY, "token")
        spawned = time.time()
        watcher = start_watcher(stack, "watcher-backlog", mongo_uri, redis_url, http_port,
                                profile=args.profile is not None)
        pid = watcher.target_pid or watcher.popen.pid
        while r.hget(META_KEY, "token") == before:  # its first publish
            if watcher.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the watcher published nothing:\n{watcher.tail()}")
            time.sleep(0.002)
        cpu_first, first = cpu_seconds(pid), time.time()
        end = reader.wait_sentinel("sentinel-backlog", deadline, watcher)
        cpu_end = cpu_seconds(pid)
        load_after = load_average()
        metrics = scrape(http_port)
        seeds = r.hlen(SEEDED_KEY)
        log(f"backlog drained in {end - spawned:.2f}s")
        rows = reader.finish()
        backlog_rows = phase_rows(rows, None, "sentinel-backlog")
        backlog = {
            "changes": tally.changes, "events": len(backlog_rows), "ops": dict(tally.ops),
            "txn_retries": tally.txn_retries, "producer_seconds": tally.seconds,
            "producer_rate": tally.changes / tally.seconds,
            "drain_seconds": end - spawned, "startup_seconds": first - spawned, "seconds": end - first,
            "throughput": tally.changes / (end - first),
            "throughput_including_startup": tally.changes / (end - spawned),
            "watcher_cpu_seconds": cpu_end - cpu_first, "watcher_cpu_seconds_from_spawn": cpu_end,
            "cpu_us_per_change": (cpu_end - cpu_first) / tally.changes * 1e6,
            "cpu_us_per_change_from_spawn": cpu_end / tally.changes * 1e6,
            "load_average_before": load_before, "load_average_after": load_after,
            "like_count_seeds": seeds, "watcher_metrics": metrics,
        }
        check = verify(client, r, rows, tally.like_inserts, rng)
        return {"backlog": backlog, "check": check}
    finally:
        stop.set()
        if reader is not None:
            reader.kill()
        r.close()
        client.close()


def verify(client: MongoClient[dict[str, Any]], r: redis.Redis, rows: list[Row],
           like_inserts: int, rng: random.Random) -> dict[str, Any]:
    db = client[DB]
    types: Counter[str] = Counter()
    last = "-"
    while True:  # the whole global stream, not only what the reader saw
        batch: Any = r.xrange(EVENTS_KEY, min=f"({last}" if last != "-" else "-", count=10_000)
        if not batch:
            break
        for _entry_id, fields in batch:
            types[orjson.loads(fields[b"e"])["type"]] += 1
        last = batch[-1][0].decode()
    liked = types["post:liked"]
    stored_likes = db.likes.count_documents({})
    liked_ok = liked == like_inserts == stored_likes
    raw: Any = r.hgetall(LIKES_KEY)
    counters = {k.decode(): int(v) for k, v in raw.items()}
    sample = sorted([*rng.sample(sorted(counters), min(5, len(counters))), SENTINEL_POST])
    mismatches = {}
    for post in dict.fromkeys(sample):
        expected = db.likes.count_documents({"postId": post})
        if counters.get(post) != expected:
            mismatches[post] = {"redis": counters.get(post), "mongodb": expected}
    return {
        "liked_events": "OK" if liked_ok else "MISMATCH",
        "post_liked_events": liked, "like_inserts": like_inserts, "likes_in_mongodb": stored_likes,
        "like_counters": "OK" if not mismatches else "MISMATCH", "posts_checked": list(dict.fromkeys(sample)),
        "counter_mismatches": mismatches, "event_types": dict(types), "reader_events": len(rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("both", "backlog"), default="both",
                        help="both: a live phase, then a backlog (default); backlog: the backlog alone, with the "
                        "watcher's CPU per change (use --changes 100000)")
    parser.add_argument("--changes", type=int, default=5000, help="changes written per phase (default 5000)")
    parser.add_argument("--concurrency", type=int, default=4, help="producer threads (default 4)")
    parser.add_argument("--txn-fraction", type=float, default=0.1,
                        help="share of like and comment inserts made in a transaction with a counter update on "
                        "their post (default 0.1)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="pace the live phase's producer to this many changes/s (default 0: as fast as it can); "
                        "below the watcher's capacity, latency is the publish path's own, not queueing")
    parser.add_argument("--seconds-max", type=float, default=300, help="overall safety timeout (default 300)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="run the stand-in and the backlog phase's watcher under py-spy; raw profiles in DIR")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results or docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.changes < 10 or args.concurrency < 1 or not 0 <= args.txn_fraction <= 1:
        parser.error("--changes must be at least 10, --concurrency at least 1, --txn-fraction within 0..1")
    if args.profile is not None:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    deadline = started + args.seconds_max

    def on_alarm(_sig: int, _frame: Any) -> None:
        raise BenchTimeout(f"over --seconds-max ({args.seconds_max:.0f}s)")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.seconds_max) + 10)  # a backstop: every wait is bounded by the deadline already
    with tempfile.TemporaryDirectory(prefix="watcher-bench-") as tmp:
        stack = Stack(Path(tmp), args.profile)
        try:
            measured = (run_backlog if args.mode == "backlog" else run)(args, stack, deadline)
        except Exception as exc:
            traceback.print_exc()
            what = "timed out" if isinstance(exc, BenchTimeout) else "failed"
            print(f"watcher_bench: {what}: {exc}", file=sys.stderr)
            for proc in stack.procs:
                print(f"--- {proc.name} (last lines of its log) ---\n{proc.tail()}", file=sys.stderr)
            return 1
        finally:
            signal.alarm(0)
            stack.close()
        logs = stack.log_summary()
    result = {
        "benchmark": "watcher", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "config": {"mode": args.mode, "changes": args.changes, "concurrency": args.concurrency,
                   "txn_fraction": args.txn_fraction,
                   "rate": args.rate, "seed": args.seed, "pre_posts": PRE_POSTS, "pre_comments": PRE_COMMENTS,
                   "profiled": args.profile is not None, **source_state()},
        "wall_seconds": time.monotonic() - started,
        **measured,
        "logs": logs,
    }
    if args.mode == "backlog":
        return finish_backlog(args, result, logs)
    live, backlog, check = result["live"], result["backlog"], result["check"]
    lat = live["latency_ms"]
    print()
    print(table([
        ("live: changes / events", f"{live['changes']} / {live['events']}"),
        ("live: producer rate", f"{live['producer_rate']:.0f} changes/s"),
        ("live: watcher throughput", f"{live['throughput']:.0f} changes/s (first wallTime to last XADD: "
                                     f"{live['seconds']:.2f}s)"),
        ("live: latency p50/p95/p99", f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} ms "
                                      f"(max {lat['max']:.1f}, {lat['samples']} events)"),
        ("backlog: changes / events", f"{backlog['changes']} / {backlog['events']}"),
        ("backlog: watcher throughput", f"{backlog['throughput']:.0f} changes/s (first to last XADD: "
                                        f"{backlog['seconds']:.2f}s)"),
        ("backlog: drain from spawn", f"{backlog['drain_seconds']:.2f}s (startup {backlog['startup_seconds']:.2f}s)"),
        ("check: post:liked = like inserts", f"{check['liked_events']} ({check['post_liked_events']} events, "
                                             f"{check['like_inserts']} inserts, {check['likes_in_mongodb']} in "
                                             "MongoDB)"),
        ("check: like counters", f"{check['like_counters']} ({', '.join(check['posts_checked'])})"
                                 + (f" {check['counter_mismatches']}" if check["counter_mismatches"] else "")),
        ("like counts seeded (live/backlog)", f"{live['like_count_seeds']} / {backlog['like_count_seeds']} "
                                              "(snapshot count reads the watcher made)"),
        *[(f"log: {name}", ", ".join(f"{n} {level}" for level, n in sorted(info["levels"].items())) or "-")
          for name, info in logs.items()],
    ]))
    for name, info in logs.items():
        for line in info["notable"]:
            print(f"  {name}: {line}")
    if args.profile is not None:
        for name in ("watcher-backlog", "standin"):
            summary = profile_summary(args.profile / f"{name}.txt")
            print(f"\n{name}: self time, top functions (py-spy, {args.profile / (name + '.txt')})")
            for frame, share in summary:
                print(f"  {share:6.1%}  {frame}")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
        replace_section("## Watcher", markdown(result))
        print(f"\nwrote {RESULTS.relative_to(ROOT)} and {DOCS.relative_to(ROOT)}")
    ok = check["liked_events"] == "OK" and check["like_counters"] == "OK"
    return 0 if ok else 1


def finish_backlog(args: argparse.Namespace, result: dict[str, Any], logs: dict[str, Any]) -> int:
    backlog, check = result["backlog"], result["check"]
    print()
    print(table([
        ("backlog: changes / events", f"{backlog['changes']} / {backlog['events']}"),
        ("backlog: producer rate", f"{backlog['producer_rate']:.0f} changes/s"),
        ("backlog: watcher throughput", f"{backlog['throughput']:.0f} changes/s (first to last XADD: "
                                        f"{backlog['seconds']:.2f}s)"),
        ("backlog: watcher CPU per change", f"{backlog['cpu_us_per_change']:.1f} us "
                                            f"({backlog['cpu_us_per_change_from_spawn']:.1f} us from spawn)"),
        ("backlog: drain from spawn", f"{backlog['drain_seconds']:.2f}s (startup {backlog['startup_seconds']:.2f}s)"),
        ("load average before / after", f"{backlog['load_average_before']} / {backlog['load_average_after']}"),
        ("watcher batches", f"{backlog['watcher_metrics'].get('realtime_watcher_batches_total', 0):.0f}"),
        ("check: post:liked = like inserts", f"{check['liked_events']} ({check['post_liked_events']} events, "
                                             f"{check['like_inserts']} inserts, {check['likes_in_mongodb']} in "
                                             "MongoDB)"),
        ("check: like counters", f"{check['like_counters']} ({', '.join(check['posts_checked'])})"
                                 + (f" {check['counter_mismatches']}" if check["counter_mismatches"] else "")),
        ("like counts seeded", f"{backlog['like_count_seeds']}"),
        *[(f"log: {name}", ", ".join(f"{n} {level}" for level, n in sorted(info["levels"].items())) or "-")
          for name, info in logs.items()],
    ]))
    for name, info in logs.items():
        for line in info["notable"]:
            print(f"  {name}: {line}")
    if args.profile is not None:
        summary = profile_summary(args.profile / "watcher-backlog.txt")
        print(f"\nwatcher-backlog: self time, top functions (py-spy, {args.profile / 'watcher-backlog.txt'})")
        for frame, share in summary:
            print(f"  {share:6.1%}  {frame}")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
        replace_section("## Watcher", markdown_backlog(result))
        print(f"\nwrote {RESULTS.relative_to(ROOT)} and {DOCS.relative_to(ROOT)}")
    return 0 if check["liked_events"] == "OK" and check["like_counters"] == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())

