#!/usr/bin/env python
"""End-to-end benchmark: from a producer's write to MongoDB to a WebSocket client's receipt, how late, at what rate.

Not a test: it measures. Everything runs on this machine, each part in a process of its own: the MongoDB
stand-in (``python -m realtime mongo``), a private ``redis-server``, the watcher (``python -m watchers``), the
server (``python -m realtime serve``, anonymous, one worker), one process holding ``--clients`` WebSocket
connections subscribed to ``public`` (a lean asyncio client: the upgrade and the frames by hand), and
``--producers`` producer processes of ``--threads`` writer threads each.

For each offered rate (``--rates``, changes per second; default 200, 1000, 5000), for ``--seconds`` (10):

* the writers insert public posts with PyMongo, taking turns at the offered rate on an absolute schedule (a late
  write is not dropped: the next ones follow at once; writes not made by the end of the period are not made),
  each post carrying in its ``text`` the producer's ``time.time_ns()`` taken just before its ``insert_one`` (a rate
  written ``5000x10``: ``insert_many`` of 10 posts, one stamp for the 10, a write every 10 changes of the rate);
* every client records, for each ``post:created`` event, its receipt time (``time.time_ns()`` when the bytes
  arrive) minus that stamp: the commit-to-client latency (same clock, same machine), per delivery;
* the watcher's lag (``realtime_watcher_lag_seconds``) is sampled every 0.25 s;
* when the producers stop, what is not done yet is the backlog: changes written that the watcher has not read
  (its ``realtime_watcher_changes_total``), and deliveries not received; then the run drains until every
  delivery arrived, nothing arrived for ``--drain-idle`` s, or ``--drain-max`` s passed. The backlog **grew**
  when it took more than a second to drain, or the watcher was more than a second behind at the stop: the
  stack did not keep up with the offered rate (a stack that keeps up drains in milliseconds);
* the stage histograms (``realtime_stage_latency_seconds``, docs/metrics.md) of the watcher and the server are
  read before and after, and their difference says where the time went: samples, mean, p50 and p99 per stage
  (p50 and p99 interpolated within the buckets, as Prometheus's ``histogram_quantile`` does);
* the CPU each process used (user + system, from ``/proc``) over the period and its drain.

Results: a table on stdout, ``bench/results/e2e.json`` and the ``## End to end`` section of
``docs/benchmarks.md`` (the other sections are kept). Loopback only; every wait is bounded (``--seconds-max``).

    python bench/e2e_bench.py                              # 200, 1000 and 5000 changes/s, 10 s each
    python bench/e2e_bench.py --rates 1000 --seconds 20 --clients 10 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import gc
import hashlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchkit
import orjson
import pymongo
import redis
from benchkit import DOCS, ROOT, free_port, log, replace_section
from fanout_bench import GUID, MACHINE_FIELDS, client_frame, cpu_times, machine_times, wait_quiet
from pymongo import MongoClient
from watcher_bench import (
    DB,
    Proc,
    Stack,
    fresh_database,
    source_state,
    start_redis,
    start_server,
    start_standin,
    start_watcher,
)

RESULTS = ROOT / "bench" / "results" / "e2e.json"
SECTION = "## End to end"
FAMILY = "realtime_stage_latency_seconds"
WATCHER_STAGES = ("mongodb_to_watcher", "watcher_to_redis")
SERVER_STAGES = ("redis_to_server", "server_to_socket")
STAGES = WATCHER_STAGES + SERVER_STAGES
TARGETS_P99_MS = {1000: 10.0, 5000: 50.0}  # from the issue; at 5000 changes/s no growing backlog either
TABLE_HEAD = ("| offered changes/s | written | written/s | deliveries received | latency p50 / p95 / p99 / max (ms) | "
              "unread by the watcher at the stop | undelivered at the stop | last delivery after the stop (s) | "
              "watcher lag max / rise (s) | backlog grew |")
GREW_S = 0.5  # a drain longer than this, or a watcher lag that rose by this much: the stack did not keep up
LAG_SAMPLE_S = 0.25


class BenchError(Exception):
    pass


class BenchTimeout(BenchError):
    pass


# -- the clients (one process, N connections) --------------------------------------------------------------

@dataclass
class Arrivals:
    """What the clients received of one phase: a latency (ms) per delivery, and when the last one came."""

    latencies: array[float] = field(default_factory=lambda: array("d"))
    first_ns: int = 0
    last_ns: int = 0


class WsClient(asyncio.Protocol):
    def __init__(self, phases: dict[str, Arrivals], errors: dict[str, int], subscribed: asyncio.Future[None]) -> None:
        self.phases = phases
        self.errors = errors
        self.subscribed = subscribed
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.accept = b""
        self.buf = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        transport.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def fail(self, why: str) -> None:
        self.errors[why[:100]] = self.errors.get(why[:100], 0) + 1
        if not self.subscribed.done():
            self.subscribed.set_exception(BenchError(why))

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf + data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head, buf = buf[:end], buf[end + 4:]
            if not head.startswith(b"HTTP/1.1 101") or self.accept not in head:
                self.fail(f"upgrade refused: {head[:60]!r}")
                return
            self.upgraded = True
            assert self.transport is not None
            self.transport.write(client_frame(0x1, orjson.dumps({"op": "subscribe", "rooms": ["public"]})))
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1] & 0x7F
            head = 2
            if b1 == 126:
                if n - pos < 4:
                    break
                b1, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif b1 == 127:
                if n - pos < 10:
                    break
                b1, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if n - pos < head + b1:
                break
            payload = buf[pos + head:pos + head + b1]
            pos += head + b1
            opcode = b0 & 0x0F
            if opcode == 0x1 and b0 & 0x80:
                self.message(payload, now)
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(client_frame(0xA, payload))
            elif opcode == 0x8:
                self.fail(f"closed by the server: {int.from_bytes(payload[:2], 'big')} {payload[2:]!r}")
            elif opcode != 0xA:
                self.fail(f"unexpected frame (opcode {opcode}, fin {b0 >> 7})")
        self.buf = buf[pos:]

    def message(self, payload: bytes, now: int) -> None:
        msg = orjson.loads(payload)
        op = msg.get("op")
        if op == "event":
            data = msg.get("data") or {}
            phase, _, _ = str(data.get("id", "")).partition(".")
            arrivals = self.phases.get(phase)
            if arrivals is None:
                arrivals = self.phases[phase] = Arrivals()
            stamp = data.get("text", "")
            if msg.get("type") != "post:created" or not stamp.isdigit():
                self.fail(f"an event the producers did not write: {payload[:80]!r}")
                return
            arrivals.latencies.append((now - int(stamp)) / 1e6)
            arrivals.first_ns = arrivals.first_ns or now
            arrivals.last_ns = now
        elif op == "subscribed":
            if not self.subscribed.done():
                self.subscribed.set_result(None)
        elif op in ("error", "reset"):
            self.fail(f"{op}: {payload[:100]!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection lost: {exc}")


def quiet_collector() -> None:
    """The measuring processes (clients, producers) do not collect garbage: a full collection pauses them
    for tens of milliseconds, between a producer's stamp and its write or between a frame's arrival and its
    reading, which would be counted as the product's latency. What they allocate is freed by reference
    counting; a run is bounded."""
    gc.freeze()
    gc.disable()


def clients_main(port: int, n: int, pipe: multiprocessing.connection.Connection) -> None:
    """In its own process: open n connections, subscribe each to public, then answer the parent's questions."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_collector()
    asyncio.run(_clients(port, n, pipe))


async def _clients(port: int, n: int, pipe: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    phases: dict[str, Arrivals] = {}
    errors: dict[str, int] = {}
    conns = []
    try:
        for _ in range(n):
            subscribed: asyncio.Future[None] = loop.create_future()
            transport, _proto = await loop.create_connection(
                lambda s=subscribed: WsClient(phases, errors, s), "127.0.0.1", port)
            conns.append(transport)
            await asyncio.wait_for(subscribed, 10)
    except Exception as exc:
        pipe.send(("failed", f"{type(exc).__name__}: {exc}; {errors}"))
        return
    pipe.send(("ready", n))
    done = asyncio.Event()

    def on_command() -> None:
        while pipe.poll():
            cmd, arg = pipe.recv()
            arrivals = phases.get(arg) or Arrivals()
            if cmd == "count":
                pipe.send((len(arrivals.latencies), arrivals.last_ns, dict(errors)))
            elif cmd == "report":
                pipe.send({"latencies": arrivals.latencies.tobytes(), "first_ns": arrivals.first_ns,
                           "last_ns": arrivals.last_ns, "errors": dict(errors)})
            else:
                done.set()

    loop.add_reader(pipe.fileno(), on_command)
    await done.wait()
    loop.remove_reader(pipe.fileno())
    for t in conns:
        t.close()


class Clients:
    def __init__(self, port: int, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=clients_main, args=(port, n, child), daemon=True, name="e2e-clients")
        self.process.start()
        child.close()
        kind, detail = self.recv(30)
        if kind != "ready":
            raise BenchError(f"the clients did not subscribe: {detail}")

    def recv(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise BenchTimeout(f"the clients answered nothing within {timeout:.0f}s")
        try:
            return self.conn.recv()
        except EOFError:
            raise BenchError(f"the clients' process exited ({self.process.exitcode})") from None

    def count(self, phase: str) -> tuple[int, int, dict[str, int]]:
        self.conn.send(("count", phase))
        got: tuple[int, int, dict[str, int]] = self.recv(10)
        return got

    def report(self, phase: str) -> dict[str, Any]:
        self.conn.send(("report", phase))
        got: dict[str, Any] = self.recv(30)
        return got

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop", ""))
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


# -- the producers ------------------------------------------------------------------------------------------

def producer_main(uri: str, phase: str, k: int, writers: int, threads: int, rate: float, seconds: float,
                  batch: int, pipe: multiprocessing.connection.Connection) -> None:
    """In its own process: ``threads`` writers, each inserting public posts for ``seconds``, all of the run's
    ``writers`` taking turns on one absolute schedule of ``rate`` posts a second (writer w makes writes w,
    w + writers, w + 2 writers...), ``batch`` posts a write."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_collector()
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=10_000, maxPoolSize=threads + 2)
    try:
        posts = client[DB].posts
        client.admin.command("ping")
        pipe.send("ready")
        if not pipe.poll(60) or pipe.recv() != "go":
            return
        cpu0 = time.process_time()
        start = time.monotonic()
        end = start + seconds
        results: list[tuple[int, float, array[float]]] = []
        failures: list[BaseException] = []

        def writer(j: int) -> None:
            w = k * threads + j
            writes: array[float] = array("d")  # each write's round trip, ms
            behind = 0.0
            n = 0
            try:
                while True:
                    due = start + (n * writers + w) * batch / rate
                    now = time.monotonic()
                    if due >= end or now >= end:
                        break
                    if due > now:
                        time.sleep(due - now)
                    else:
                        behind = max(behind, now - due)
                    t = time.time_ns()
                    if batch == 1:
                        posts.insert_one({"_id": f"{phase}.{w}.{n}", "authorId": f"producer{w}",
                                          "visibility": "public", "title": f"post {n}", "text": str(t)})
                    else:
                        posts.insert_many([{"_id": f"{phase}.{w}.{n}.{i}", "authorId": f"producer{w}",
                                            "visibility": "public", "title": f"post {n}.{i}", "text": str(t)}
                                           for i in range(batch)])
                    writes.append((time.time_ns() - t) / 1e6)
                    n += 1
            except BaseException as exc:
                failures.append(exc)
            results.append((n, behind, writes))

        pool = [threading.Thread(target=writer, args=(j,), name=f"writer{j}") for j in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(seconds + 30)
        if failures or any(t.is_alive() for t in pool):
            pipe.send(("failed", repr(failures[:1]) if failures else "a writer did not finish"))
            return
        write_ms: array[float] = array("d")
        for _, _, writes in results:
            write_ms.extend(writes)
        pipe.send(("done", {"writes": sum(n for n, _, _ in results) * batch, "seconds": time.monotonic() - start,
                            "behind_s": max(b for _, b, _ in results), "write_ms": write_ms.tobytes(),
                            "cpu_s": time.process_time() - cpu0}))
    finally:
        client.close()


class Producers:
    def __init__(self, uri: str, phase: str, n: int, threads: int, rate: float, seconds: float, batch: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[multiprocessing.connection.Connection] = []
        self.processes = []
        for k in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=producer_main,
                            args=(uri, phase, k, n * threads, threads, rate, seconds, batch, child),
                            daemon=True, name=f"e2e-producer{k}")
            p.start()
            child.close()
            self.conns.append(parent)
            self.processes.append(p)
        for c in self.conns:
            if not c.poll(60) or c.recv() != "ready":
                raise BenchError("a producer did not start")

    def go(self) -> None:
        for c in self.conns:
            c.send("go")

    def wait(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        out = []
        for c in self.conns:
            if not c.poll(max(deadline - time.monotonic(), 0)):
                raise BenchTimeout("a producer did not finish in time")
            try:
                kind, result = c.recv()
            except EOFError:
                raise BenchError("a producer exited without its results") from None
            if kind != "done":
                raise BenchError(f"a producer failed: {result}")
            out.append(result)
        return out

    def close(self) -> None:
        for p in self.processes:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)


# -- metrics ------------------------------------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, by name and labels ({} when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        found = SAMPLE.match(line)
        if found:
            labels = tuple(sorted(LABEL.findall(found.group(2) or "")))
            with contextlib.suppress(ValueError):
                out[(found.group(1), labels)] = float(found.group(3))
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def stage_histogram(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], stage: str
                    ) -> tuple[list[float], list[float], float]:
    """A stage's (bounds with +Inf, cumulative counts, sum)."""
    buckets = []
    for (name, labels), value in samples.items():
        d = dict(labels)
        if name == f"{FAMILY}_bucket" and d.get("stage") == stage:
            buckets.append((float(d["le"]), value))  # float("+Inf") is inf
    buckets.sort()
    s = samples.get((f"{FAMILY}_sum", (("stage", stage),)), 0.0)
    return [b for b, _ in buckets], [c for _, c in buckets], s


def quantile(q: float, bounds: list[float], cumulative: list[float]) -> float:
    """As Prometheus's histogram_quantile: linear within the bucket holding the rank (from 0 in the first)."""
    if not cumulative or cumulative[-1] <= 0:
        return math.nan
    rank = q * cumulative[-1]
    for i, (bound, cum) in enumerate(zip(bounds, cumulative, strict=True)):
        if cum >= rank:
            if math.isinf(bound):
                return bounds[i - 1] if i else math.nan
            lo, below = (bounds[i - 1], cumulative[i - 1]) if i else (0.0, 0.0)
            inside = cum - below
            return lo + (bound - lo) * ((rank - below) / inside if inside else 1.0)
    return math.nan


def stage_deltas(before: dict[Any, float], after: dict[Any, float], stages: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for stage in stages:
        bounds, cum_after, sum_after = stage_histogram(after, stage)
        _, cum_before, sum_before = stage_histogram(before, stage)
        if len(cum_before) != len(cum_after):
            cum_before = [0.0] * len(cum_after)
        cum = [a - b for a, b in zip(cum_after, cum_before, strict=True)]
        count = cum[-1] if cum else 0.0
        out[stage] = {"samples": int(count), "mean_ms": (sum_after - sum_before) / count * 1e3 if count else math.nan,
                      "p50_ms": quantile(0.5, bounds, cum) * 1e3, "p99_ms": quantile(0.99, bounds, cum) * 1e3}
    return out


# -- statistics ---------------------------------------------------------------------------------------------

def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan, "max": math.nan, "mean": math.nan, "n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        rank = q / 100 * (len(ordered) - 1)
        lo = int(rank)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)

    return {"p50": at(50), "p95": at(95), "p99": at(99), "max": ordered[-1], "mean": sum(ordered) / len(ordered),
            "n": len(ordered)}


def lag_rise(lags: list[tuple[float, float]]) -> float:
    """How much the watcher's lag rose over the period: the slope of a least-squares line through its samples,
    times the period (0 for fewer than 3 samples). A stack that keeps up has a flat lag, however high."""
    if len(lags) < 3:
        return 0.0
    n = len(lags)
    mt = sum(t for t, _ in lags) / n
    ml = sum(v for _, v in lags) / n
    var = sum((t - mt) ** 2 for t, _ in lags)
    slope = sum((t - mt) * (v - ml) for t, v in lags) / var if var else 0.0
    return slope * (lags[-1][0] - lags[0][0])


# -- the run ------------------------------------------------------------------------------------------------

def wait_streaming(mongo: MongoClient[dict[str, Any]], clients: Clients, watcher: Proc, deadline: float) -> None:
    """Write a post until the clients receive one: the whole path is up."""
    n = 0
    until = min(deadline, time.monotonic() + 60)
    while clients.count("warmup")[0] == 0:
        mongo[DB].posts.insert_one({"_id": f"warmup.0.{n}", "authorId": "warmup", "visibility": "public",
                                    "text": str(time.time_ns())})
        n += 1
        time.sleep(0.25)
        if watcher.popen.poll() is not None:
            raise BenchError(f"the watcher exited ({watcher.popen.returncode}):\n{watcher.tail()}")
        if time.monotonic() > until:
            raise BenchTimeout(f"no event reached the clients:\n{watcher.tail()}")


def cpu_of(procs: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_times(pids)) for name, pids in procs.items()}


def run_phase(args: argparse.Namespace, rate: float, batch: int, mongo_uri: str, clients: Clients, watcher_port: int,
              server_port: int, procs: dict[str, list[int]], deadline: float) -> dict[str, Any]:
    phase = f"r{round(rate * 1000)}x{batch}"  # digits alone: it goes into ids, which the clients split at "."
    producers = Producers(mongo_uri, phase, args.producers, args.threads, rate, args.seconds, batch)
    try:
        watcher_before, server_before = scrape(watcher_port), scrape(server_port)
        cpu_before, box_before = cpu_of(procs), machine_times()
        started = time.monotonic()
        producers.go()
        lags: list[tuple[float, float]] = []  # (seconds since the start, the watcher's lag)
        while time.monotonic() < started + args.seconds:
            time.sleep(LAG_SAMPLE_S)
            lag = total(scrape(watcher_port), "realtime_watcher_lag_seconds")
            lags.append((time.monotonic() - started, lag))
        results = producers.wait(min(args.seconds + 30, max(deadline - time.monotonic(), 1)))
        stopped_ns = time.time_ns()
        stopped = time.monotonic()
        at_stop = scrape(watcher_port)
        written = sum(r["writes"] for r in results)
        expected = written * args.clients
        received_at_stop, _, _ = clients.count(phase)
        read_at_stop = int(total(at_stop, "realtime_watcher_changes_total") -
                           total(watcher_before, "realtime_watcher_changes_total"))
        lag_at_stop = total(at_stop, "realtime_watcher_lag_seconds")
        # the drain: until every delivery arrived, nothing came for drain_idle s, or drain_max s passed
        last_change, seen = time.monotonic(), received_at_stop
        while True:
            got, _, _ = clients.count(phase)
            now = time.monotonic()
            if got != seen:
                last_change, seen = now, got
            if got >= expected or now - last_change > args.drain_idle or now - stopped > args.drain_max \
                    or now > deadline:
                break
            time.sleep(0.05)
        drained = time.monotonic()
        watcher_after, server_after = scrape(watcher_port), scrape(server_port)
        cpu_after, box_after = cpu_of(procs), machine_times()
        report = clients.report(phase)
    finally:
        producers.close()
    latencies = array("d")
    latencies.frombytes(report["latencies"])
    write_ms = array("d")
    for r in results:
        write_ms.frombytes(r["write_ms"])
    wall = drained - started
    cpu_percent = {**{name: 100 * (cpu_after[name] - cpu_before[name]) / wall for name in procs},
                   "producers": 100 * sum(r["cpu_s"] for r in results) / wall}
    box = {k: box_after[k] - box_before[k] for k in MACHINE_FIELDS}
    busy = sum(box.values()) - box["idle"] - box["iowait"]
    other_cpu = busy - sum(cpu_percent.values()) * wall / 100
    rise = lag_rise(lags)
    last_after_stop = (report["last_ns"] - stopped_ns) / 1e9 if report["last_ns"] > stopped_ns else 0.0
    produced_seconds = max(r["seconds"] for r in results)
    return {
        "offered": rate, "batch": batch, "seconds": args.seconds, "written": written,
        "achieved": written / produced_seconds,
        "producer_behind_s": max(r["behind_s"] for r in results),
        "write_ms": percentiles(list(write_ms)),
        "expected_deliveries": expected, "received": len(latencies), "latency_ms": percentiles(list(latencies)),
        "backlog": {
            "unread_changes_at_stop": written - read_at_stop, "undelivered_at_stop": expected - received_at_stop,
            "deliveries_after_stop": len(latencies) - received_at_stop, "last_arrival_after_stop_s": last_after_stop,
            "watcher_lag_at_stop_s": lag_at_stop, "watcher_lag_max_s": max((lag for _, lag in lags), default=0.0),
            "watcher_lag_rise_s": rise, "watcher_lags": lags,
            "grew": last_after_stop > GREW_S or rise > GREW_S,
        },
        "stages": {**stage_deltas(watcher_before, watcher_after, WATCHER_STAGES),
                   **stage_deltas(server_before, server_after, SERVER_STAGES)},
        "events_read_by_server": int(total(server_after, "realtime_events_received_total") -
                                     total(server_before, "realtime_events_received_total")),
        "cpu_percent": cpu_percent, "other_cpu_s": round(other_cpu, 2), "wall_s": wall, "errors": report["errors"],
    }


def run(args: argparse.Namespace, stack: Stack, deadline: float) -> list[dict[str, Any]]:
    redis_url = start_redis(stack)
    mongo_uri = start_standin(stack)
    log(f"redis {redis_url}, stand-in {mongo_uri}")
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    clients: Clients | None = None
    try:
        fresh_database(mongo)
        watcher_port = free_port()
        watcher = start_watcher(stack, "watcher", mongo_uri, redis_url, watcher_port, profile=False)
        server, server_port = start_server(stack, "server", redis_url, deadline=deadline)
        clients = Clients(server_port, args.clients)
        wait_streaming(mongo, clients, watcher, deadline)
        log(f"{args.clients} clients subscribed to public; the path is up")
        procs = {"stand-in": [], "redis": [], "watcher": [watcher.popen.pid], "server": [server.popen.pid],
                 "clients": [clients.process.pid or 0]}
        for p in stack.procs:
            if p.name == "standin":
                procs["stand-in"] = [p.popen.pid]
            elif p.name == "redis":
                procs["redis"] = [p.popen.pid]
        phases = []
        for rate, batch in args.rates:
            if args.quiet_max > 0:
                busy = wait_quiet(args.quiet_max)
                if busy > 10:
                    log(f"the machine is still {busy:.0f}% busy after {args.quiet_max:g}s; going on")
            log(f"offering {rate:g} changes/s for {args.seconds:g}s ({args.producers} producers of "
                f"{args.threads} writers, {batch} post{'s' if batch > 1 else ''} a write)")
            result = run_phase(args, rate, batch, mongo_uri, clients, watcher_port, server_port, procs, deadline)
            lat, backlog = result["latency_ms"], result["backlog"]
            log(f"  written {result['written']} ({result['achieved']:.0f}/s), received {result['received']}/"
                f"{result['expected_deliveries']}, p50/p99 {lat['p50']:.1f}/{lat['p99']:.1f} ms, backlog at stop "
                f"{backlog['unread_changes_at_stop']} changes, drained {backlog['last_arrival_after_stop_s']:.2f}s "
                f"after the stop{' (grew)' if backlog['grew'] else ''}")
            phases.append(result)
            if result["received"] < result["expected_deliveries"]:
                log("  not every delivery arrived: the next rates would measure this one's backlog; stopping")
                break
        return phases
    finally:
        if clients is not None:
            clients.close()
        mongo.close()


# -- reports ------------------------------------------------------------------------------------------------

def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def verdicts(phases: list[dict[str, Any]]) -> list[str]:
    out = []
    for p in phases:
        target = TARGETS_P99_MS.get(int(p["offered"]))
        if target is None:
            continue
        p99 = p["latency_ms"]["p99"]
        met = p99 <= target and p["received"] == p["expected_deliveries"] and p["achieved"] >= 0.95 * p["offered"]
        line = (f"{label(p)} changes/s: p99 {ms(p99)} ms (≤ {target:g}), {p['achieved']:.0f} changes/s written "
                f"of {p['offered']:g} offered: {'met' if met else '**missed**'}")
        if p["offered"] >= 5000:
            line += f"; no growing backlog: {'**missed**' if p['backlog']['grew'] else 'met'}"
        out.append(line)
    return out


def rates(text: str) -> list[tuple[float, int]]:
    """``200,5000x10`` -> [(200.0, 1), (5000.0, 10)]: changes per second, and posts per write."""
    out = []
    for part in text.split(","):
        rate, _, batch = part.strip().partition("x")
        try:
            offered, size = float(rate), int(batch or 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a rate: {part!r} (e.g. 200 or 5000x10)") from None
        if not (0 < offered <= 1_000_000 and 1 <= size <= 10_000):
            raise argparse.ArgumentTypeError(f"out of range: {part!r} (0 < rate <= 1000000, 1 <= size <= 10000)")
        out.append((offered, size))
    return out


def label(p: dict[str, Any]) -> str:
    """A phase's offered rate, and its writes' size when they are not single inserts."""
    batch = p.get("batch", 1)
    return f"{p['offered']:g}" + (f" (writes of {batch})" if batch > 1 else "")


def markdown(result: dict[str, Any]) -> str:
    m, cfg, phases = result["machine"], result["config"], result["phases"]
    source = (cfg.get("commit") or "?") + (" with uncommitted changes to the code measured"
                                           if cfg.get("uncommitted_changes") else "")
    rows = []
    for p in phases:
        lat, b = p["latency_ms"], p["backlog"]
        rows.append(f"| {label(p)} | {p['written']} | {p['achieved']:.0f} | {p['received']} / "
                    f"{p['expected_deliveries']} | {ms(lat['p50'])} / {ms(lat['p95'])} / {ms(lat['p99'])} / "
                    f"{ms(lat['max'])} | {b['unread_changes_at_stop']} | {b['undelivered_at_stop']} | "
                    f"{b['last_arrival_after_stop_s']:.2f} | {b['watcher_lag_max_s']:.2f} / "
                    f"{b['watcher_lag_rise_s']:+.2f} | {'**yes**' if b['grew'] else 'no'} |")
    stage_rows = []
    for stage in STAGES:
        cells = []
        for p in phases:
            s = p["stages"][stage]
            cells.append(f"{ms(s['mean_ms'])} / {ms(s['p50_ms'])} / {ms(s['p99_ms'])}")
        stage_rows.append(f"| `{stage}` | " + " | ".join(cells) + " |")
    sums = " | ".join(f"{ms(sum(p['stages'][s]['mean_ms'] for s in STAGES))} (end to end "
                      f"{ms(p['latency_ms']['mean'])})" for p in phases)
    cpu_names = list(phases[0]["cpu_percent"]) if phases else []
    cpu_rows = [f"| {label(p)} | " + " | ".join(f"{p['cpu_percent'][n]:.0f}" for n in cpu_names) +
                f" | {p['other_cpu_s']:.1f} |" for p in phases]
    producer_rows = [f"| {label(p)} | {p['achieved']:.0f} | {ms(p['write_ms']['p50'])} / "
                     f"{ms(p['write_ms']['p99'])} | {p['producer_behind_s']:.2f} |" for p in phases]
    header = " | ".join(f"{label(p)}/s" for p in phases)
    verdict = "\n".join(f"- {v}" for v in verdicts(phases)) or "- (no targeted rate measured)"
    shares = []
    for p in phases:
        means = {st: p["stages"][st]["mean_ms"] for st in STAGES if not math.isnan(p["stages"][st]["mean_ms"])}
        if means:
            top = max(means, key=lambda st: means[st])
            shares.append(f"{label(p)}/s: `{top}`, {100 * means[top] / sum(means.values()):.0f}% of the "
                          "sum of the means")
    where = "The largest stage: " + "; ".join(shares) + "." if shares else ""
    other = max((p["other_cpu_s"] for p in phases), default=0.0)
    disturbed = (f"\n**Disturbed:** other programs used up to {other:.1f} CPU s during a rate's period and drain "
                 "(`other CPU s` below): the latencies include the waits for the CPUs it took.\n" if other > 1 else "")
    return f"""{SECTION}

`python bench/e2e_bench.py` (`bench/e2e_bench.py`; raw results in `bench/results/e2e.json`). The MongoDB
stand-in, redis-server, the watcher, the server (anonymous, one worker), a process holding {cfg['clients']}
WebSocket clients subscribed to `public`, and {cfg['producers']} producer processes ({cfg['threads']} writer threads
each) run in processes of their own. For {cfg['seconds']:g} s per rate the writers insert public posts with
PyMongo, taking turns at the offered rate on an absolute schedule, each post carrying the writer's
`time.time_ns()` taken just before its `insert_one` (a rate with "writes of N": `insert_many` of N posts, one
stamp for the N); latency is each client's receipt time minus that stamp (same clock), per delivery. The
clients' and producers' processes do not collect garbage during a run (a pause there would count as latency).

Backlog: when the producers stop, the changes written that the watcher has not read yet, and the deliveries
not received yet; then the run waits for the rest (at most {cfg['drain_max']:g} s). The watcher's lag
(`realtime_watcher_lag_seconds`) is sampled every {LAG_SAMPLE_S:g} s; its rise is the slope of a least-squares
line through the samples times the period. The backlog **grew** when the last delivery came more than
{GREW_S:g} s after the stop or the lag rose by more than {GREW_S:g} s.

Stages: the watcher's and the server's `realtime_stage_latency_seconds` histograms
([latency per stage](metrics.md#latency-per-stage)) over the period and its drain, quantiles interpolated
within the buckets as `histogram_quantile` does; `server_to_socket` is per event and room, to the room's
last subscriber. Their sum leaves out the producer's write up to its commit, and the client's reading.

Measured {result['date']} on {m['cpus']} CPUs ({m['cpu'] or 'unknown CPU'}), Python {m['python']},
redis-server {m['redis_server']}, PyMongo {m['pymongo']}, commit {source}.
MongoDB is the stand-in, not `mongod`: its costs are part of these numbers, and every process shares the
machine's CPUs with the producers and the clients.
{disturbed}
{TABLE_HEAD}
|---:|---:|---:|---:|---|---:|---:|---:|---|---|
{chr(10).join(rows)}

Where the time goes, per stage: mean / p50 / p99 (ms).

| stage | {header} |
|---|{'---|' * len(phases)}
{chr(10).join(stage_rows)}
| sum of the means | {sums} |

{where}

Producers: what they wrote, each write's round trip (`insert_one`, or `insert_many` where the rate says
"writes of N"), and how far behind their schedule they fell at most (a write is never dropped for being late,
but none is made after the period):

| offered changes/s | written/s | write p50 / p99 (ms) | behind schedule at most (s) |
|---:|---:|---|---:|
{chr(10).join(producer_rows)}

CPU of each process over the period and its drain (% of one CPU; `other CPU s`: what the rest of the machine
used meanwhile):

| offered changes/s | {' | '.join(cpu_names)} | other CPU s |
|---:|{'---:|' * len(cpu_names)}---:|
{chr(10).join(cpu_rows)}

Targets of the issue (for information; the stand-in and the watcher are being made faster separately):

{verdict}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rates", type=rates, default=[(200.0, 1), (1000.0, 1), (5000.0, 1)],
                        help="offered changes per second, in order (default 200,1000,5000); 5000x10: in writes "
                             "of 10 posts (insert_many)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of producing per rate (10)")
    parser.add_argument("--clients", type=int, default=4, help="WebSocket clients subscribed to public (4)")
    parser.add_argument("--producers", type=int, default=4, help="producer processes (4)")
    parser.add_argument("--threads", type=int, default=4, help="writer threads per producer process (4)")
    parser.add_argument("--drain-idle", type=float, default=5.0, help="stop draining after this long idle (5 s)")
    parser.add_argument("--drain-max", type=float, default=120.0, help="drain at most this long (120 s)")
    parser.add_argument("--quiet-max", type=float, default=60.0,
                        help="before each rate, wait at most this long for the machine to be nearly idle (60 s; 0: no)")
    parser.add_argument("--seconds-max", type=float, default=900.0, help="overall safety timeout (900 s)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results or docs/benchmarks.md")
    args = parser.parse_args(argv)
    if any(r <= 0 for r, _ in args.rates) or args.seconds <= 0 or args.clients < 1 or args.producers < 1 \
            or args.threads < 1 or any(b < 1 for _, b in args.rates):
        parser.error("rates, batches and --seconds must be positive, --clients, --producers and --threads at least 1")
    started = time.monotonic()
    deadline = started + args.seconds_max

    def on_alarm(_sig: int, _frame: Any) -> None:
        raise BenchTimeout(f"over --seconds-max ({args.seconds_max:.0f}s)")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.seconds_max) + 10)  # a backstop: every wait is bounded by the deadline already
    with tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp:
        stack = Stack(Path(tmp), None)
        try:
            phases = run(args, stack, deadline)
        except Exception as exc:
            traceback.print_exc()
            print(f"e2e_bench: {'timed out' if isinstance(exc, BenchTimeout) else 'failed'}: {exc}", file=sys.stderr)
            for proc in stack.procs:
                print(f"--- {proc.name} (last lines of its log) ---\n{proc.tail()}", file=sys.stderr)
            return 1
        finally:
            signal.alarm(0)
            stack.close()
        logs = stack.log_summary()
    result = {
        "benchmark": "e2e", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {**benchkit.machine(), "pymongo": pymongo.version, "redis_py": redis.__version__},
        "config": {"rates": args.rates, "seconds": args.seconds, "clients": args.clients, "producers": args.producers,
                   "threads": args.threads,
                   "drain_idle": args.drain_idle, "drain_max": args.drain_max,
                   "quiet_max": args.quiet_max, **source_state()},
        "wall_seconds": time.monotonic() - started, "phases": phases, "logs": logs,
    }
    print()
    print(markdown(result))
    for name, info in logs.items():
        for line in info["notable"]:
            print(f"  {name}: {line}")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
        replace_section(SECTION, markdown(result))
        print(f"wrote {RESULTS.relative_to(ROOT)} and {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
