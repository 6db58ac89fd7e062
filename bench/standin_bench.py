#!/usr/bin/env python
"""MongoDB stand-in benchmark: how fast ``realtime mongo`` takes writes, serves queries and change streams.

Not a test: it measures. The stand-in (``python -m realtime mongo``) runs in a process of its own, on loopback;
the clients are PyMongo (sync) in this process. For each collection size (``--sizes``, 1,000 and 1,000,000
documents by default) a fresh stand-in gets a ``likes`` collection with three indexes (``postId``,
``createdAt`` and ``{userId: 1, createdAt: 1}``) and that many documents, ten per post and twenty per user, so a
query matches as many documents at every size. Then, in order:

* **queries**: each kind run ``--queries`` times (or for ``--query-seconds``, whichever ends first), its round
  trip timed: ``find`` by equality, ``$in``, range, on a compound index's prefix (alone and with a range on the
  next field), with ``sort`` and ``limit``; ``count_documents``; the watcher's like-count read (``aggregate``
  ``$match`` + ``$count`` at ``readConcern: snapshot``); ``update_one`` and ``update_many`` on an indexed
  field; ``delete_one`` by an indexed field.
* **inserts**: ``--threads`` threads (4) call ``insert_one`` for ``--insert-seconds``; documents per second.
* **change stream**: ``--events`` documents are inserted (``insert_many``), then a bare ``watch()`` cursor
  opened at the time before them reads them all: events per second, from opening the stream to the last event.
* **wake-up**: a thread waits on a change stream (``getMore`` with a 10 s ``maxAwaitTimeMS``) while this one
  inserts one document every 20 ms; latency from just before the insert to the event's arrival, beside the
  insert's own round trip. A server that polled its oplog would add up to its polling interval here.

Results: a table on stdout, ``bench/results/standin.json`` and the ``## MongoDB stand-in`` section of
``docs/benchmarks.md`` (the other sections are kept).

    python bench/standin_bench.py                              # 1k and 1M documents
    python bench/standin_bench.py --sizes 1000 --no-write      # a quick look
    python bench/standin_bench.py --profile /tmp/prof          # the stand-in under py-spy (raw profiles in DIR)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import queue
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
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchkit
import pymongo
from benchkit import DOCS, ROOT, free_port, git, log, replace_section
from bson import ObjectId
from pymongo import MongoClient
from pymongo.collection import Collection

RESULTS = ROOT / "bench" / "results" / "standin.json"
READY = re.compile(r"MongoDB stand-in listening: (mongodb://\S+)")
PER_POST = 10  # documents per postId
PER_USER = 20  # documents per userId
BASE_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
STEP = dt.timedelta(milliseconds=1)  # createdAt of document i: BASE_TIME + i * STEP
TARGETS = {"insert_rate": 5000, "change_stream_rate": 30000}


class BenchTimeout(Exception):
    pass


# -- the stand-in process ----------------------------------------------------------------------------------

class StandinProcess:
    """``python -m realtime mongo`` on a free port, under py-spy when profiling."""

    def __init__(self, workdir: Path, name: str, profile: Path | None) -> None:
        self.log_path = workdir / f"{name}.log"
        argv = [sys.executable, "-m", "realtime", "mongo", "--port", str(free_port())]
        self.profile_path = None
        if profile is not None:
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            self.profile_path = profile / f"{name}.txt"
            argv = [spy, "record", "--rate", "200", "--format", "raw", "--output", str(self.profile_path), "--",
                    *argv]
        with self.log_path.open("ab") as err:
            self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
        self.target_pid = _child_of(self.popen.pid) if profile is not None else self.popen.pid
        self.uri = self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> str:
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        buffer = b""
        while (match := READY.search(buffer.decode(errors="replace"))) is None:  # py-spy may print lines first
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.popen.poll() is not None:
                raise RuntimeError(f"the stand-in did not start: {buffer!r}\n{benchkit.tail(self.log_path, 20)}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"the stand-in exited: {buffer!r}\n{benchkit.tail(self.log_path, 20)}")
                buffer += chunk
        return match.group(1)

    def cpu_seconds(self) -> float:
        """User and system CPU time the stand-in has used so far."""
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{self.target_pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return float("nan")

    def rss_mib(self) -> float:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.target_pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.target_pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log("the stand-in did not exit within its time after SIGTERM; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.target_pid, signal.SIGKILL)
                self.popen.kill()
                self.popen.wait(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


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


# -- the data ------------------------------------------------------------------------------------------------

def like(i: int, size: int) -> dict[str, Any]:
    """Document ``i`` of a collection of ``size``: ten per post, twenty per user, one per millisecond."""
    return {"_id": ObjectId(), "postId": f"p{i // PER_POST}", "userId": f"u{i % max(size // PER_USER, 1)}",
            "createdAt": BASE_TIME + i * STEP, "n": i}


def fill(coll: Collection[dict[str, Any]], size: int, deadline: float) -> float:
    """Create the indexes and insert ``size`` documents; returns the seconds the inserts took."""
    coll.create_index("postId")
    coll.create_index("createdAt")
    coll.create_index([("userId", 1), ("createdAt", 1)])
    started = time.perf_counter()
    batch = 5000
    for start in range(0, size, batch):
        if time.monotonic() > deadline:
            raise BenchTimeout(f"filling the collection: {start} of {size} documents in time")
        coll.insert_many([like(i, size) for i in range(start, min(start + batch, size))], ordered=False)
    return time.perf_counter() - started


# -- queries ----------------------------------------------------------------------------------------------------

def query_kinds(client: MongoClient[dict[str, Any]], coll: Collection[dict[str, Any]], size: int
                ) -> list[tuple[str, int, Callable[[int], int]]]:
    """(name, documents each call should match, call(k) -> documents it matched). ``k`` picks the post, user or
    time; different calls hit different documents."""
    posts = size // PER_POST
    users = max(size // PER_USER, 1)
    db = coll.database

    def post(k: int) -> str:
        return f"p{(k * 7919) % posts}"

    def user(k: int) -> str:
        return f"u{(k * 104729) % users}"

    def at(k: int) -> dt.datetime:
        return BASE_TIME + ((k * 7919) % max(size - PER_POST, 1)) * STEP

    def snapshot_count(k: int) -> int:
        now = db.command("ping")["operationTime"]
        reply = db.command({"aggregate": coll.name, "pipeline": [{"$match": {"postId": {"$in": [post(k)]}}},
                                                                 {"$count": "n"}],
                            "cursor": {}, "readConcern": {"level": "snapshot", "atClusterTime": now}})
        batch = reply["cursor"]["firstBatch"]
        return int(batch[0]["n"]) if batch else 0

    return [
        ("find {postId: x}", PER_POST, lambda k: len(list(coll.find({"postId": post(k)})))),
        ("find {postId: {$in: [x, y, z]}}", 3 * PER_POST,
         lambda k: len(list(coll.find({"postId": {"$in": [post(k), post(k + 1), post(k + 2)]}})))),
        ("find {createdAt: {$gte: t, $lt: t + 10 ms}}", PER_POST,
         lambda k: len(list(coll.find({"createdAt": {"$gte": at(k), "$lt": at(k) + PER_POST * STEP}})))),
        ("find {userId: u} (compound prefix)", PER_USER, lambda k: len(list(coll.find({"userId": user(k)})))),
        ("find {userId: u, createdAt: {$gte: t}}", -1,
         lambda k: len(list(coll.find({"userId": user(k), "createdAt": {"$gte": at(k)}})))),
        ("find {postId: {$in: [..]}}.sort(createdAt: -1).limit(5)", 5,
         lambda k: len(list(coll.find({"postId": {"$in": [post(k), post(k + 1)]}}).sort("createdAt", -1).limit(5)))),
        ("count_documents {postId: x}", PER_POST, lambda k: coll.count_documents({"postId": post(k)})),
        ("aggregate $match + $count, snapshot (the watcher's)", PER_POST, snapshot_count),
        ("update_one {postId: x} $inc", 1,
         lambda k: coll.update_one({"postId": post(k)}, {"$inc": {"n": 1}}).matched_count),
        ("update_many {userId: u} $set", PER_USER,
         lambda k: coll.update_many({"userId": user(k)}, {"$set": {"seen": k}}).matched_count),
        ("delete_one {postId: x}", 1, lambda k: coll.delete_one({"postId": post(k + 1_000_003)}).deleted_count),
    ]


def run_queries(client: MongoClient[dict[str, Any]], coll: Collection[dict[str, Any]], size: int, count: int,
                seconds: float, deadline: float) -> list[dict[str, Any]]:
    out = []
    for name, expected, call in query_kinds(client, coll, size):
        times: list[float] = []
        matched: Counter[int] = Counter()
        until = min(time.monotonic() + seconds, deadline)
        for k in range(count):
            started = time.perf_counter()
            matched[call(k)] += 1
            times.append((time.perf_counter() - started) * 1000)
            if time.monotonic() > until and len(times) >= 3:
                break
        ok = expected < 0 or set(matched) <= {expected, 0 if name.startswith("delete") else expected}
        out.append({"query": name, "calls": len(times), "p50_ms": percentile(times, 50),
                    "p99_ms": percentile(times, 99), "mean_ms": sum(times) / len(times),
                    "matched": dict(matched), "expected": expected, "ok": ok})
        log(f"  {name}: p50 {out[-1]['p50_ms']:.2f} ms over {len(times)} calls")
    return out


# -- inserts, change streams, wake-ups ------------------------------------------------------------------------

def run_inserts(coll: Collection[dict[str, Any]], size: int, threads: int, seconds: float) -> dict[str, Any]:
    counts = [0] * threads
    errors: list[str] = []
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def worker(lane: int) -> None:
        start.wait()
        i = size + lane
        try:
            while not stop.is_set():
                coll.insert_one(like(i, size))
                counts[lane] += 1
                i += threads
        except Exception as exc:  # reported, not raised: the other threads go on
            errors.append(repr(exc))

    workers = [threading.Thread(target=worker, args=(lane,), daemon=True) for lane in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join(30)
    elapsed = time.perf_counter() - started
    return {"threads": threads, "inserts": sum(counts), "seconds": elapsed, "rate": sum(counts) / elapsed,
            "errors": errors[:5]}


def run_change_stream(client: MongoClient[dict[str, Any]], coll: Collection[dict[str, Any]], size: int,
                      events: int, deadline: float, proc: StandinProcess) -> dict[str, Any]:
    start_at = coll.database.command("ping")["operationTime"]
    base = 10 * size + 10_000_000
    for first in range(0, events, 5000):
        coll.insert_many([like(base + i, size) for i in range(first, min(first + 5000, events))], ordered=False)
    seen = 0
    cpu = proc.cpu_seconds()
    started = time.perf_counter()
    with coll.watch(start_at_operation_time=start_at) as stream:
        for _change in stream:
            seen += 1
            if seen >= events:
                break
            if seen % 1000 == 0 and time.monotonic() > deadline:
                raise BenchTimeout("reading the change stream")
    elapsed = time.perf_counter() - started
    return {"events": seen, "seconds": elapsed, "rate": seen / elapsed,
            "standin_cpu_us": (proc.cpu_seconds() - cpu) / max(seen, 1) * 1e6}


def run_wakeups(coll: Collection[dict[str, Any]], size: int, samples: int) -> dict[str, Any]:
    arrivals: queue.Queue[float] = queue.Queue()
    opened = threading.Event()
    stop = threading.Event()
    errors: list[str] = []

    def waiter() -> None:
        try:
            with coll.watch(max_await_time_ms=10_000) as stream:
                opened.set()
                while not stop.is_set():
                    if stream.try_next() is not None:
                        arrivals.put(time.perf_counter())
        except Exception as exc:
            errors.append(repr(exc))
            opened.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    opened.wait(20)
    latencies, round_trips = [], []
    for k in range(samples):
        time.sleep(0.02)  # the waiter's next getMore is waiting by now
        started = time.perf_counter()
        coll.insert_one(like(20 * size + 20_000_000 + k, size))
        round_trips.append((time.perf_counter() - started) * 1000)
        try:
            latencies.append((arrivals.get(timeout=15) - started) * 1000)
        except queue.Empty:
            errors.append("an event did not arrive within 15 s")
            break
    stop.set()
    coll.insert_one({"wake": "the waiter, so that it sees stop"})
    thread.join(15)
    return {"samples": len(latencies), "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies, default=float("nan")), "insert_p50_ms": percentile(round_trips, 50),
            "errors": errors[:5]}


# -- one size ---------------------------------------------------------------------------------------------------

def run_size(args: argparse.Namespace, workdir: Path, size: int, deadline: float) -> dict[str, Any]:
    load = os.getloadavg()[0]
    proc = StandinProcess(workdir, f"standin-{size}", args.profile)
    client: MongoClient[dict[str, Any]] = MongoClient(proc.uri, maxPoolSize=args.threads + 4)
    try:
        coll = client.bench.likes
        log(f"{size} documents: filling")
        fill_seconds = fill(coll, size, deadline)
        log(f"  {size} documents in {fill_seconds:.1f} s ({size / fill_seconds:.0f}/s), stand-in RSS "
            f"{proc.rss_mib():.0f} MiB")
        queries = run_queries(client, coll, size, args.queries, args.query_seconds, deadline)
        log(f"{size} documents: inserts, {args.threads} threads for {args.insert_seconds:.0f} s")
        cpu = proc.cpu_seconds()
        inserts = run_inserts(coll, size, args.threads, args.insert_seconds)
        inserts["standin_cpu_us"] = (proc.cpu_seconds() - cpu) / max(inserts["inserts"], 1) * 1e6
        log(f"  {inserts['rate']:.0f} inserts/s, stand-in CPU {inserts['standin_cpu_us']:.0f} µs per insert")
        stream = run_change_stream(client, coll, size, args.events, deadline, proc)
        log(f"  change stream: {stream['rate']:.0f} events/s, stand-in CPU {stream['standin_cpu_us']:.1f} µs per event")
        wake = run_wakeups(coll, size, args.wakeups)
        log(f"  wake-up: p50 {wake['p50_ms']:.2f} ms (insert round trip p50 {wake['insert_p50_ms']:.2f} ms)")
        loads = sorted((load, os.getloadavg()[0]))
        return {"size": size, "load": loads, "fill_seconds": fill_seconds, "fill_rate": size / fill_seconds,
                "rss_mib": proc.rss_mib(), "queries": queries, "inserts": inserts, "change_stream": stream,
                "wake": wake}
    finally:
        client.close()
        proc.stop()
        if proc.profile_path is not None:
            for frame, share in profile_summary(proc.profile_path):
                log(f"  profile {share:6.1%}  {frame}")


# -- reports ----------------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def profile_summary(path: Path, top: int = 25) -> list[tuple[str, float]]:
    """Inclusive time per function from a py-spy raw (collapsed) profile, as shares of all samples."""
    counts: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            total += int(count)
            for frame in dict.fromkeys(re.sub(r":\d+\)", ")", f) for f in stack.split(";")):
                counts[frame] += int(count)
    return [(frame, n / total) for frame, n in counts.most_common(top)] if total else []


def source_state() -> dict[str, Any]:
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_changes": git("status", "--porcelain", "--", "realtime").splitlines()}


def _cpu(part: dict[str, Any]) -> str:
    return f"{part['standin_cpu_us']:.1f}" if "standin_cpu_us" in part else "-"


def markdown(result: dict[str, Any]) -> str:
    m, cfg, runs = result["machine"], result["config"], result["runs"]
    source = (cfg.get("commit") or "?") + (" with uncommitted changes to the code measured"
                                           if cfg.get("uncommitted_changes") else "")
    sizes = [f"{r['size']:,}" for r in runs]
    loads = ", ".join(f"{r['load'][0]:.1f}-{r['load'][1]:.1f} at {r['size']:,} documents" for r in runs)
    head = "| | " + " | ".join(f"{s} documents" for s in sizes) + " |\n|---|" + "---:|" * len(runs) + "\n"
    rows = [
        ("documents loaded (`insert_many`, per s)", [f"{r['fill_rate']:.0f}" for r in runs]),
        ("stand-in RSS after the run (MiB)", [f"{r['rss_mib']:.0f}" for r in runs]),
        (f"`insert_one`, {cfg['threads']} threads (per s; target ≥ {TARGETS['insert_rate']:,})",
         [f"{r['inserts']['rate']:.0f}" for r in runs]),
        ("... the stand-in's CPU per insert (µs)", [_cpu(r["inserts"]) for r in runs]),
        (f"change stream to a bare cursor (events/s; target ≥ {TARGETS['change_stream_rate']:,})",
         [f"{r['change_stream']['rate']:.0f}" for r in runs]),
        ("... the stand-in's CPU per event (µs)", [_cpu(r["change_stream"]) for r in runs]),
        ("getMore wake-up: insert to event, p50 / p99 (ms)",
         [f"{r['wake']['p50_ms']:.2f} / {r['wake']['p99_ms']:.2f}" for r in runs]),
        ("... the insert's own round trip, p50 (ms)", [f"{r['wake']['insert_p50_ms']:.2f}" for r in runs]),
    ]
    names = [q["query"] for q in runs[0]["queries"]]
    for i, name in enumerate(names):
        rows.append((f"`{name}`, p50 / p99 (ms)",
                     [f"{r['queries'][i]['p50_ms']:.2f} / {r['queries'][i]['p99_ms']:.2f}" for r in runs]))
    table = head + "".join(f"| {label} | " + " | ".join(cells) + " |\n" for label, cells in rows)
    return f"""## MongoDB stand-in

`python bench/standin_bench.py` (`bench/standin_bench.py`; raw results in `bench/results/standin.json`).
The stand-in (`python -m realtime mongo`) runs in a process of its own; the clients are PyMongo threads in
another. For each size, a fresh stand-in gets a `likes` collection with indexes on `postId`, `createdAt` and
`{{userId: 1, createdAt: 1}}` and that many documents, ten per `postId` and twenty per `userId`, so each query
matches as many documents at every size. Queries: {cfg['queries']} calls of each (fewer when a kind takes more
than {cfg['query_seconds']:.0f} s), round trips timed. Inserts: {cfg['threads']} threads calling `insert_one` for
{cfg['insert_seconds']:.0f} s. Change stream: {cfg['events']:,} documents inserted, then read by a `watch()`
cursor opened at the time before them. Wake-up: a change stream waits in `getMore` while a document is inserted
every 20 ms ({cfg['wakeups']} samples), timed from just before the insert to the event's arrival. The stand-in's CPU
per insert or event (its process's user and system time over the phase, divided by the operations) moves less
than the rates when other work shares the machine (load average over the run: {loads}).

Measured {result['date']} on {m['cpus']} CPUs ({m['cpu'] or 'unknown CPU'}), Python {m['python']},
PyMongo {m['pymongo']}, commit {source}.

{table}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,1000000", help="collection sizes, comma-separated (1000,1000000)")
    parser.add_argument("--queries", type=int, default=200, help="calls of each query kind (200)")
    parser.add_argument("--query-seconds", type=float, default=10.0,
                        help="at most this long per query kind, at least 3 calls (10)")
    parser.add_argument("--threads", type=int, default=4, help="inserting threads (4)")
    parser.add_argument("--insert-seconds", type=float, default=5.0, help="seconds of inserts (5)")
    parser.add_argument("--events", type=int, default=30_000, help="change events read by the bare cursor (30000)")
    parser.add_argument("--wakeups", type=int, default=100, help="getMore wake-up samples (100)")
    parser.add_argument("--seconds-max", type=float, default=1200, help="overall safety timeout (1200)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="run the stand-in under py-spy; raw profiles in DIR (nothing is written)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results or docs/benchmarks.md")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 2 * PER_USER or args.threads < 1 or args.events < 1 or args.wakeups < 1:
        parser.error(f"sizes must be at least {2 * PER_USER}; --threads, --events and --wakeups at least 1")
    if args.profile is not None:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
        args.no_write = True

    started = time.monotonic()
    deadline = started + args.seconds_max

    def on_alarm(_sig: int, _frame: Any) -> None:
        raise BenchTimeout(f"over --seconds-max ({args.seconds_max:.0f}s)")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.seconds_max) + 10)  # a backstop: the long waits are bounded by the deadline already
    runs = []
    with tempfile.TemporaryDirectory(prefix="standin-bench-") as tmp:
        try:
            for size in sizes:
                runs.append(run_size(args, Path(tmp), size, deadline))
        except Exception as exc:
            traceback.print_exc()
            what = "timed out" if isinstance(exc, BenchTimeout) else "failed"
            print(f"standin_bench: {what}: {exc}", file=sys.stderr)
            for path in Path(tmp).glob("*.log"):
                print(f"--- {path.name} (last lines) ---\n{benchkit.tail(path, 20)}", file=sys.stderr)
            return 1
        finally:
            signal.alarm(0)
    result = {
        "benchmark": "standin", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {**benchkit.machine(), "pymongo": pymongo.version},
        "config": {"sizes": sizes, "queries": args.queries, "query_seconds": args.query_seconds,
                   "threads": args.threads, "insert_seconds": args.insert_seconds, "events": args.events,
                   "wakeups": args.wakeups, **source_state()},
        "wall_seconds": time.monotonic() - started,
        "runs": runs,
    }
    print()
    print(markdown(result))
    bad = [f"{r['size']}: {q['query']} matched {q['matched']}" for r in runs for q in r["queries"] if not q["ok"]]
    bad += [f"{r['size']}: {part}: {r[part]['errors']}" for r in runs for part in ("inserts", "wake")
            if r[part]["errors"]]
    for line in bad:
        print(f"problem: {line}", file=sys.stderr)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
        replace_section("## MongoDB stand-in", markdown(result))
        print(f"wrote {RESULTS.relative_to(ROOT)} and {DOCS.relative_to(ROOT)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
