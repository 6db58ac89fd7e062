#!/usr/bin/env python
"""Replay benchmark: how long a client that was away takes to get what it missed, from Redis and from the oplog.

Not a test: it measures. Everything runs on this machine, each part in a process of its own: a private
``redis-server``, the MongoDB stand-in (``python -m realtime mongo``), the watcher (``python -m watchers``) and
the server (``python -m realtime serve``, anonymous, one worker, with ``MONGODB_URI`` so that it replays from the
oplog what Redis trimmed). The clients are written for the benchmark (the upgrade and the frames by hand, in this
process, which does nothing else while they run).

Two phases:

* **redis**: ``--events`` (10,000) public posts are inserted (``insert_many``), each a ``post:created`` event in
  ``public``; once the watcher has published them all, a fresh client resumes ``public`` from the id before
  them, over a WebSocket (``subscribe`` with ``since``), a long-poll (``GET /poll?since=``) and an SSE stream
  (``GET /sse?since=``). Measured: from the request to the last replayed event (and, on the WebSocket, to
  ``subscribed``: the history read, then to ``synced``), the server's CPU meanwhile, and the events checked
  against the room's history in Redis (every id once, in order, nothing else).
* **deep**: ``--deep-events`` (100,000) more public posts are inserted and published, then the room's history
  is trimmed (``XTRIM MAXLEN ~ --keep``: what the watcher's ``XADD MAXLEN ~ REALTIME_ROOM_HISTORY`` does to a
  busy room) so that Redis no longer holds the first of them, and a client resumes from the id before them:
  the server reads the trimmed part back from the stand-in's oplog (a change stream from ``since``, mapped by
  the watcher's code) and the rest from Redis. Measured as above, and checked against the ids the watcher
  published (read from the global stream, which still holds them all). The server is started with the limits
  such a replay needs (``REALTIME_REPLAY_LIMIT``, ``REALTIME_DEEP_REPLAY_SECONDS``); with the defaults the
  product promises a ``reset`` (``too_far_behind``), which is checked too.

A client that the server closes as slow (4008) does what a client does: it reconnects and resumes from the last
event it received; the reconnections are counted and the time includes them.

Each measurement is repeated ``--repeat`` (3) times; the median and the spread are reported, with the machine's
load average and the CPU other programs used meanwhile. ``--profile`` runs the server under cProfile and prints
where its time went. Results: ``bench/results/replay.json`` and the ``## Replay`` section of
``docs/benchmarks.md`` (the other sections are kept).

    python bench/replay_bench.py [--events 10000] [--deep-events 100000] [--repeat 3] [--profile FILE]
    python bench/replay_bench.py --report-only      # the docs section again from bench/results/replay.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import datetime as dt
import hashlib
import json
import os
import pstats
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchkit
import orjson
import pymongo
import redis
from benchkit import DOCS, ROOT, free_port, log, replace_section
from fanout_bench import GUID, client_frame, cpu_times, machine_times
from pymongo import MongoClient
from watcher_bench import (
    DB,
    PREFIX,
    Proc,
    Stack,
    fresh_database,
    source_state,
    start_redis,
    start_server,
    start_standin,
    start_watcher,
)

RESULTS = ROOT / "bench" / "results" / "replay.json"
SECTION = "## Replay"
ROOM = "public"
ROOM_KEY = "{" + PREFIX + "}:room:" + ROOM
EVENTS_KEY = "{" + PREFIX + "}:events"
TARGET_S = 0.5  # a client that missed 10,000 events of its rooms gets them from Redis in less than this
BATCH = 1000  # posts per insert_many
TABLE_HEAD = ("| replay | events | seconds to the last event | seconds to the history read | events/s | server CPU s | "
              "server µs/event | redis CPU s | stand-in CPU s | client CPU s | other CPU s | load | reconnects | "
              "checks passed |")
_ = cProfile  # the server runs under ``python -m cProfile`` with --profile


class BenchError(Exception):
    pass


# -- the clients --------------------------------------------------------------------------------------------

@dataclass
class Got:
    """What one client received of a replay."""

    ids: list[str] = field(default_factory=list)
    started: float = 0.0
    subscribed: float = 0.0  # WebSocket: the first `subscribed` (the history was read)
    synced: float = 0.0  # WebSocket: the last `synced`
    last: float = 0.0  # the last expected event
    resets: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reconnects: int = 0
    closes: list[int] = field(default_factory=list)


class WsReplay(asyncio.Protocol):
    """Subscribe to ``public`` with ``since``; record the events until ``until`` (the last expected id)."""

    def __init__(self, got: Got, since: str, until: str, done: asyncio.Future[int]) -> None:
        self.got, self.since, self.until, self.done = got, since, until, done
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.accept = b""
        self.buf = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        transport.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def finish(self, code: int) -> None:
        if not self.done.done():
            self.done.set_result(code)
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[:end + 4]
            if not head.startswith(b"HTTP/1.1 101") or self.accept not in head:
                self.got.errors.append(f"upgrade refused: {head[:60]!r}")
                self.finish(-1)
                return
            self.upgraded = True
            assert self.transport is not None
            self.transport.write(client_frame(0x1, orjson.dumps({"op": "subscribe", "rooms": [ROOM],
                                                                  "since": self.since})))
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, size = buf[pos], buf[pos + 1] & 0x7F
            head_len = 2
            if size == 126:
                if n - pos < 4:
                    break
                size, head_len = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif size == 127:
                if n - pos < 10:
                    break
                size, head_len = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if n - pos < head_len + size:
                break
            payload = bytes(buf[pos + head_len:pos + head_len + size])
            pos += head_len + size
            opcode = b0 & 0x0F
            if opcode == 0x1:
                self.message(payload)
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(client_frame(0xA, payload))
            elif opcode == 0x8:
                self.finish(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005)
                return
        del buf[:pos]

    def message(self, payload: bytes) -> None:
        got = self.got
        msg = orjson.loads(payload)
        op = msg.get("op")
        if op == "event":
            got.ids.append(msg["id"])
            if msg["id"] == self.until:
                got.last = time.perf_counter()
                if got.synced:
                    self.finish(0)
        elif op == "subscribed":
            got.subscribed = got.subscribed or time.perf_counter()
        elif op == "synced":
            got.synced = time.perf_counter()
            if got.last or got.resets:  # all replayed, or a reset instead
                got.last = got.last or got.synced
                self.finish(0)
        elif op == "reset":
            got.resets.append(msg)
        elif op == "error":
            got.errors.append(f"error: {payload[:200]!r}")
            self.finish(-1)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(1006)


async def ws_replay(port: int, since: str, until: str, seconds: float, expect_reset: bool = False) -> Got:
    """One client's replay; on a transient close (4008 slow, 1011, 1006) it reconnects and resumes from the
    last event it received, as a client does."""
    loop = asyncio.get_running_loop()
    got = Got(started=time.perf_counter())
    position = since
    deadline = got.started + seconds
    while True:
        done: asyncio.Future[int] = loop.create_future()
        transport, _ = await loop.create_connection(lambda p=position, d=done: WsReplay(got, p, until, d),
                                                    "127.0.0.1", port)
        try:
            code = await asyncio.wait_for(done, max(deadline - time.perf_counter(), 0.01))
        except TimeoutError:
            got.errors.append(f"timed out after {seconds:.0f}s with {len(got.ids)} events")
            return got
        finally:
            transport.close()
        if code == 0 or code == -1 or (expect_reset and got.resets):
            return got
        got.closes.append(code)
        if code not in (4008, 1011, 1006, 1001) or got.reconnects >= 50:
            got.errors.append(f"closed with {code}")
            return got
        got.reconnects += 1
        position = got.ids[-1] if got.ids else position
        got.synced = 0.0


async def poll_replay(port: int, since: str, until: str, seconds: float) -> Got:
    """Long-polls from ``since`` (each from the last ``next``) until the last expected event came."""
    got = Got(started=time.perf_counter())
    position = since
    while time.perf_counter() - got.started < seconds:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 26)
        try:
            writer.write(f"GET /poll?rooms={ROOM}&since={position}&wait=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Connection: close\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.read()
        finally:
            writer.close()
        if not head.startswith(b"HTTP/1.1 200"):
            got.errors.append(f"poll: {head[:40]!r} {body[:200]!r}")
            return got
        if b"transfer-encoding: chunked" in head.lower():
            body = _unchunk(body)
        answer = orjson.loads(body)
        got.ids += [e["id"] for e in answer["events"]]
        got.resets += answer.get("resets") or []
        position = answer["next"]
        if until in got.ids[-1:] or got.resets:
            got.last = time.perf_counter()
            return got
        got.reconnects += 1
    got.errors.append("poll: timed out")
    return got


def _unchunk(body: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += body[end + 2:end + 2 + size]
        pos = end + 2 + size + 2


async def sse_replay(port: int, since: str, until: str, seconds: float) -> Got:
    """An SSE stream from ``since`` (reopened with ``Last-Event-ID`` if it ends) until the last expected event."""
    got = Got(started=time.perf_counter())
    position = since
    target = until.encode()
    while time.perf_counter() - got.started < seconds:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 26)
        try:
            writer.write(f"GET /sse?rooms={ROOM} HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: {position}\r\n"
                         "Connection: close\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                got.errors.append(f"sse: {head[:60]!r}")
                return got
            chunked = b"transfer-encoding: chunked" in head.lower()
            pending = b""
            while True:
                data = await asyncio.wait_for(reader.read(1 << 20),
                                              max(got.started + seconds - time.perf_counter(), 0.01))
                if not data:
                    break
                pending += data
                lines = pending.split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if line.startswith(b"id: "):
                        eid = line[4:].strip()
                        position = eid.decode()
                    elif line.startswith(b"data: "):
                        if line.startswith(b'data: {"op":"event"'):
                            got.ids.append(position)
                            if position.encode() == target:
                                got.last = time.perf_counter()
                                return got
                    elif line.startswith(b"event: ") and line[7:].strip() in (b"reset", b"error", b"close"):
                        got.errors.append(f"sse: {line!r}")
                    elif chunked:
                        continue
        except TimeoutError:
            got.errors.append("sse: timed out")
            return got
        finally:
            writer.close()
        got.reconnects += 1
    got.errors.append("sse: timed out")
    return got


def check(got: Got, expected: list[str]) -> dict[str, Any]:
    """Every expected id once, in order, nothing else (a client dedups by id across its reconnections)."""
    seen: set[str] = set()
    unique = []
    for i in got.ids:
        if i not in seen:
            seen.add(i)
            unique.append(i)
    exp = set(expected)
    return {"received": len(got.ids), "unique": len(unique), "duplicates": len(got.ids) - len(unique),
            "missing": len(exp - seen), "unexpected": len(seen - exp), "in_order": unique == expected,
            "ok": unique == expected and not got.errors}


# -- the stack ----------------------------------------------------------------------------------------------

def produce(mongo: MongoClient[dict[str, Any]], r: redis.Redis, phase: str, n: int, watcher: Proc,
            timeout: float) -> tuple[str, float, float]:
    """Insert n public posts; wait until the watcher has published the last. Returns (the id of the last event
    before them in the room, seconds to insert, seconds until the last was published)."""
    newest: Any = r.xrevrange(ROOM_KEY, count=1)
    since = newest[0][0].decode() if newest else "0-0"
    posts = mongo[DB].posts
    t0 = time.monotonic()
    for start in range(0, n, BATCH):
        posts.insert_many([{"_id": f"{phase}.{i}", "authorId": f"a{i % 50}", "visibility": "public",
                            "title": f"post {i}", "text": f"the text of post {i} of the replay benchmark"}
                           for i in range(start, min(start + BATCH, n))], ordered=True)
    inserted = time.monotonic() - t0
    last_post = f"{phase}.{n - 1}"
    while True:
        top: Any = r.xrevrange(ROOM_KEY, count=1)
        if top and orjson.loads(top[0][1][b"e"])["data"].get("id") == last_post:
            return since, inserted, time.monotonic() - t0
        if watcher.popen.poll() is not None:
            raise BenchError(f"the watcher exited:\n{watcher.tail()}")
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"the watcher did not publish {n} posts within {timeout:.0f}s")
        time.sleep(0.2)


def warm_up(mongo: MongoClient[dict[str, Any]], r: redis.Redis, watcher: Proc) -> None:
    """Insert a post every 0.25 s until the watcher publishes one (it starts its stream from now)."""
    until = time.monotonic() + 60
    n = 0
    while not r.exists(ROOM_KEY):
        mongo[DB].posts.insert_one({"_id": f"warmup.{n}", "authorId": "warmup", "visibility": "public"})
        n += 1
        time.sleep(0.25)
        if watcher.popen.poll() is not None or time.monotonic() > until:
            raise BenchError(f"the watcher published nothing:\n{watcher.tail()}")


def ids_after(r: redis.Redis, key: str, since: str, room: str) -> list[str]:
    """The ids of the events of ``room`` after ``since`` in a stream (the room's own, or the global one)."""
    out: list[str] = []
    after = since
    while True:
        batch: Any = r.xrange(key, min=f"({after}", max="+", count=10_000)
        if not batch:
            return out
        for eid, fields in batch:
            if key == ROOM_KEY or room in orjson.loads(fields[b"e"]).get("rooms", ()):
                out.append(eid.decode())
        after = batch[-1][0].decode()


# -- one measurement ----------------------------------------------------------------------------------------

def load() -> dict[str, float]:
    one, five, _ = os.getloadavg()
    return {"load1": one, "load5": five}


def measure(kind: str, port: int, server: Proc, others: dict[str, list[int]], since: str, expected: list[str],
            timeout: float, expect_reset: bool = False) -> dict[str, Any]:
    pid = server.target_pid or server.popen.pid
    cpu0, box0, own0, load0 = cpu_times([pid]), machine_times(), time.process_time(), load()
    others0 = {name: sum(cpu_times(pids)) for name, pids in others.items()}
    if kind == "ws":
        got = asyncio.run(ws_replay(port, since, expected[-1] if expected else "", timeout, expect_reset))
    elif kind == "poll":
        got = asyncio.run(poll_replay(port, since, expected[-1], timeout))
    else:
        got = asyncio.run(sse_replay(port, since, expected[-1], timeout))
    cpu1, box1, own1 = cpu_times([pid]), machine_times(), time.process_time()
    wall = sum(box1.values()) - sum(box0.values())
    busy = wall - (box1["idle"] + box1["iowait"] - box0["idle"] - box0["iowait"])
    server_cpu = sum(cpu1) - sum(cpu0)
    client_cpu = own1 - own0
    stack_cpu = {name: sum(cpu_times(pids)) - others0[name] for name, pids in others.items()}
    others_cpu = sum(stack_cpu.values())
    end = got.last or time.perf_counter()
    result = {
        "transport": kind, "seconds": end - got.started,
        "to_subscribed_s": got.subscribed - got.started if got.subscribed else None,
        "to_synced_s": got.synced - got.started if got.synced else None,
        "server_cpu_s": server_cpu, "server_user_s": cpu1[0] - cpu0[0], "server_sys_s": cpu1[1] - cpu0[1],
        "client_cpu_s": client_cpu, "stack_cpu_s": stack_cpu,
        "other_cpu_s": busy - server_cpu - client_cpu - others_cpu,
        "load": load0, "reconnects": got.reconnects, "closes": got.closes, "errors": got.errors[:5],
        "resets": got.resets[:3],
        **check(got, expected),
    }
    if expect_reset:
        result["ok"] = any(r.get("reason") == "too_far_behind" for r in got.resets) and not got.errors
    result["events_per_s"] = len(expected) / result["seconds"] if result["seconds"] > 0 else 0.0
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    secs = [r["seconds"] for r in runs]
    cpu = [r["server_cpu_s"] for r in runs]
    return {"n": len(runs), "median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs),
            "median_server_cpu_s": statistics.median(cpu), "min_server_cpu_s": min(cpu),
            "max_server_cpu_s": max(cpu), "all_ok": all(r.get("ok", False) for r in runs),
            "reconnects": [r["reconnects"] for r in runs]}


# -- the run ------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace, stack: Stack, workdir: Path) -> dict[str, Any]:
    redis_url = start_redis(stack)
    mongo_uri = start_standin(stack)
    log(f"redis {redis_url}, stand-in {mongo_uri}")
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    r = redis.Redis.from_url(redis_url)
    out: dict[str, Any] = {}
    try:
        fresh_database(mongo)
        watcher = start_watcher(stack, "watcher", mongo_uri, redis_url, free_port(), profile=False)
        stand_pids = {p.name: [p.popen.pid] for p in stack.procs if p.name in ("standin", "redis", "watcher")}
        warm_up(mongo, r, watcher)
        profile = args.profile.resolve() if args.profile is not None else None
        server, port = start_server(stack, "server", redis_url, mongo_uri=mongo_uri, extra={
            "REALTIME_REPLAY_LIMIT": str(max(args.deep_events * 2, 10_000)),
            "REALTIME_DEEP_REPLAY_SECONDS": "600"}, profile=profile)
        out["server_config"] = {"REALTIME_REPLAY_LIMIT": max(args.deep_events * 2, 10_000),
                                "REALTIME_DEEP_REPLAY_SECONDS": 600}

        # (a) from Redis
        since, inserted, published = produce(mongo, r, "redis", args.events, watcher, 600)
        expected = ids_after(r, ROOM_KEY, since, ROOM)
        log(f"{args.events} posts inserted in {inserted:.1f}s, published after {published:.1f}s; "
            f"{len(expected)} events in {ROOM} after {since}")
        if len(expected) != args.events:
            raise BenchError(f"{len(expected)} events in the room's history after {since}, not {args.events}")
        sizes: Any = r.xrange(ROOM_KEY, min=f"({since}", count=100)
        out["event_bytes"] = statistics.mean(len(f[b"e"]) for _, f in sizes)
        redis_runs: dict[str, list[dict[str, Any]]] = {}
        for kind in args.transports:
            redis_runs[kind] = []
            for i in range(args.repeat):
                time.sleep(args.pause)
                res = measure(kind, port, server, stand_pids, since, expected, 60)
                log(f"redis {kind} #{i + 1}: {res['seconds']:.3f}s ({res['events_per_s']:.0f} events/s), "
                    f"subscribed {res['to_subscribed_s']}, server CPU {res['server_cpu_s']:.2f}s, "
                    f"reconnects {res['reconnects']} {res['closes']}, ok {res.get('ok')} {res['errors']}")
                redis_runs[kind].append(res)
        out["redis"] = {"events": args.events, "since": since, "inserted_s": inserted, "published_s": published,
                        "runs": redis_runs, "summary": {k: summary(v) for k, v in redis_runs.items()}}

        # (b) from the oplog
        if args.deep_events:
            since, inserted, published = produce(mongo, r, "deep", args.deep_events, watcher, 1800)
            expected = ids_after(r, EVENTS_KEY, since, ROOM)
            log(f"{args.deep_events} posts inserted in {inserted:.1f}s, published after {published:.1f}s; "
                f"{len(expected)} events for {ROOM} after {since} in the global stream")
            before = r.xlen(ROOM_KEY)
            r.execute_command("XTRIM", ROOM_KEY, "MAXLEN", "~", args.keep)
            first: Any = r.xrange(ROOM_KEY, count=1)
            from_redis = len(ids_after(r, ROOM_KEY, since, ROOM))
            log(f"{ROOM}'s history trimmed from {before} to {r.xlen(ROOM_KEY)} entries (first {first[0][0]!r}); "
                f"{len(expected) - from_redis} of the events to replay are in the oplog only")
            deep_runs = []
            for i in range(args.repeat):
                time.sleep(args.pause)
                res = measure("ws", port, server, stand_pids, since, expected, 900)
                log(f"deep ws #{i + 1}: {res['seconds']:.2f}s ({res['events_per_s']:.0f} events/s), history read "
                    f"{res['to_subscribed_s']}, server CPU {res['server_cpu_s']:.2f}s, reconnects "
                    f"{res['reconnects']} {res['closes']}, ok {res.get('ok')} {res['errors']}")
                deep_runs.append(res)
            out["deep"] = {"events": len(expected), "oplog_only": len(expected) - from_redis, "since": since,
                           "kept": args.keep, "inserted_s": inserted, "published_s": published,
                           "runs": deep_runs, "summary": summary(deep_runs)}
            # with the defaults (REALTIME_REPLAY_LIMIT 10000, REALTIME_DEEP_REPLAY_SECONDS 10): a reset
            default, dport = start_server(stack, "server-defaults", redis_url, mongo_uri=mongo_uri)
            res = measure("ws", dport, default, stand_pids, since, expected, 120, expect_reset=True)
            default.stop()
            log(f"deep with the default limits: {res['seconds']:.2f}s, resets {res['resets']}, "
                f"events {len(expected) and res.get('received')}, errors {res['errors']}")
            out["deep_defaults"] = res
        server.stop(timeout=30)
        if profile is not None and profile.exists():
            out["profile"] = profile_top(profile)
        return out
    finally:
        r.close()
        mongo.close()


def profile_top(path: Path, top: int = 30) -> list[str]:
    """The server's functions of this project and its libraries by cumulative time (the event loop's own wait,
    which cProfile charges to the loop, left out)."""
    stats = pstats.Stats(str(path))
    table: dict[Any, Any] = getattr(stats, "stats")  # noqa: B009 (not in pstats' stubs)
    skip = ("_run_server_forever", "handle_request", "run_until_complete", "serve_single", "<module>", "run",
            "_run_module_as_main", "_run_code", "main", "serve", "exec", "runctx")
    rows = sorted(((k, v) for k, v in table.items() if k[2] not in skip), key=lambda kv: kv[1][3], reverse=True)
    return [f"cum {ct:7.2f}s self {tt:6.2f}s {nc:>9} calls  {func} ({Path(file).name}:{line})"
            for (file, line, func), (_cc, nc, tt, ct, _callers) in rows[:top]]


# -- the report ---------------------------------------------------------------------------------------------

def _spread(runs: list[dict[str, Any]], key: str, fmt: str = "{:.3f}") -> str:
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    return med if len(values) == 1 else f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _cpu(runs: list[dict[str, Any]], name: str) -> str:
    values = [r["stack_cpu_s"].get(name, 0.0) for r in runs]
    return f"{statistics.median(values):.2f}" if values else "-"


def _row(label: str, events: int, runs: list[dict[str, Any]]) -> str:
    per_event = [1e6 * r["server_cpu_s"] / events for r in runs]
    checks = sum(bool(r.get("ok")) for r in runs)
    reconnects = sum(r["reconnects"] for r in runs)
    return (f"| {label} | {events} | {_spread(runs, 'seconds')} | {_spread(runs, 'to_subscribed_s')} | "
            f"{_spread(runs, 'events_per_s', '{:.0f}')} | {_spread(runs, 'server_cpu_s', '{:.2f}')} | "
            f"{statistics.median(per_event):.1f} | {_cpu(runs, 'redis')} | {_cpu(runs, 'standin')} | "
            f"{statistics.median(r['client_cpu_s'] for r in runs):.2f} | "
            f"{statistics.median(r['other_cpu_s'] for r in runs):.2f} | "
            f"{statistics.median(r['load']['load1'] for r in runs):.1f} | {reconnects} | "
            f"{checks} of {len(runs)} |")


def markdown(result: dict[str, Any]) -> str:
    m, cfg = result["machine"], result["config"]
    source = (cfg.get("commit") or "?") + (" with uncommitted changes to the code measured"
                                           if cfg.get("uncommitted_changes") else "")
    rows = []
    redis_phase = result.get("redis")
    verdict = ""
    if redis_phase:
        for kind, runs in redis_phase["runs"].items():
            rows.append(_row({"ws": "Redis, WebSocket", "poll": "Redis, long-poll", "sse": "Redis, SSE"}[kind],
                             redis_phase["events"], runs))
        ws = redis_phase["summary"].get("ws")
        if ws:
            met = ws["max_s"] < TARGET_S and ws["all_ok"]
            verdict = (f"- {redis_phase['events']} events from Redis over a WebSocket in less than {TARGET_S:g} s: "
                       f"median {ws['median_s']:.3f} s, slowest {ws['max_s']:.3f} s of {ws['n']}: "
                       f"{'met' if met else '**missed**'}")
    deep = result.get("deep")
    if deep:
        rows.append(_row(f"oplog ({deep['oplog_only']}) + Redis, WebSocket", deep["events"], deep["runs"]))
        d = deep["summary"]
        verdict += (f"\n- {deep['events']} events, {deep['oplog_only']} of them from the oplog: median "
                    f"{d['median_s']:.2f} s ({deep['events'] / d['median_s']:.0f} events/s), every event once and "
                    f"in order in {sum(bool(r.get('ok')) for r in deep['runs'])} of {d['n']}")
    defaults = result.get("deep_defaults")
    if defaults:
        reasons = sorted({str(r.get("reason")) for r in defaults["resets"]})
        verdict += (f"\n- the same resume from a server with the default limits (`REALTIME_REPLAY_LIMIT` 10000, "
                    f"`REALTIME_DEEP_REPLAY_SECONDS` 10): `reset` ({', '.join(reasons) or 'none'}) after "
                    f"{defaults['seconds']:.2f} s, {defaults['received']} events: "
                    f"{'as documented' if defaults.get('ok') else '**not the documented reset**'}")
    sc = result.get("server_config", {})
    return f"""{SECTION}

`python bench/replay_bench.py` (`bench/replay_bench.py`; raw results in `bench/results/replay.json`). The MongoDB
stand-in, redis-server, the watcher and the server (anonymous, one worker, `MONGODB_URI` set so that it replays
what Redis trimmed from the oplog; `REALTIME_REPLAY_LIMIT` {sc.get('REALTIME_REPLAY_LIMIT')},
`REALTIME_DEEP_REPLAY_SECONDS` {sc.get('REALTIME_DEEP_REPLAY_SECONDS')}, the rest default) run in processes of
their own; the clients, written for the benchmark, run in the benchmark's process, which does nothing else
meanwhile.

- **Redis**: {cfg['events']} public posts are inserted (`insert_many`) and published by the watcher: each a
  `post:created` of about {result.get('event_bytes', 0):.0f} bytes in `public`. A fresh client then resumes
  `public` from the id before them: `subscribe` with `since` on a WebSocket, `GET /poll?since=` (one answer),
  `GET /sse` with `Last-Event-ID`.
- **Oplog**: {cfg['deep_events']} more posts are inserted and published, then `public`'s history is trimmed
  to about {cfg['keep']} entries (`XTRIM MAXLEN ~`, what the watcher's `XADD MAXLEN ~ REALTIME_ROOM_HISTORY`
  does to a busy room), and a client resumes from the id before them: the server reads the trimmed part back
  from the oplog (a change stream from `since`, mapped by the watcher's code), the rest from Redis.

Time: from the client's request to the last event's arrival (history read: to `subscribed`, which the server
sends once it has read the history). Each event is checked against what the watcher published (the room's
history in Redis, or the global stream for the oplog phase): every id once, in order, nothing else. CPU s:
user + system of each process over the measurement; `other`: what the rest of the machine used meanwhile
(other programs); load: the 1-minute load average at the start. Median over {cfg['repeat']} runs, the range
in brackets. A client closed as slow would reconnect and resume from its last event, as clients do (counted).

Measured {result['date']} on {m['cpus']} CPUs ({m['cpu'] or 'unknown CPU'}), Python {m['python']},
redis-server {m['redis_server']}, PyMongo {m['pymongo']}, commit {source}.
MongoDB is the stand-in, not `mongod`: its costs are part of the oplog numbers.

{TABLE_HEAD}
|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|
{chr(10).join(rows)}

{verdict.strip()}

What limits each (cProfile of the server, `--profile FILE`, and a replay of 10,000 events read in a process of
its own against a private Redis, at commit 57face3 and after it):

- **From Redis** the history read (to `subscribed`) takes most of the time. The room's history is read in
  rounds of 128 KiB (the replay memory's page, `PAGE` in `realtime/server/transports.py`): about 26 round trips
  of the paging script for 10,000 events, about 30 ms of Redis CPU. In the server, each event's envelope is
  parsed (`orjson.loads`) and its payload encoded again with the room it is labelled with (`orjson.dumps`):
  about 5 µs an event, with the bookkeeping around it; the id of each entry went through the parser of client
  input (3 µs an event) and each replayed frame was written with a system call of its own, both removed since
  (65 ms of server CPU for the read instead of 100 ms, the frames written 64 KiB at a time). What is left of
  the time is waiting for the CPUs: the server, Redis and the client share 2 cores with the other programs of
  the machine (`other CPU s`, load).
- **From the oplog** one change stream reads the changes one after the other and each goes through PyMongo's
  change stream (a BSON document with its full document) and the watcher's mapping and routing
  (`watchers/routing.py`, `watchers/mapping.py`): about 45 µs of server CPU an event, the mapping the larger
  part of it; one core's worth at most, and the stand-in's CPU besides. A replay of 100,000 events (about
  25 MB) is more than the kernel's buffers and `REALTIME_QUEUE_BYTES` (1 MiB) hold while the client reads: it
  is written 64 KiB at a time, each part when the client has taken the last (before, it was written at once,
  the connection was closed as slow (4008) and each resume started another replay from the oplog: 16.7 s
  median with 1-3 such restarts a run, 99.6 µs of server CPU an event; `reconnects` counts them).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000, help="events replayed from Redis (10000)")
    parser.add_argument("--deep-events", type=int, default=100_000, help="events replayed from the oplog (100000)")
    parser.add_argument("--keep", type=int, default=1000, help="entries the room's history keeps (XTRIM ~; 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each kind (3)")
    parser.add_argument("--transports", type=lambda s: s.split(","), default=["ws", "poll", "sse"],
                        help="transports of the Redis phase (ws,poll,sse)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between measurements (1)")
    parser.add_argument("--profile", type=Path, default=None, metavar="FILE",
                        help="run the server under cProfile, its statistics written to FILE")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results or docs/benchmarks.md")
    parser.add_argument("--report-only", action="store_true",
                        help="write docs/benchmarks.md's section again from bench/results/replay.json, measure nothing")
    args = parser.parse_args(argv)
    if args.report_only:
        replace_section(SECTION, markdown(json.loads(RESULTS.read_text())))
        print(f"wrote {DOCS.relative_to(ROOT)} from {RESULTS.relative_to(ROOT)}")
        return 0
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as tmp:
        stack = Stack(Path(tmp), None)
        try:
            measured = run(args, stack, Path(tmp))
        except Exception as exc:
            traceback.print_exc()
            print(f"replay_bench: failed: {exc}", file=sys.stderr)
            for proc in stack.procs:
                print(f"--- {proc.name} (last lines of its log) ---\n{proc.tail()}", file=sys.stderr)
            return 1
        finally:
            stack.close()
        logs = stack.log_summary()
    result = {
        "benchmark": "replay", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {**benchkit.machine(), "pymongo": pymongo.version, "redis_py": redis.__version__},
        "config": {"events": args.events, "deep_events": args.deep_events, "keep": args.keep, "repeat": args.repeat,
                   "transports": args.transports, "profile": str(args.profile or ""), **source_state()},
        "wall_seconds": time.monotonic() - started, **measured, "logs": logs,
    }
    for line in measured.get("profile", []):
        print(line)
    print(markdown(result))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
        replace_section(SECTION, markdown(result))
        print(f"wrote {RESULTS.relative_to(ROOT)} and {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
