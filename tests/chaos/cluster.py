"""The system under test, as processes of its own with a fault proxy on every path between two parts.

::

    producers ─────────────────────────────▶ stand-in (a process: `realtime mongo`)
    model's tailer ────────────────────────▶    ▲         ▲
    watcher i ──[wi>mongo]─────────────────────┘         │
    watcher i ──[wi>redis]──▶ redis-server ◀──[si>redis]── server i ──[si>mongo]─┘ (replays from the oplog)
    clients ──[c>si]──▶ server i

Every box is a process the cluster starts, can signal, kill and restart (a restarted process may get a new
port: its links are moved there); every ``[link]`` is a :class:`~tests.chaos.proxy.Link`. The producers and
the model's tailer talk to the stand-in directly: they are the world outside the system, not part of it.
Everything started is stopped by :meth:`Cluster.close`, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from pymongo import MongoClient

from tests.chaos.proxy import ProxyLoop
from tests.conftest import TIMEOUT, free_port
from tests.e2e.serverkit import ServerProcess
from tests.integration.watcherkit import WatcherProcess, setup_collections, streaming
from tests.processes import ROOT

DB = "app"
PREFIX = "chaos"
COLLECTIONS = ("posts", "likes", "comments")

# Settings that make faults show within a short run: short leases, timeouts and heartbeats, and a short room
# history, so that resuming clients are served from the oplog or told to reset.
WATCHER_ENV = {
    # (tests/integration/watcherkit.py sets a lease of 1 s, checkpoints every 0.2 s, polls of 100 ms)
    "MONGODB_DB": DB, "REALTIME_REDIS_PREFIX": PREFIX, "REALTIME_FULL_DOCUMENT": "whenAvailable",
    "REALTIME_ROOM_HISTORY": "40", "REALTIME_STALL_SECONDS": "30",
}
SERVER_ENV = {
    "MONGODB_DB": DB, "REALTIME_RETRY_SECONDS": "2", "REALTIME_REDIS_TIMEOUT": "1", "REALTIME_HEARTBEAT": "2",
    "REALTIME_HEARTBEAT_TIMEOUT": "5", "REALTIME_PRESENCE_TTL": "6", "REALTIME_SHUTDOWN_GRACE": "2",
    "REALTIME_DEEP_REPLAY_SECONDS": "5", "REALTIME_MAX_CONNECTIONS_PER_USER": "100",
    "REALTIME_MAX_CONNECTIONS_PER_ADDRESS": "1000", "REALTIME_READY_MAX_LAG": "3600",
}


def rss_mib(pid: int) -> float | None:
    """A process's resident memory in MiB (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} at start")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {port} within {within:.0f}s")
        time.sleep(0.05)


class RedisProcess:
    """redis-server on a fixed loopback port, with its data on disk (AOF, fsync always) so that it can be
    killed and restarted with its data, or without it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT * 3
        while True:  # listening is not enough: it answers once it has loaded its data
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as r:
                    r.ping()
                    return
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on {self.port}: see {self.workdir / 'redis.log'}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)

    def wipe(self) -> None:
        """Its data is lost (call while it is down)."""
        for path in self.workdir.iterdir():
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class MongoProcess:
    """The stand-in as a process of its own (``realtime mongo``) on a fixed port; restarting it loses its data."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._control: MongoClient[dict[str, Any]] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet=rs0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REALTIME_", "MONGODB_"))}
        with (self.log_dir / f"mongo{self.starts}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "realtime", "mongo", "--port", str(self.port), "--noop-interval", "0.5"],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "the MongoDB stand-in", TIMEOUT * 3)

    def client(self, app: str) -> MongoClient[dict[str, Any]]:
        return MongoClient(self.uri, appname=app, serverSelectionTimeoutMS=int(TIMEOUT * 1000))

    def command(self, cmd: dict[str, Any]) -> Any:
        """An admin command on a client kept open (closing one sends endSessions, which a paused stand-in would
        keep waiting)."""
        if self._control is None:
            self._control = self.client("chaos-control")
        return self._control.admin.command(cmd)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)


@dataclass
class Member:
    """One watcher or server slot: the process now in it, and what the schedule did to it."""

    kind: str  # "watcher" or "server"
    index: int
    proc: WatcherProcess | ServerProcess | None = None
    down_by_schedule: bool = False  # killed or terminated by the schedule, not yet restarted
    stopped: bool = False  # SIGSTOPped by the schedule
    generation: int = 0
    exits: list[str] = field(default_factory=list)  # unexpected exits seen (with the log's tail)

    @property
    def name(self) -> str:
        return f"{self.kind[0]}{self.index}"

    @property
    def pid(self) -> int | None:
        p = self.proc.proc if self.proc is not None else None
        return p.pid if p is not None and p.poll() is None else None


class Cluster:
    def __init__(self, workdir: Path, seed: int, *, watchers: int = 2, servers: int = 2) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.proxies = ProxyLoop(seed)
        self.redis = RedisProcess(workdir / "redis")
        self.mongo = MongoProcess(self.logs)
        self.watchers = [Member("watcher", i) for i in range(watchers)]
        self.servers = [Member("server", i) for i in range(servers)]
        self.closed = False

    # -- start -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.redis.start()
        self.mongo.start()
        with self.mongo.client("chaos-setup") as c:
            setup_collections(c, DB)
            for name in ("likes", "comments"):
                c[DB][name].create_index("postId")
        for m in self.watchers:
            self.proxies.link(f"{m.name}>mongo", ("127.0.0.1", self.mongo.port))
            self.proxies.link(f"{m.name}>redis", ("127.0.0.1", self.redis.port))
        for m in self.servers:
            self.proxies.link(f"{m.name}>mongo", ("127.0.0.1", self.mongo.port))
            self.proxies.link(f"{m.name}>redis", ("127.0.0.1", self.redis.port))
        for m in self.servers:
            self._start_member(m)
            self.proxies.link(f"c>{m.name}", ("127.0.0.1", m.proc.port if m.proc else 0))
        for m in self.watchers:
            self._start_member(m)
        self.wait_ready(TIMEOUT * 6)

    def _mongo_uri(self, m: Member) -> str:
        # directConnection: the driver talks to the proxy only, never to the address the stand-in announces.
        return f"mongodb://127.0.0.1:{self.proxies.links[f'{m.name}>mongo'].port}/?directConnection=true"

    def _redis_url(self, m: Member) -> str:
        return f"redis://127.0.0.1:{self.proxies.links[f'{m.name}>redis'].port}/0"

    def _start_member(self, m: Member) -> None:
        m.generation += 1
        # The same name at each start: one log per slot, and a watcher keeps its name (its checkpoint's key).
        if m.kind == "watcher":
            m.proc = WatcherProcess(self._mongo_uri(m), self._redis_url(m), self.logs, f"chaos-{m.name}",
                                    **WATCHER_ENV)
        else:
            m.proc = ServerProcess(self._redis_url(m), self.logs, f"chaos-{m.name}", PREFIX,
                                   MONGODB_URI=self._mongo_uri(m), **SERVER_ENV)
        m.proc.start()
        m.down_by_schedule = m.stopped = False
        if m.kind == "server" and f"c>{m.name}" in self.proxies.links:
            self.proxies.move(f"c>{m.name}", ("127.0.0.1", m.proc.port))

    def wait_ready(self, within: float) -> list[str]:
        """Wait until every server answers /readyz and one watcher streams; what is still not ready after
        ``within`` seconds (nothing: all ready)."""
        deadline = time.monotonic() + within
        while True:
            problems = self.not_ready()
            if not problems or time.monotonic() > deadline:
                return problems
            time.sleep(0.2)

    def not_ready(self) -> list[str]:
        problems = []
        for m in self.servers:
            if m.proc is None or m.pid is None:
                problems.append(f"{m.name} is not running")
            elif m.proc.get("/readyz")[0] != 200:
                problems.append(f"{m.name} /readyz is not 200")
        if not any(m.proc is not None and m.pid is not None and streaming(m.proc) for m in self.watchers
                   if isinstance(m.proc, WatcherProcess)):
            problems.append("no watcher streams changes")
        return problems

    # -- process faults ------------------------------------------------------------------------------------
    def member(self, name: str) -> Member:
        return next(m for m in (*self.watchers, *self.servers) if m.name == name)

    def signal(self, name: str, sig: int) -> None:
        m = self.member(name)
        pid = m.pid
        if pid is None:
            return
        if sig in (signal.SIGKILL, signal.SIGTERM):
            m.down_by_schedule = True
            if m.stopped:
                os.kill(pid, signal.SIGCONT)
        os.kill(pid, sig)
        if sig == signal.SIGSTOP:
            m.stopped = True
        elif sig == signal.SIGCONT:
            m.stopped = False
        if sig in (signal.SIGKILL, signal.SIGTERM) and m.proc is not None and m.proc.proc is not None:
            if isinstance(m.proc, ServerProcess):
                m.proc.killed = True
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.proc.wait(timeout=TIMEOUT * 2)
            if m.proc.proc.poll() is None:  # SIGTERM not honoured in time
                m.proc.proc.kill()
                m.proc.proc.wait()

    def restart(self, name: str) -> None:
        m = self.member(name)
        if m.pid is not None:
            return
        self._start_member(m)

    def heal_processes(self) -> None:
        """SIGCONT what is stopped; restart what the schedule took down, and what ended unbidden (reported as a
        violation already; restarted as a supervisor would, so that the rest of the run still checks something)."""
        for m in (*self.watchers, *self.servers):
            if m.stopped and m.pid is not None:
                os.kill(m.pid, signal.SIGCONT)
                m.stopped = False
            if m.pid is None:
                self.restart(m.name)

    def unexpected_exits(self) -> list[str]:
        """Processes that ended though the schedule did not end them (each reported once)."""
        found = []
        for m in (*self.watchers, *self.servers):
            p = m.proc.proc if m.proc is not None else None
            if p is None or p.poll() is None or m.down_by_schedule:
                continue
            lines = [line for line in (m.proc.log().splitlines() if m.proc is not None else []) if line.strip()]
            last = lines[-1] if lines else "(nothing logged)"
            what = f"{m.name} exited with {p.returncode} (the schedule did not end it); its log ends: {last[:300]}"
            if what not in m.exits:
                m.exits.append(what)
                found.append(what)
        return found

    def memory(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in (*self.watchers, *self.servers):
            if m.pid is not None:
                value = rss_mib(m.pid)
                if value is not None:
                    out[m.name] = value
        for name, pid in (("redis", self.redis.pid), ("mongo", self.mongo.pid)):
            if pid is not None:
                value = rss_mib(pid)
                if value is not None:
                    out[name] = value
        return out

    def redis_client(self) -> redis.Redis:
        return redis.Redis(port=self.redis.port, socket_timeout=2, socket_connect_timeout=2)

    def last_event_id(self) -> str | None:
        """The global stream's newest id, read directly (None when Redis does not answer)."""
        try:
            with self.redis_client() as r:
                newest = r.xrevrange("{" + PREFIX + "}:events", count=1)
        except redis.RedisError:
            return None
        return newest[0][0].decode() if newest else "0-0"

    # -- stop ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for m in (*self.servers, *self.watchers):
            if m.proc is not None and m.proc.proc is not None:
                with contextlib.suppress(Exception):
                    if m.proc.proc.poll() is None:
                        m.proc.proc.send_signal(signal.SIGCONT)
                    m.proc.stop()
        with contextlib.suppress(Exception):
            self.proxies.close()
        with contextlib.suppress(Exception):
            self.mongo.stop()
        with contextlib.suppress(Exception):
            self.redis.stop()
