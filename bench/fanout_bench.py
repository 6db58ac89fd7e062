#!/usr/bin/env python
"""Fan-out benchmark: events from the Redis stream to thousands of WebSocket clients, how fast, how late, at what cost.

Not a test: it measures. Everything runs on this machine, each part in a process of its own: a private
``redis-server`` on a free port, the server (``python -m realtime serve``, anonymous mode, one worker unless
``--workers``), ``-p`` load-generator processes and a publisher.

* The load generator opens ``-c`` WebSocket connections (a lean client written for this benchmark: the HTTP
  upgrade and the frame parsing by hand on an ``asyncio.Protocol``, at most ``--concurrency`` handshakes in
  flight per process), connection ``i`` subscribes to ``hashtag:r{i % R}``, and it waits until every
  subscription is confirmed.
* The publisher XADDs ``-e`` events a second for ``-t`` seconds to ``{rt}:events``, round robin over the rooms,
  on an absolute schedule. Each event's ``data`` is ``{"t": <time.time_ns() just before the XADD>, "seq":
  <per-room sequence>, "pad": "xx…"}``, padded so that ``data`` is ``-s`` bytes of JSON; ``ts`` is the same
  time in milliseconds. The entry has the fields of the watcher's: the envelope ``e``, a token ``t`` and the
  append time ``w`` (that time in microseconds, which the server observes as its ``redis_to_server`` stage).
* Then it drains until every expected delivery arrived, nothing arrived for 5 s, or 30 s passed.

Measured: deliveries per second (received / (last receipt - first XADD)), the share received, latency (the
client's ``time.time_ns()`` when the frame's bytes arrive minus the XADD time: same clock, same machine)
p50/p95/p99/max, the server's CPU (user + system of its process tree, from ``/proc``, first XADD to the end of
the drain) per delivery, and the server's RSS per connection: (VmRSS with the C connections subscribed and idle
- VmRSS before they connected) / C, each read after a 2 s pause, after a warm-up of 16 connections opened and
closed (so one-time lazy imports and caches are not charged to the connections).

Then the floor of the same workload: a bare ``os.write()`` loop in a process of its own sends one of the event
frames the server sent to as many loopback connections, on the same schedule, read by another process; its CPU
per write is the least any server spends per delivery on this machine at that moment, and the server's CPU per
delivery is also given as a ratio to it (``--floor-seconds``, 0 to skip).

Results: a table on stdout, ``bench/results/fanout.json`` and the ``## Fan-out`` section of
``docs/benchmarks.md`` (the other sections are kept).

    python bench/fanout_bench.py --workload both           # C=2000 R=20 E=200, then C=2000 R=1 E=50
    python bench/fanout_bench.py -c 500 -r 5 -e 100 -t 10  # one custom run
    python bench/fanout_bench.py --workload rooms --profile /tmp/prof   # py-spy the server (nothing written)
    python bench/fanout_bench.py --tracemalloc 200         # per-connection Python memory, by allocation site
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import datetime as dt
import gc
import hashlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.error
import urllib.request
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchkit
import orjson
from benchkit import DOCS, ROOT, free_port, git, replace_section

RESULTS = ROOT / "bench" / "results" / "fanout.json"
EVENTS_KEY = "{rt}:events"
EVENT_TYPE = "post:created"
WORKLOADS: dict[str, tuple[int, int, float]] = {"rooms": (2000, 20, 200.0), "fanout": (2000, 1, 50.0)}
# From the issue: 2 cores, load generator included, C=2000, 300 B events; floor_us is what the issue gives for the
# kernel's send path alone on the machine where the targets were set.
TARGETS: dict[str, dict[str, float]] = {
    "rooms": {"cpu_us": 7.0, "p99_ms": 2.0, "floor_us": 5.0},
    "fanout": {"cpu_us": 3.5, "p99_ms": 12.0, "floor_us": 2.5},
}
RSS_TARGET_KIB = 18.0
WARMUP_CONNECTIONS = 16
SETTLE_S = 2.0  # pause before each RSS reading
CLK_TCK = os.sysconf("SC_CLK_TCK")
US = "\u00b5s"


class BenchError(Exception):
    pass


class BenchTimeout(BenchError):
    pass


def log(msg: str) -> None:
    benchkit.log(msg, stderr=True)


def room_name(i: int) -> str:
    return f"hashtag:r{i}"


def raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise BenchError(f"the open-files limit is {soft} (hard limit {hard}); {needed} are needed")
    return int(soft)


# -- /proc ---------------------------------------------------------------------------------------------------

def proc_tree(root: int) -> list[int]:
    """``root`` and its descendants (Sanic forks workers when --workers > 1)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes, all their threads included."""
    user = system = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def rss_bytes(pids: list[int], key: bytes = b"VmRSS:") -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_bytes().splitlines():
                if line.startswith(key):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def all_cpu() -> dict[int, tuple[float, str]]:
    """Every process: (user+system CPU seconds, command line), to name what else ran during a measurement."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        comm = stat[stat.index(b"(") + 1:stat.rindex(b")")].decode(errors="replace")
        out[int(name)] = ((int(fields[11]) + int(fields[12])) / CLK_TCK, (cmd.strip() or f"[{comm}]")[:100])
    return out


def other_consumers(before: dict[int, tuple[float, str]], after: dict[int, tuple[float, str]],
                    ours: set[int], top: int = 3) -> list[tuple[str, float]]:
    """The processes not ours that used the most CPU between two all_cpu() readings (short-lived ones that
    came and went in between are not seen)."""
    used = []
    for pid, (cpu, cmd) in after.items():
        if pid in ours:
            continue
        delta = cpu - before.get(pid, (0.0, ""))[0]
        if delta >= 0.05:
            used.append((cmd, round(delta, 2)))
    return sorted(used, key=lambda x: -x[1])[:top]


MACHINE_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_times() -> dict[str, float]:
    """CPU seconds of the whole machine, all cores, by kind (/proc/stat)."""
    values = [int(x) / CLK_TCK for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return dict(zip(MACHINE_FIELDS, values, strict=True))


def wait_quiet(limit: float, threshold_pct: float = 10.0, quiet_for: int = 3) -> float:
    """Wait (at most ``limit`` s) until the machine has been nearly idle for ``quiet_for`` seconds in a row:
    other programs on it (tests, builds) disturb the latencies. Returns the last busy % seen."""
    deadline = time.monotonic() + limit
    calm = 0
    while True:
        a = machine_times()
        time.sleep(1.0)
        b = machine_times()
        total = sum(b.values()) - sum(a.values())
        idle = b["idle"] + b["iowait"] - a["idle"] - a["iowait"]
        busy = 100 * (total - idle) / total if total > 0 else 0.0
        calm = calm + 1 if busy < threshold_pct else 0
        if calm >= quiet_for or time.monotonic() > deadline:
            return busy


# -- processes -----------------------------------------------------------------------------------------------

def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """``sig`` to its process group (its own session), a bounded wait, then SIGKILL to the group."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not exit within {timeout:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # stragglers of the group (Sanic workers)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def tail(self, lines: int = 15) -> str:
        return benchkit.tail(self.log_path, lines)


@dataclass
class Stack:
    """The processes of one run, stopped in reverse order whatever happens."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    children: list[multiprocessing.process.BaseProcess] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as out:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     cwd=ROOT, start_new_session=True, preexec_fn=_die_with_parent)
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def fork(self, target: Callable[..., None], *args: Any) -> multiprocessing.process.BaseProcess:
        child = multiprocessing.get_context("fork").Process(target=target, args=args, daemon=True)
        child.start()
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in reversed(self.children):  # done by now, unless the run was cut short
            if child.is_alive():
                child.terminate()
                child.join(timeout=2)
            if child.is_alive():
                child.kill()
            child.join(timeout=5)
        for proc in reversed(self.procs):
            proc.stop()


def start_redis(stack: Stack) -> tuple[Proc, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed")
    port = free_port()
    proc = stack.spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(stack.workdir)])
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith(b"+PONG"):
                return proc, f"redis://127.0.0.1:{port}/0"
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"redis-server did not start:\n{proc.tail()}")
        time.sleep(0.05)


TRACEMALLOC_SERVER = """
import gc, os, signal, sys, tracemalloc
tracemalloc.start(int(os.environ["BENCH_TRACEMALLOC_FRAMES"]))
taken = [0]
def dump(signum, frame):
    gc.collect()
    taken[0] += 1
    path = os.path.join(os.environ["BENCH_SNAPSHOT_DIR"], "snap%d" % taken[0])
    tracemalloc.take_snapshot().dump(path + ".tmp")
    os.rename(path + ".tmp", path + ".pickle")
signal.signal(signal.SIGUSR1, dump)
from realtime.cli import main
sys.exit(main(["--log-level", "WARNING", "serve"]))
"""


def start_server(stack: Stack, redis_url: str, connections: int, workers: int,
                 tracemalloc_frames: int = 0) -> tuple[Proc, int]:
    port = free_port()
    env = dict(os.environ)
    env.update({
        "REDIS_URL": redis_url,
        "REALTIME_LISTEN": f"127.0.0.1:{port}",
        "REALTIME_ALLOW_ANONYMOUS": "true",
        "REALTIME_WORKERS": str(workers),
        "REALTIME_MAX_CONNECTIONS_PER_ADDRESS": str(connections + 1000),
        "PYTHONUNBUFFERED": "1",
    })
    if tracemalloc_frames:
        env.update({"BENCH_TRACEMALLOC_FRAMES": str(tracemalloc_frames), "BENCH_SNAPSHOT_DIR": str(stack.workdir)})
        argv = [sys.executable, "-c", TRACEMALLOC_SERVER]
    else:
        argv = [sys.executable, "-m", "realtime", "--log-level", "WARNING", "serve"]
    proc = stack.spawn("server", argv, env)
    deadline = time.monotonic() + 30
    while True:
        ready = False
        with contextlib.suppress(OSError, urllib.error.URLError), \
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            ready = reply.status == 200
        # with several workers, every one must be up (each reads the stream on its own)
        if ready and (workers == 1 or len(proc_tree(proc.pid)) > workers):
            return proc, port
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"the server did not become ready:\n{proc.tail()}")
        time.sleep(0.1)


# -- the load generator (runs in forked processes) -------------------------------------------------------------

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
EVENT_HEAD = b'{"op":"event"'
DATA_T = b'"data":{"t":'
SEQ = b',"seq":'


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 §5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if not n:
        return head + key
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return head + key + (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")


class Client(asyncio.Protocol):
    """One WebSocket connection subscribed to one room; records every event's latency and sequence."""

    __slots__ = ("accept", "buf", "count", "dups", "frags", "gaps", "gen", "lost", "next_seq", "ready", "room",
                 "room_tag", "subscribe", "transport", "upgraded", "wrong_room")

    def __init__(self, gen: LoadGen, room: str) -> None:
        self.gen = gen
        self.room = room
        self.room_tag = b'"room":"' + room.encode() + b'"'
        self.transport: asyncio.Transport | None = None
        self.accept = b""
        self.upgraded = False
        self.buf = b""
        self.frags: list[bytes] | None = None
        self.subscribe: asyncio.Future[None] = gen.loop.create_future()
        self.ready = False
        self.lost = False
        self.count = 0
        self.next_seq = 0
        self.gaps = 0
        self.dups = 0
        self.wrong_room = 0

    def fail(self, why: str) -> None:
        self.gen.errors[why[:120]] += 1
        if not self.subscribe.done():
            self.subscribe.set_exception(BenchError(why))
        if self.transport is not None:
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t: Any = transport  # a uvloop TCPTransport, which is no asyncio.Transport subclass
        self.transport = t
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        t.write(b"GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (self.gen.hostport, key))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        gen = self.gen
        if not gen.finishing:
            gen.errors["connection lost" + (f" ({type(exc).__name__})" if exc else "")] += 1
        if not self.subscribe.done():
            self.subscribe.set_exception(BenchError("connection lost before subscribed"))
        gen.open_count -= 1
        if gen.open_count == 0 and gen.all_closed is not None and not gen.all_closed.done():
            gen.all_closed.set_result(None)

    def _upgrade(self, data: bytes) -> bytes | None:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > 16384:
                self.fail("handshake: reply too long")
            else:
                self.buf = data
            return None
        head, rest = data[:end].lower(), data[end + 4:]
        if not head.startswith(b"http/1.1 101"):
            self.fail("handshake: " + data[:end].split(b"\r\n", 1)[0].decode("latin-1"))
            return None
        if b"\r\nsec-websocket-accept: " + self.accept.lower() not in head:
            self.fail("handshake: wrong Sec-WebSocket-Accept")
            return None
        self.upgraded = True
        assert self.transport is not None
        self.transport.write(client_frame(0x1, b'{"op":"subscribe","rooms":["' + self.room.encode() + b'"]}'))
        return rest

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.upgraded:
            rest = self._upgrade(data)
            if not rest:
                return
            data = rest
        n = len(data)
        pos = 0
        events = 0
        while n - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1]
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                start = pos + 10
            else:
                self.fail("protocol: masked frame from the server")
                return
            end = start + length
            if end > n:
                break
            head, pos = pos, end
            if b0 == 0x81 and data.startswith(EVENT_HEAD, start):  # the hot path: a whole text frame, an event
                self.event(data, start, end, now)
                events += 1
                if not self.gen.sample:
                    self.gen.sample = data[head:end]  # one event frame as sent, for the floor
            elif not self.frame(b0, data[start:end], now):
                return
        if pos < n:
            self.buf = data[pos:]
        if events:
            gen = self.gen
            gen.received += events
            gen.last_rx = now

    def event(self, data: bytes, start: int, end: int, now: int) -> None:
        i = data.find(DATA_T, start, end)
        j = data.find(b",", i + 12, end) if i >= 0 else -1
        if j < 0 or not data.startswith(SEQ, j):
            self.gen.errors["event frame without data.t and data.seq"] += 1
            return
        k = data.find(b",", j + 7, end)
        t = int(data[i + 12:j])
        seq = int(data[j + 7:k])
        self.gen.lat.append(now - t)
        self.count += 1
        if data.find(self.room_tag, start, i) < 0:
            self.wrong_room += 1
        expected = self.next_seq
        if seq == expected:
            self.next_seq = seq + 1
        elif seq > expected:
            self.gaps += seq - expected
            self.next_seq = seq + 1
        else:
            self.dups += 1

    def frame(self, b0: int, payload: bytes, now: int) -> bool:
        """Every frame but a whole event: control frames, fragments, protocol replies. False: stop reading."""
        assert self.transport is not None
        opcode, fin = b0 & 0x0F, b0 & 0x80
        if opcode == 0x9:
            self.transport.write(client_frame(0xA, payload))
            return True
        if opcode == 0xA:
            return True
        if opcode == 0x8:
            if not self.gen.finishing:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.gen.errors[f"closed by the server ({code} {payload[2:60].decode(errors='replace')})"] += 1
            self.transport.write(client_frame(0x8, payload[:2]))
            self.gen.loop.call_later(2.0, self.transport.abort)  # the server closes TCP first
            return False
        if opcode in (0x1, 0x2) and not fin:
            self.frags = [payload]
            return True
        if opcode == 0x0:
            if self.frags is None:
                self.fail("protocol: continuation without a first fragment")
                return False
            self.frags.append(payload)
            if not fin:
                return True
            payload, self.frags = b"".join(self.frags), None
        elif opcode not in (0x1, 0x2):
            self.fail(f"protocol: opcode {opcode}")
            return False
        if payload.startswith(EVENT_HEAD):
            self.event(payload, 0, len(payload), now)
            self.gen.received += 1
            self.gen.last_rx = now
            return True
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.gen.errors["a frame that is not JSON"] += 1
            return True
        op = msg.get("op") if isinstance(msg, dict) else None
        if op == "subscribed":
            if not self.subscribe.done():
                self.ready = True
                self.subscribe.set_result(None)
        elif op == "error":
            self.fail(f"server error: {msg.get('code')}: {msg.get('message')}")
            return False
        else:
            self.gen.errors[f"unexpected op {op!r}"] += 1
        return True

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(client_frame(0x8, (1000).to_bytes(2, "big")))


class LoadGen:
    """A share of the connections, in one process. Pipe protocol: it sends ("ready", rooms, seconds, errors)
    once connected; then "poll" -> ("count", received, last receipt ns), "finish" -> ("result", stats)."""

    def __init__(self, cfg: dict[str, Any], indices: list[int], pipe: multiprocessing.connection.Connection) -> None:
        self.cfg = cfg
        self.indices = indices
        self.pipe = pipe
        self.hostport = f"127.0.0.1:{cfg['port']}".encode()
        self.lat = array("q")
        self.received = 0
        self.last_rx = 0
        self.sample = b""
        self.errors: Counter[str] = Counter()
        self.finishing = False
        self.open_count = 0
        self.all_closed: asyncio.Future[None] | None = None

    async def run(self) -> None:
        cfg = self.cfg
        self.loop = loop = asyncio.get_running_loop()
        loop.call_later(cfg["deadline"], os._exit, 3)  # a hard stop, whatever happens
        rooms = cfg["rooms"]
        clients = [Client(self, room_name(i % rooms)) for i in self.indices]
        gate = asyncio.Semaphore(cfg["concurrency"])

        async def open_one(client: Client) -> None:
            async with gate:
                try:
                    async with asyncio.timeout(cfg["conn_timeout"]):
                        await loop.create_connection(lambda: client, "127.0.0.1", cfg["port"])
                        self.open_count += 1
                        await client.subscribe
                except TimeoutError:
                    self.errors["connect + subscribe timed out"] += 1
                    if client.transport is not None:
                        client.transport.abort()
                except BenchError:
                    pass  # counted where it happened
                except OSError as exc:
                    self.errors[f"connect: {exc.strerror or exc}"] += 1

        t0 = time.monotonic()
        await asyncio.gather(*(open_one(c) for c in clients))
        ok = [c for c in clients if c.ready and not c.lost]
        self.pipe.send(("ready", dict(Counter(c.room for c in ok)), time.monotonic() - t0, dict(self.errors)))

        finish: asyncio.Future[None] = loop.create_future()
        fd = self.pipe.fileno()

        def on_pipe() -> None:
            try:
                msg = self.pipe.recv()
            except EOFError:  # the parent is gone
                os._exit(4)
            if msg == "poll":
                self.pipe.send(("count", self.received, self.last_rx))
            elif msg == "finish" and not finish.done():
                finish.set_result(None)

        loop.add_reader(fd, on_pipe)
        os.set_blocking(fd, True)  # Connection.recv/send expect a blocking descriptor
        await finish
        loop.remove_reader(fd)
        os.set_blocking(fd, True)
        self.finishing = True
        stats = {
            "received": self.received, "last_rx": self.last_rx,
            "gaps": sum(c.gaps for c in clients), "dups": sum(c.dups for c in clients),
            "wrong_room": sum(c.wrong_room for c in clients),
            "per_conn": [(c.room, c.count) for c in ok],
            "errors": dict(self.errors), "lat": self.lat.tobytes(), "sample": self.sample,
        }
        # close politely (the server then closes TCP, so TIME_WAIT lands on its side), then abort the rest
        self.all_closed = loop.create_future()
        if self.open_count > 0:
            for c in clients:
                c.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3):
                    await self.all_closed
        for c in clients:
            if c.transport is not None and not c.lost:
                c.transport.abort()
        self.pipe.send(("result", stats))


def loadgen_main(cfg: dict[str, Any], indices: list[int], pipe: multiprocessing.connection.Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    gc.freeze()
    try:
        import uvloop
    except ImportError:
        asyncio.run(LoadGen(cfg, indices, pipe).run())
    else:
        uvloop.run(LoadGen(cfg, indices, pipe).run())


# -- the publisher (a forked process) -------------------------------------------------------------------------

def on_schedule(rate: float, total: int) -> Iterator[tuple[int, float]]:
    """0 to total - 1, each at its time on an absolute schedule of ``rate`` a second, with how late it is (a late
    one is not dropped: the next ones follow at once until the schedule is met)."""
    t0 = time.monotonic()
    for i in range(total):
        due = t0 + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
            now = time.monotonic()
        yield i, now - due


def publisher_main(cfg: dict[str, Any], pipe: multiprocessing.connection.Connection) -> None:
    """XADD rate events/s for duration s, round robin over the rooms, on an absolute schedule (a late event
    is not dropped: the next ones go at once until the schedule is met; the lateness is reported)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    import redis

    client = redis.Redis.from_url(cfg["redis_url"])
    client.ping()
    xadd: Callable[..., Any] = client.execute_command
    pipe.send("ready")
    if not pipe.poll(60) or pipe.recv() != "go":
        return
    rate, rooms, size = cfg["rate"], cfg["rooms"], cfg["size"]
    total = round(rate * cfg["duration"])
    names = [room_name(r) for r in range(rooms)]
    per_room = [0] * rooms
    cpu0 = time.process_time()
    first_ns = last_ns = 0
    last_hi = 0
    max_lag = 0.0
    for i, lag in on_schedule(rate, total):
        max_lag = max(max_lag, lag)
        r = i % rooms
        seq = per_room[r]
        t = time.time_ns()
        data: dict[str, Any] = {"t": t, "seq": seq, "pad": ""}
        data["pad"] = "x" * max(0, size - len(orjson.dumps(data)))
        # an id like the watcher's: seconds << 32 | a counter, then 0; strictly increasing
        last_hi = max(((t // 1_000_000_000) << 32) | (i + 1), last_hi + 1)
        entry_id = f"{last_hi}-0"
        body = orjson.dumps({"id": entry_id, "type": EVENT_TYPE, "rooms": [names[r]], "data": data,
                             "ts": t // 1_000_000})
        # the fields of the watcher's entries: the envelope, a token, the append time (µs; this clock for Redis's)
        xadd("XADD", EVENTS_KEY, "MAXLEN", "~", 100_000, entry_id, "e", body, "t", "bench", "w", t // 1000)
        per_room[r] = seq + 1
        if not first_ns:
            first_ns = t
        last_ns = t
    pipe.send(("done", {"published": total, "per_room": per_room, "first_ns": first_ns, "last_ns": last_ns,
                        "max_lag_ms": max_lag * 1e3, "cpu_s": time.process_time() - cpu0}))
    client.close()


# -- the floor: the kernel's send path alone (forked processes) ----------------------------------------------

class Sink(asyncio.Protocol):
    """The client end of a floor connection: counts what arrives, parses nothing."""

    def __init__(self, got: list[int]) -> None:
        self.got = got

    def data_received(self, data: bytes) -> None:
        self.got[0] += len(data)


def floor_reader_main(cfg: dict[str, Any], pipe: multiprocessing.connection.Connection) -> None:
    """Opens the floor's connections and reads them. Pipe: "ready" once connected; "poll" -> bytes received;
    "finish" -> exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    gc.freeze()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(cfg["deadline"], os._exit, 3)
        got = [0]
        gate = asyncio.Semaphore(cfg["concurrency"])

        async def one() -> None:
            async with gate:
                await loop.create_connection(lambda: Sink(got), "127.0.0.1", cfg["port"])

        await asyncio.gather(*(one() for _ in range(cfg["connections"])))
        pipe.send("ready")
        done: asyncio.Future[None] = loop.create_future()

        def on_pipe() -> None:
            try:
                msg = pipe.recv()
            except EOFError:
                os._exit(4)
            if msg == "poll":
                pipe.send(got[0])
            elif not done.done():
                done.set_result(None)

        fd = pipe.fileno()
        loop.add_reader(fd, on_pipe)
        os.set_blocking(fd, True)
        await done

    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


def floor_writer_main(cfg: dict[str, Any], listener: socket.socket,
                      pipe: multiprocessing.connection.Connection) -> None:
    """Accepts the floor's connections, then writes the same frame to every connection of a room, room after
    room on the publisher's schedule, with a bare loop of os.write(): the least a server can spend per
    delivery here. Pipe: "ready", then "go" -> ("done", stats)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    connections, rooms, rate = cfg["connections"], cfg["rooms"], cfg["rate"]
    socks = []
    for _ in range(connections):
        sock, _addr = listener.accept()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvloop's transports do
        socks.append(sock)
    listener.close()
    groups = [tuple(s.fileno() for s in socks[r::rooms]) for r in range(rooms)]
    data = cfg["frame"]
    n = len(data)
    pipe.send("ready")
    if not pipe.poll(60) or pipe.recv() != "go":
        return
    gc.disable()
    total = round(rate * cfg["duration"])
    oswrite = os.write
    writes = short = 0
    pending: list[tuple[int, bytes]] = []
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for i, _lag in on_schedule(rate, total):
        if pending:  # the rest of earlier short writes first, in order
            pending = flush(pending)
        fds = groups[i % rooms]
        for fd in fds:
            try:
                k = oswrite(fd, data)
            except BlockingIOError:
                k = 0
            if k != n:
                short += 1
                pending.append((fd, data[k:]))
        writes += len(fds)
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        time.sleep(0.001)
        pending = flush(pending)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    pipe.send(("done", {"writes": writes, "short": short, "unsent": len(pending),
                        "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime}))
    pipe.poll(60)  # keep the sockets open until the reader has everything


def flush(pending: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Retry the rest of short floor writes; what still does not fit stays (per descriptor, in order)."""
    left: list[tuple[int, bytes]] = []
    blocked: set[int] = set()
    for fd, rest in pending:
        if fd not in blocked:
            try:
                k = os.write(fd, rest)
            except BlockingIOError:
                k = 0
            rest = rest[k:]
        if rest:
            blocked.add(fd)
            left.append((fd, rest))
    return left


def measure_floor(args: argparse.Namespace, name: str, connections: int, rooms: int, rate: float, frame: bytes,
                  workdir: Path) -> dict[str, Any]:
    """The floor of one workload: a bare os.write() loop (floor_writer_main) sending a frame of the size the
    server sent to as many loopback connections, on the same schedule, read by a process of its own."""
    stack = Stack(workdir)
    cfg = {"connections": connections, "rooms": rooms, "rate": rate, "duration": args.floor_seconds,
           "frame": frame, "concurrency": args.concurrency, "deadline": args.seconds_max}
    try:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(min(connections, 4096))
            cfg["port"] = listener.getsockname()[1]
            w_end, w_child = multiprocessing.Pipe()
            stack.fork(floor_writer_main, cfg, listener, w_child)
            w_child.close()
            r_end, r_child = multiprocessing.Pipe()
            stack.fork(floor_reader_main, cfg, r_child)
            r_child.close()
        recv(r_end, 60 + connections / 20, "floor reader (connecting)")
        recv(w_end, 30, "floor writer (accepting)")
        time.sleep(SETTLE_S)
        w_end.send("go")
        _, stats = recv(w_end, args.floor_seconds * 3 + 60, "floor writer")
        expected = (stats["writes"] - stats["unsent"]) * len(frame)
        deadline = time.monotonic() + 30
        got = 0
        while time.monotonic() < deadline:
            r_end.send("poll")
            got = recv(r_end, 10, "floor reader")
            if got >= expected:
                break
            time.sleep(0.05)
        r_end.send("finish")
        w_end.send("finish")
    finally:
        stack.close()
    cpu = stats["user_s"] + stats["sys_s"]
    us = cpu / max(stats["writes"], 1) * 1e6
    log(f"{name}: floor {us:.2f} {US}/write ({stats['writes']} writes of {len(frame)} bytes, "
        f"{stats['short']} short, {got}/{expected} bytes read)")
    return {"floor_us_per_write": round(us, 3), "floor_user_s": round(stats["user_s"], 3),
            "floor_sys_s": round(stats["sys_s"], 3), "floor_writes": stats["writes"],
            "floor_short_writes": stats["short"], "floor_seconds": args.floor_seconds,
            "floor_complete": got >= expected and not stats["unsent"]}


# -- one run -------------------------------------------------------------------------------------------------

def recv(pipe: multiprocessing.connection.Connection, timeout: float, what: str) -> Any:
    if not pipe.poll(timeout):
        raise BenchTimeout(f"no answer from the {what} within {timeout:.0f}s")
    try:
        return pipe.recv()
    except EOFError:
        raise BenchError(f"the {what} died") from None


def start_loadgens(stack: Stack, cfg: dict[str, Any], connections: int, procs: int,
                   offset: int = 0) -> list[multiprocessing.connection.Connection]:
    pipes = []
    for k in range(procs):
        parent_end, child_end = multiprocessing.Pipe()
        stack.fork(loadgen_main, cfg, list(range(offset + k, offset + connections, procs)), child_end)
        child_end.close()
        pipes.append(parent_end)
    return pipes


def wait_ready(pipes: list[multiprocessing.connection.Connection], timeout: float
               ) -> tuple[Counter[str], float, Counter[str]]:
    rooms: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    seconds = 0.0
    deadline = time.monotonic() + timeout
    for pipe in pipes:
        _, got, secs, errs = recv(pipe, max(deadline - time.monotonic(), 0.1), "load generator (connecting)")
        rooms.update(got)
        errors.update(errs)
        seconds = max(seconds, secs)
    return rooms, seconds, errors


def finish_loadgens(pipes: list[multiprocessing.connection.Connection]) -> list[dict[str, Any]]:
    for pipe in pipes:
        pipe.send("finish")
    return [recv(pipe, 30, "load generator (finishing)")[1] for pipe in pipes]


def percentile(ordered: list[int], p: float) -> float | None:
    """Nearest rank, in ms."""
    if not ordered:
        return None
    k = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k] / 1e6


def run_workload(args: argparse.Namespace, name: str, connections: int, rooms: int, rate: float,
                 workdir: Path) -> dict[str, Any]:
    stack = Stack(workdir)
    profiler: Proc | None = None
    try:
        redis_proc, redis_url = start_redis(stack)
        server, port = start_server(stack, redis_url, connections, args.workers)
        log(f"{name}: server pid {server.pid} on port {port}, redis {redis_url}")
        cfg = {"port": port, "rooms": rooms, "concurrency": args.concurrency, "conn_timeout": 30.0,
               "deadline": args.seconds_max}
        time.sleep(SETTLE_S)
        rss_cold = rss_bytes(proc_tree(server.pid))

        # warm-up: lazy imports and first-use caches are not per-connection memory
        pipes = start_loadgens(stack, cfg, WARMUP_CONNECTIONS, 1, offset=connections)
        wait_ready(pipes, 60)
        finish_loadgens(pipes)
        time.sleep(SETTLE_S)
        rss_base = rss_bytes(proc_tree(server.pid))

        # connect and subscribe
        pipes = start_loadgens(stack, cfg, connections, args.procs)
        sub_rooms, connect_s, errors = wait_ready(pipes, 60 + connections / 20)
        subscribed = sum(sub_rooms.values())
        log(f"{name}: {subscribed}/{connections} connections subscribed in {connect_s:.1f}s"
            + (f"; errors {dict(errors)}" if errors else ""))
        if not subscribed:
            raise BenchError(f"no connection subscribed: {dict(errors)}\n{server.tail()}")
        time.sleep(SETTLE_S)
        server_pids = proc_tree(server.pid)
        rss_conn = rss_bytes(server_pids)

        # publish
        pub_end, pub_child = multiprocessing.Pipe()
        stack.fork(publisher_main, {"redis_url": redis_url, "rate": rate, "rooms": rooms, "duration": args.seconds,
                                    "size": args.size}, pub_child)
        pub_child.close()
        recv(pub_end, 20, "publisher (starting)")
        if args.profile is not None:
            profiler = start_profiler(stack, args, name, server.pid)
        load_pids = [c.pid for c in stack.children[-len(pipes) - 1:-1] if c.pid is not None]
        pub_pid = stack.children[-1].pid or 0
        server_pids = proc_tree(server.pid)
        srv0, red0, load0 = cpu_times(server_pids), cpu_times([redis_proc.pid]), cpu_times(load_pids)
        pubc0 = cpu_times([pub_pid])
        box0 = machine_times()
        everyone0 = all_cpu()
        w0 = time.monotonic()
        pub_end.send("go")
        _, pub = recv(pub_end, args.seconds * 3 + 30, "publisher")
        pub_done = time.monotonic()
        expected = sum(pub["per_room"][r] * sub_rooms.get(room_name(r), 0) for r in range(rooms))
        log(f"{name}: published {pub['published']} events (max lag {pub['max_lag_ms']:.1f} ms); draining")

        # drain
        last_total, last_change = -1, time.monotonic()
        while True:
            total = 0
            for pipe in pipes:
                pipe.send("poll")
                total += recv(pipe, 10, "load generator (poll)")[1]
            now = time.monotonic()
            if total >= expected:
                break
            if total != last_total:
                last_total, last_change = total, now
            elif now - last_change > args.drain_idle:
                break
            if now - pub_done > args.drain_max:
                break
            time.sleep(0.1)
        w1 = time.monotonic()
        server_pids = proc_tree(server.pid)
        srv1, red1, load1 = cpu_times(server_pids), cpu_times([redis_proc.pid]), cpu_times(load_pids)
        pubc1 = cpu_times([pub_pid])
        box1 = machine_times()
        everyone1 = all_cpu()
        ours = {os.getpid(), redis_proc.pid, pub_pid, *load_pids, *server_pids}
        rss_end, hwm = rss_bytes(server_pids), rss_bytes(server_pids, b"VmHWM:")
        if profiler is not None:
            profiler.stop(signal.SIGINT, timeout=60)
            profiler = None

        results = finish_loadgens(pipes)
    finally:
        if profiler is not None:
            profiler.stop(signal.SIGINT, timeout=30)
        stack.close()

    received = sum(r["received"] for r in results)
    for r in results:
        errors.update(r["errors"])
    sample = next((r["sample"] for r in results if r["sample"]), b"")
    floor: dict[str, Any] = {}
    if args.floor_seconds > 0 and sample:
        (workdir / "floor").mkdir()
        floor = measure_floor(args, name, subscribed, rooms, rate, sample, workdir / "floor")
    lat = array("q")
    for r in results:
        lat.frombytes(r["lat"])
    ordered = sorted(lat)
    last_rx = max(r["last_rx"] for r in results)
    span = (last_rx - pub["first_ns"]) / 1e9 if last_rx else 0.0
    window = w1 - w0
    srv_user, srv_sys = srv1[0] - srv0[0], srv1[1] - srv0[1]
    srv_cpu = srv_user + srv_sys
    box = {k: round(box1[k] - box0[k], 2) for k in MACHINE_FIELDS}
    total_cpu = sum(box.values())
    busy = total_cpu - box["idle"] - box["iowait"]
    per_room = pub["per_room"]
    complete = sum(1 for r in results for room, count in r["per_conn"]
                   if count >= per_room[int(room.rsplit("r", 1)[1])])
    for key, label in (("dups", "duplicate deliveries"), ("wrong_room", "deliveries of another room")):
        n = sum(r[key] for r in results)
        if n:
            errors[label] = n
    result: dict[str, Any] = {
        "workload": name,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "params": {"C": connections, "R": rooms, "E": rate, "T": args.seconds, "size": args.size,
                   "procs": args.procs, "workers": args.workers},
        "connections": subscribed, "connect_s": round(connect_s, 2),
        "published": pub["published"], "publisher_max_lag_ms": round(pub["max_lag_ms"], 2),
        "expected": expected, "received": received,
        "received_pct": round(100 * received / expected, 3) if expected else 0.0,
        "missing": max(expected - received, 0),
        "gaps": sum(r["gaps"] for r in results), "conns_complete": complete,
        "offered_per_s": round(expected / args.seconds, 1),
        "deliveries_per_s": round(received / span, 1) if span > 0 else 0.0,
        "latency_ms": {k: percentile(ordered, q) for k, q in
                       (("p50", 50), ("p95", 95), ("p99", 99), ("p99.9", 99.9), ("max", 100))},
        "window_s": round(window, 2),
        "server_cpu_s": round(srv_cpu, 3), "server_user_s": round(srv_user, 3), "server_sys_s": round(srv_sys, 3),
        "server_cpu_pct": round(100 * srv_cpu / window, 1),
        "server_cpu_us_per_delivery": round(srv_cpu / max(received, 1) * 1e6, 3),
        "redis_cpu_s": round(sum(red1) - sum(red0), 3),
        "publisher_cpu_s": round(sum(pubc1) - sum(pubc0), 3),
        "loadgen_cpu_s": round(sum(load1) - sum(load0), 3),
        "loadgen_cpu_pct_per_proc": round(100 * (sum(load1) - sum(load0)) / window / args.procs, 1),
        "loadgen_us_per_delivery": round((sum(load1) - sum(load0)) / max(received, 1) * 1e6, 3),
        "box_busy_pct": round(100 * busy / total_cpu, 1) if total_cpu else None,
        "machine_cpu_s": box,
        "other_top": other_consumers(everyone0, everyone1, ours),
        # CPU of everything else on the machine: other programs, kernel threads, and interrupt time (with
        # IRQ time accounting, softirq work such as loopback TCP receive is charged to no process)
        "other_cpu_s": round(busy - srv_cpu - (sum(red1) - sum(red0)) - (sum(pubc1) - sum(pubc0))
                             - (sum(load1) - sum(load0)), 2),
        "server_rss_mib": {"cold": round(rss_cold / 2**20, 2), "base": round(rss_base / 2**20, 2),
                           "connected": round(rss_conn / 2**20, 2), "end": round(rss_end / 2**20, 2),
                           "peak": round(hwm / 2**20, 2)},
        "rss_per_conn_kib": round((rss_conn - rss_base) / subscribed / 1024, 2),
        "rss_per_conn_kib_from_cold": round((rss_conn - rss_cold) / subscribed / 1024, 2),
        "frame_bytes": len(sample),
        **floor,
        "errors": dict(errors),
    }
    if floor:
        result["server_floor_ratio"] = round(result["server_cpu_us_per_delivery"] / floor["floor_us_per_write"], 3)
    targets = TARGETS.get(name)
    if targets is not None and (connections, rooms, rate) == WORKLOADS[name]:
        result["targets"] = {
            "cpu_us": targets["cpu_us"], "p99_ms": targets["p99_ms"], "rss_kib": RSS_TARGET_KIB,
            "cpu_ok": result["server_cpu_us_per_delivery"] <= targets["cpu_us"] and result["missing"] == 0,
            "p99_ok": (result["latency_ms"]["p99"] or math.inf) <= targets["p99_ms"],
            "rss_ok": result["rss_per_conn_kib"] <= RSS_TARGET_KIB,
        }
        if floor:  # the same ratio to this machine's floor as the target had to the issue's
            allowed = round(targets["cpu_us"] / targets["floor_us"], 3)
            result["targets"].update({"floor_us": targets["floor_us"], "floor_ratio": allowed,
                                      "floor_ratio_ok": result["server_floor_ratio"] <= allowed
                                      and result["missing"] == 0})
    return result


# -- profiling -----------------------------------------------------------------------------------------------

def start_profiler(stack: Stack, args: argparse.Namespace, name: str, pid: int) -> Proc:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.profile.mkdir(parents=True, exist_ok=True)
    suffix = "-native" if args.native else ""
    out = args.profile / f"server-{name}{suffix}.txt"
    argv = [spy, "record", "--pid", str(pid), "--rate", str(args.profile_rate), "--format", "raw",
            "--output", str(out), "--subprocesses"]
    argv += ["--native"] if args.native else ["--nonblocking"]
    proc = stack.spawn(f"py-spy-{name}", argv)
    time.sleep(1.0)  # attached
    if proc.popen.poll() is not None:
        raise BenchError(f"py-spy exited at once:\n{proc.tail()}")
    log(f"{name}: py-spy recording the server into {out}")
    return proc


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short_file(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def profile_summary(path: Path, top: int = 25) -> dict[str, list[tuple[str, float]]]:
    """From a py-spy raw (collapsed) profile: self time by function and by file, inclusive time by function."""
    own: Counter[str] = Counter()
    own_file: Counter[str] = Counter()
    own_line: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        names = []
        lines = []
        for raw in stack.split(";"):
            m = _FRAME.match(raw)
            if m is None:
                names.append((raw, raw))
                lines.append(raw)
                continue
            short = _short_file(m["file"])
            names.append((f"{m['func']} ({short})", short))
            lines.append(f"{m['func']} ({short}:{m['line']})")
        if names and names[0][0].startswith("process "):
            names, lines = names[1:], lines[1:]  # --subprocesses puts the process first
        if not names:
            continue
        own[names[-1][0]] += n
        own_file[names[-1][1]] += n
        own_line[lines[-1]] += n
        for fn in {fn for fn, _ in names}:
            inclusive[fn] += n
    if not total:
        return {}

    def shares(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in c.most_common(top)]

    return {"self": shares(own), "self_by_line": shares(own_line), "self_by_file": shares(own_file),
            "inclusive": shares(inclusive),
            "samples": [("samples", float(total))]}


def print_profile(path: Path) -> None:
    summary = profile_summary(path)
    if not summary:
        print(f"\n{path}: no samples")
        return
    print(f"\n{path}: {summary['samples'][0][1]:.0f} samples of the server while busy")
    for key, title in (("self", "self time by function"), ("self_by_line", "self time by line"),
                       ("self_by_file", "self time by file"),
                       ("inclusive", "inclusive time by function")):
        print(f"  {title}:")
        for name, share in summary[key]:
            print(f"    {share:6.1%}  {name}")


# -- per-connection memory (tracemalloc) ----------------------------------------------------------------------

def memory_breakdown(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Snapshots of the server's Python allocations (tracemalloc) before and after N subscribed connections."""
    n = args.tracemalloc
    stack = Stack(workdir)
    try:
        _, redis_url = start_redis(stack)
        server, port = start_server(stack, redis_url, n, 1, tracemalloc_frames=args.tracemalloc_frames)
        cfg = {"port": port, "rooms": 20, "concurrency": args.concurrency, "conn_timeout": 30.0,
               "deadline": args.seconds_max}

        def snapshot(k: int) -> tracemalloc.Snapshot:
            time.sleep(SETTLE_S)
            os.kill(server.pid, signal.SIGUSR1)
            path = workdir / f"snap{k}.pickle"
            deadline = time.monotonic() + 60
            while not path.exists():
                if time.monotonic() > deadline:
                    raise BenchTimeout("the server wrote no tracemalloc snapshot")
                time.sleep(0.1)
            return tracemalloc.Snapshot.load(str(path))

        pipes = start_loadgens(stack, cfg, WARMUP_CONNECTIONS, 1, offset=n)
        wait_ready(pipes, 60)
        finish_loadgens(pipes)
        before = snapshot(1)
        rss0 = rss_bytes([server.pid])
        pipes = start_loadgens(stack, cfg, n, 1)
        sub_rooms, _, errors = wait_ready(pipes, 120)
        subscribed = sum(sub_rooms.values())
        after = snapshot(2)
        rss1 = rss_bytes([server.pid])
        finish_loadgens(pipes)
    finally:
        stack.close()
    by_line = after.compare_to(before, "lineno")
    by_file = after.compare_to(before, "filename")
    by_trace = after.compare_to(before, "traceback")
    total = sum(s.size_diff for s in by_line)

    def where(frames: Any) -> str:
        return f"{_short_file(frames[-1].filename)}:{frames[-1].lineno}"

    def caller(trace: tracemalloc.Traceback) -> str:
        """The innermost frame in realtime/ or sanic/ or websockets/ (who asked for the memory)."""
        for frame in reversed(trace):  # tracemalloc: oldest frame first when most_recent_first is false
            short = _short_file(frame.filename)
            if short.startswith(("realtime/", "sanic/", "websockets/")):
                return f"{short}:{frame.lineno}"
        return where(trace)

    by_caller: Counter[str] = Counter()
    count_caller: Counter[str] = Counter()
    for s in by_trace:
        key = caller(s.traceback)
        by_caller[key] += s.size_diff
        count_caller[key] += s.count_diff
    return {
        "connections": subscribed, "errors": dict(errors),
        "python_bytes_per_conn": round(total / max(subscribed, 1), 1),
        "rss_per_conn_kib_with_tracemalloc": round((rss1 - rss0) / max(subscribed, 1) / 1024, 2),
        "by_line": [(where(s.traceback), round(s.size_diff / subscribed, 1), round(s.count_diff / subscribed, 2))
                    for s in by_line[: args.top]],
        "by_file": [(_short_file(s.traceback[0].filename), round(s.size_diff / subscribed, 1),
                     round(s.count_diff / subscribed, 2)) for s in by_file[: args.top]],
        "by_caller": [(k, round(v / subscribed, 1), round(count_caller[k] / subscribed, 2))
                      for k, v in by_caller.most_common(args.top)],
    }


def print_memory(mem: dict[str, Any]) -> None:
    print(f"\nper-connection Python memory (tracemalloc, {mem['connections']} connections): "
          f"{mem['python_bytes_per_conn'] / 1024:.2f} KiB; errors {mem['errors'] or 'none'}")
    for key, title in (("by_file", "by file"), ("by_line", "by allocation site"),
                       ("by_caller", "by the innermost realtime/sanic/websockets frame")):
        print(f"  {title} (bytes per connection, blocks per connection):")
        for name, size, count in mem[key]:
            print(f"    {size:8.1f} B  {count:6.2f}  {name}")


# -- output --------------------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str] = {}
    for package in ("sanic", "websockets", "uvloop", "orjson", "hiredis"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return {**benchkit.machine(), **versions}


def source_state() -> dict[str, Any]:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "realtime").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_changes": git("status", "--porcelain", "--", "realtime").splitlines(),
            "realtime_sha256": digest.hexdigest()[:16]}  # the code measured, committed or not


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(results: list[dict[str, Any]]) -> None:
    head = ["workload", "C", "R", "E/s", "received", "deliv/s", "p50 ms", "p95 ms", "p99 ms", "max ms",
            "srv CPU s (usr+sys)", f"srv {US}/deliv", f"floor {US}/write", "x floor",
            "RSS/conn KiB", f"load {US}/deliv", "box busy %",
            "other CPU s", "errors"]
    rows = []
    for r in results:
        p, lat = r["params"], r["latency_ms"]
        rows.append([r["workload"], str(r["connections"]), str(p["R"]), f"{p['E']:g}",
                     f"{r['received']}/{r['expected']} ({r['received_pct']:.2f}%)", f"{r['deliveries_per_s']:.0f}",
                     fmt(lat["p50"]), fmt(lat["p95"]), fmt(lat["p99"]), fmt(lat["max"], 1),
                     f"{r['server_cpu_s']:.2f} ({r['server_user_s']:.2f}+{r['server_sys_s']:.2f})",
                     fmt(r["server_cpu_us_per_delivery"]), fmt(r.get("floor_us_per_write")),
                     fmt(r.get("server_floor_ratio")), fmt(r["rss_per_conn_kib"], 1),
                     fmt(r["loadgen_us_per_delivery"]), fmt(r["box_busy_pct"], 0), fmt(r["other_cpu_s"]),
                     str(sum(r["errors"].values()))])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    for r in results:
        if r["errors"]:
            print(f"errors ({r['workload']}): {r['errors']}")
        t = r.get("targets")
        if t:
            print(f"targets ({r['workload']}): server CPU {r['server_cpu_us_per_delivery']:.2f} {US}/delivery "
                  f"(<= {t['cpu_us']:g}, every delivery: {r['missing'] == 0}) {'OK' if t['cpu_ok'] else 'MISSED'}; "
                  f"p99 {fmt(r['latency_ms']['p99'])} ms (<= {t['p99_ms']:g}) {'OK' if t['p99_ok'] else 'MISSED'}; "
                  f"RSS {r['rss_per_conn_kib']:.1f} KiB/connection (<= {t['rss_kib']:g}) "
                  f"{'OK' if t['rss_ok'] else 'MISSED'}")
            if "floor_ratio_ok" in t:
                print(f"  against the floor ({r['workload']}): {r['server_floor_ratio']:.2f} x a bare os.write loop's "
                      f"{r['floor_us_per_write']:.2f} {US}/write (<= {t['floor_ratio']:g}, the target's ratio to the "
                      f"issue machine's {t['floor_us']:g}) {'OK' if t['floor_ratio_ok'] else 'MISSED'}")


def markdown(doc: dict[str, Any]) -> str:
    runs = list(doc["runs"].values())
    lines = [
        "## Fan-out",
        "",
        "`python bench/fanout_bench.py --workload both` (`bench/fanout_bench.py`; raw results in "
        "`bench/results/fanout.json`).",
        "redis-server, the server (`python -m realtime serve`, anonymous, one worker), the load generator and the",
        "publisher each run in a process of their own. The load generator (a minimal asyncio WebSocket client",
        "written for the benchmark) opens C connections, spread evenly over R rooms `hashtag:r<i>`, and waits",
        "until every subscription is confirmed; the publisher then XADDs E events/s to `{rt}:events` for T",
        "seconds, round robin over the rooms (each event goes to C/R clients), each event's `data` padded to",
        "300 bytes of JSON and stamped with `time.time_ns()` just before its XADD. Latency is the client's",
        "receipt time minus that stamp (same clock). Server CPU is user + system time of the server process,",
        "from the first XADD to the last delivery (plus the drain check), divided by the deliveries; on loopback",
        "the kernel's TCP work for both ends is mostly charged to the sender, i.e. to the server's system time.",
        "RSS per connection: (server RSS with the C connections subscribed and idle - RSS before they",
        "connected, after a warm-up of 16 connections) / C. The machine is shared: each run waits until it is",
        "idle, and a run during which other programs used more than `--max-other-cpu` (1) CPU second is run",
        "again (`--attempts`); the least disturbed is shown, `other CPU s` being what the rest of the machine",
        "used during it.",
        "",
        "The floor: after each run, a bare loop of `os.write()` in a process of its own sends an event frame",
        "as the server sent it (the load generator keeps one) to as many loopback connections, C/R per event, on the",
        "same schedule, read by another process (`--floor-seconds`, 10). Its CPU per write is the least any",
        "server can spend per delivery on this machine at that moment; `ratio to floor` is the server's CPU per",
        "delivery divided by it. The floor moves with the machine (the host under this VM): the issue's targets",
        "were set where it was about 2.5 µs (fan-out) and 5 µs (rooms), so the check against the floor allows",
        "the same ratio, 1.4, where the absolute targets cannot tell the server from the machine. (On an Intel",
        "Xeon host, before the floor was measured, this benchmark gave 3.6-4.0 µs in fan-out and 5.7-6.8 µs in",
        "rooms, commit 2641747; the same code on the AMD EPYC host of the runs below gave 8.1 and 10.0.)",
        "",
    ]
    m = runs[0]["machine"]
    lines += [f"Machine: {m['cpus']} CPUs ({m['cpu'] or 'unknown CPU'}), Python {m['python']}, Sanic "
              f"{m.get('sanic', '?')}, websockets {m.get('websockets', '?')}, uvloop {m.get('uvloop', '?')}, "
              f"redis-server {m.get('redis_server', '?')}.", ""]
    for r in runs:
        src, p = r["source"], r["params"]
        source = f"commit {src.get('commit') or '?'}" + (
            f" with uncommitted changes to `realtime/` (sha256 of its files {src.get('realtime_sha256', '?')})"
            if src.get("uncommitted_changes") else "")
        tries = len(r.get("attempts", [])) or 1
        lines += [f"- `{r['workload']}`: {r['date']}, {source}; T={p['T']:g} s, {p['size']}-byte events, "
                  f"{p['procs']} load-generator process(es), {p['workers']} server worker(s); "
                  f"the least disturbed of {tries} run(s)."]
    lines.append("")
    lines += [
        "| workload | C | R | events/s | deliveries received | deliveries/s | latency p50 / p95 / p99 / max (ms) "
        "| server CPU s (user+sys) | server µs/delivery | floor µs/write | ratio to floor "
        "| server RSS/connection (KiB) | load gen µs/delivery | box busy % | other CPU s |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        p, lat = r["params"], r["latency_ms"]
        lines.append(
            f"| {r['workload']} | {r['connections']} | {p['R']} | {p['E']:g} | {r['received']} / {r['expected']} "
            f"({r['received_pct']:.2f}%) | {r['deliveries_per_s']:.0f} | {fmt(lat['p50'])} / {fmt(lat['p95'])} / "
            f"{fmt(lat['p99'])} / {fmt(lat['max'], 1)} | {r['server_cpu_s']:.2f} ({r['server_user_s']:.2f}+"
            f"{r['server_sys_s']:.2f}) | {r['server_cpu_us_per_delivery']:.2f} | {fmt(r.get('floor_us_per_write'))} "
            f"| {fmt(r.get('server_floor_ratio'))} | {r['rss_per_conn_kib']:.1f} | "
            f"{fmt(r['loadgen_us_per_delivery'])} | {fmt(r['box_busy_pct'], 0)} | {fmt(r['other_cpu_s'], 1)} |")
    lines.append("")
    targeted = [r for r in runs if r.get("targets")]
    if targeted:
        lines += ["Targets (2 cores, load generator included, C=2000, 300-byte events):", "",
                  "| workload | server µs/delivery, every delivery arriving | against the floor "
                  "| p99 latency (ms) | RSS/connection (KiB) |",
                  "|---|---|---|---|---|"]
        for r in targeted:
            t = r["targets"]

            def mark(ok: bool) -> str:
                return "met" if ok else "**missed**"

            lines.append(
                f"| {r['workload']} | {r['server_cpu_us_per_delivery']:.2f} (≤ {t['cpu_us']:g}; "
                f"{r['received_pct']:.2f}% received): {mark(t['cpu_ok'])} | "
                + (f"{r['server_floor_ratio']:.2f} of {r['floor_us_per_write']:.2f} (≤ {t['floor_ratio']:g}): "
                   f"{mark(t['floor_ratio_ok'])}" if "floor_ratio_ok" in t else "-")
                + f" | {fmt(r['latency_ms']['p99'])} "
                f"(≤ {t['p99_ms']:g}): {mark(t['p99_ok'])} | {r['rss_per_conn_kib']:.1f} (≤ {t['rss_kib']:g}): "
                f"{mark(t['rss_ok'])} |")
        lines.append("")
    errs = [f"{r['workload']}: {r['errors']}" for r in runs if r["errors"]]
    lines.append("Errors: " + ("; ".join(errs) if errs else "none") + ".")
    return "\n".join(lines) + "\n"


def write_results(results: list[dict[str, Any]]) -> None:
    doc: dict[str, Any] = {"runs": {}}
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(RESULTS.read_text())
    doc.setdefault("runs", {})
    for r in results:
        doc["runs"][r["workload"]] = {k: v for k, v in r.items()}
    order = list(WORKLOADS)
    doc["runs"] = {k: doc["runs"][k] for k in sorted(doc["runs"], key=lambda k: (
        order.index(k.split("-")[0]) if k.split("-")[0] in order else len(order), k))}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(RESULTS)
    replace_section("## Fan-out", markdown(doc))


# -- main ----------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workload", choices=["rooms", "fanout", "both"], default=None,
                        help="rooms: C=2000 R=20 E=200; fanout: C=2000 R=1 E=50; both: one then the other "
                             "(default: rooms, or a custom run when -r/-e are given)")
    parser.add_argument("-c", "--connections", type=int, default=None, help="connections (default 2000)")
    parser.add_argument("-r", "--rooms", type=int, default=None, help="rooms (default: the workload's)")
    parser.add_argument("-e", "--rate", type=float, default=None, help="events per second, all rooms together")
    parser.add_argument("-s", "--size", type=int, default=300, help="bytes of JSON of each event's data (300)")
    parser.add_argument("-t", "--seconds", type=float, default=20.0, help="seconds of publishing (20)")
    parser.add_argument("-p", "--procs", type=int, default=1, help="load-generator processes (1)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (1)")
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight per load process (100)")
    parser.add_argument("--drain-idle", type=float, default=5.0, help="stop draining after this long idle (5 s)")
    parser.add_argument("--drain-max", type=float, default=30.0, help="drain at most this long (30 s)")
    parser.add_argument("--attempts", type=int, default=3,
                        help="runs of a workload at most, while other work on the machine disturbs it (3)")
    parser.add_argument("--max-other-cpu", type=float, default=1.0, metavar="S",
                        help="CPU seconds of other work during a run above which it is run again (1.0)")
    parser.add_argument("--quiet-max", type=float, default=120.0,
                        help="before each run, wait at most this long for the machine to be idle (120 s)")
    parser.add_argument("--seconds-max", type=float, default=0.0,
                        help="hard limit per run (default: derived from C and T)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy the server while it publishes and drains; implies --no-write")
    parser.add_argument("--native", action="store_true", help="with --profile: native frames too (blocking)")
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second (250)")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="N",
                        help="instead of a run: the server's Python memory per connection for N connections")
    parser.add_argument("--tracemalloc-frames", type=int, default=25, help="traceback depth (25)")
    parser.add_argument("--top", type=int, default=25, help="lines of each breakdown (25)")
    parser.add_argument("--floor-seconds", type=float, default=10.0, metavar="S",
                        help="after each run, measure the floor (a bare os.write loop to as many connections on "
                             "the same schedule) for S seconds; 0: skip (10)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results or docs/benchmarks.md")
    args = parser.parse_args(argv)
    for flag in ("connections", "rooms", "rate", "seconds", "procs", "workers", "concurrency", "size", "attempts"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            parser.error(f"--{flag} must be positive")
    if args.workload == "both" and (args.rooms is not None or args.rate is not None):
        parser.error("--workload both runs the two fixed workloads: -r and -e do not apply")
    if args.profile is not None:
        args.no_write = True
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, int, int, float]]:
    if args.workload is None and (args.rooms is not None or args.rate is not None):
        c, r, e = WORKLOADS["rooms"]
        return [("custom", args.connections or c, args.rooms or r, args.rate or e)]
    names = ["rooms", "fanout"] if args.workload == "both" else [args.workload or "rooms"]
    out = []
    for name in names:
        c, r, e = WORKLOADS[name]
        c, r, e = args.connections or c, args.rooms or r, args.rate or e
        custom = (c, r, e) != WORKLOADS[name]
        out.append((f"{name}-custom" if custom else name, c, r, e))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = plan(args)
    biggest = max([c for _, c, _, _ in runs] + [args.tracemalloc])
    raise_fd_limit(biggest + WARMUP_CONNECTIONS + 200)
    if not args.seconds_max:
        args.seconds_max = 240 + biggest / 20 + args.seconds * 3 + args.drain_max

    def on_signal(signum: int, _frame: Any) -> None:
        log(f"{signal.Signals(signum).name}: stopping everything")
        raise SystemExit(128 + signum)

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise BenchTimeout(f"the run took more than {args.seconds_max:.0f}s")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    info = {"machine": machine(), "source": source_state()}
    results = []
    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as tmp:
        if args.tracemalloc:
            signal.alarm(int(args.seconds_max))
            try:
                mem = memory_breakdown(args, Path(tmp))
            finally:
                signal.alarm(0)
            print_memory(mem)
            return 0
        for name, c, r, e in runs:
            log(f"{name}: C={c} R={r} E={e:g}/s T={args.seconds:g}s size={args.size}B "
                f"procs={args.procs} workers={args.workers}")
            attempts: list[dict[str, Any]] = []
            for attempt in range(1, args.attempts + 1):
                busy = wait_quiet(args.quiet_max)
                if busy >= 10:
                    log(f"{name}: the machine is still {busy:.0f}% busy after {args.quiet_max:.0f}s; going on")
                workdir = Path(tmp) / f"{name}-{attempt}"
                workdir.mkdir()
                signal.alarm(int(args.seconds_max))
                try:
                    result = run_workload(args, name, c, r, e, workdir)
                except BenchError as exc:
                    log(f"{name}: failed: {exc}")
                    return 1
                finally:
                    signal.alarm(0)
                attempts.append(result)
                print_table([result])
                if result["other_cpu_s"] <= args.max_other_cpu:
                    break
                log(f"{name}: attempt {attempt} disturbed: {result['other_cpu_s']:.1f} CPU s of other work on the "
                    f"machine (> {args.max_other_cpu:g}; {result['other_top'] or 'short-lived processes'})"
                    + ("; again" if attempt < args.attempts else ""))
            result = min(attempts, key=lambda a: a["other_cpu_s"])  # the least disturbed attempt
            result["attempts"] = [
                {"other_cpu_s": a["other_cpu_s"], "server_cpu_us_per_delivery": a["server_cpu_us_per_delivery"],
                 "floor_us_per_write": a.get("floor_us_per_write"),
                 "other_top": a["other_top"], "latency_ms": a["latency_ms"], "received_pct": a["received_pct"],
                 "rss_per_conn_kib": a["rss_per_conn_kib"]} for a in attempts]
            result.update(info)
            results.append(result)
            if args.profile is not None:
                suffix = "-native" if args.native else ""
                print_profile(args.profile / f"server-{name}{suffix}.txt")
    if len(results) > 1:
        print_table(results)
    if not args.no_write:
        write_results(results)
        print(f"\nwrote {RESULTS.relative_to(ROOT)} and {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
