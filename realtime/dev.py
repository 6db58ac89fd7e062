"""``realtime dev``: the whole product on one machine, with a simulated app writing to it.

Starts the MongoDB stand-in, a private ``redis-server`` (or uses ``REDIS_URL``), a watcher, a server and a
demo producer (simulated users posting, liking and commenting), prints where everything is, and stops it
all on Ctrl-C. Child processes die with it even if it is killed; one that dies on its own (the server, the
watcher, Redis) is started again after a short backoff, the rest running on. SIGUSR1 stops the server, and the
next one starts it again: to watch clients ride out an outage and resume. ``REALTIME_JWT_SECRET``, when set, is the
secret its tokens are signed with (an app beside it, such as examples/nextjs, mints its own with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import math
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from pymongo import AsyncMongoClient

PR_SET_PDEATHSIG = 1


class DevError(Exception):
    """Something the machine lacks or refuses; the message says what to do."""


def _die_with_parent() -> None:  # runs in the child before exec (Linux): SIGTERM when the parent dies
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PORT_WAIT = 5.0  # seconds to wait for a preferred port that is still taken (a quick restart) before moving


def _bind(port: int) -> int | None:
    """The port, bound and released as the servers bind theirs (SO_REUSEADDR: connections of a process that
    just ended, in TIME_WAIT, do not hold it); None when it is taken."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
        bound: int = s.getsockname()[1]
        return bound


def free_port(preferred: int | None = None, wait: float = 0.0, what: str = "") -> int:
    """``preferred`` once it is free (waiting up to ``wait`` seconds for it), else any free port; a move off
    ``preferred`` is told on stderr, naming ``what`` listens there instead."""
    if preferred:
        deadline = time.monotonic() + wait
        while True:
            if _bind(preferred) is not None:
                return preferred
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    port = _bind(0)
    if port is None:
        raise DevError("no free port")
    if preferred and what:
        print(f"realtime dev: WARNING: port {preferred} is taken (after {wait:.0f}s of waiting); {what} listens on "
              f"{port} instead: point anything set up for {preferred} at {port}, or free {preferred} and start "
              "again", file=sys.stderr, flush=True)
    return port


def _wait_port(port: int, seconds: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DevError(f"a process exited at start (code {proc.returncode})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise DevError(f"nothing answered on port {port} after {seconds:.0f}s")


@dataclass
class Dev:
    port: int = 8000
    mongo_port: int = 27017
    rate: float = 2.0  # changes per second from the demo producer; 0 = none
    log_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="realtime-dev-"))
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    standin: Any = None
    server_env: dict[str, str] = field(default_factory=dict)
    commands: dict[str, tuple[list[str], dict[str, str], int | None]] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], env: dict[str, str],
              port: int | None = None) -> subprocess.Popen[bytes]:
        """Starts a child process (its output in the logs); ``respawn(name)`` starts it again the same way, and
        ``port`` is the one it listens on, waited for."""
        log = open(os.path.join(self.log_dir, f"{name}.log"), "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)
        log.close()
        self.procs.append((name, proc))
        self.commands[name] = (argv, env, port)
        return proc

    def respawn(self, name: str) -> None:
        """Starts ``name`` again as it was started (a process that died), on the same port."""
        argv, env, port = self.commands[name]
        self.procs = [(n, p) for n, p in self.procs if n != name]
        if name == "watcher":  # nothing is pointed at its health endpoint: it moves when its port was taken
            host, _, was = env["REALTIME_WATCHER_HTTP"].rpartition(":")
            http = free_port(int(was), PORT_WAIT, "the watcher's health endpoint")
            env = dict(env, REALTIME_WATCHER_HTTP=f"{host}:{http}")
        # A process that just died may hold its port a moment; another program that took it meanwhile would
        # answer in its place (clients are pointed at that port: no other one will do).
        if port is not None and free_port(port, PORT_WAIT) != port:
            raise DevError(f"port {port} is taken by another program")
        proc = self.spawn(name, argv, env, port)
        if port is not None:
            _wait_port(port, 20, proc)

    def dead(self) -> list[str]:
        """The children that exited on their own."""
        return [name for name, proc in self.procs if proc.poll() is not None]

    def start(self) -> dict[str, str]:
        from realtime.standin import StandIn
        from watchers import config

        mongo_port = free_port(self.mongo_port, PORT_WAIT, "the MongoDB stand-in")
        self.standin = StandIn(port=mongo_port)
        mongo_uri = self.standin.start()
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            binary = shutil.which("redis-server")
            if binary is None:
                raise DevError("redis-server is not installed: install it (Debian: apt-get install redis-server) "
                               "or set REDIS_URL to a Redis you run")
            redis_port = free_port(6379)
            self.spawn("redis", [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], dict(os.environ), redis_port)
            _wait_port(redis_port, 10, self.procs[-1][1])
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        port = free_port(self.port, PORT_WAIT, "the server")
        secret = os.environ.get("REALTIME_JWT_SECRET") or secrets.token_urlsafe(32)
        env = dict(os.environ, MONGODB_URI=mongo_uri, REDIS_URL=redis_url, REALTIME_JWT_SECRET=secret,
                   REALTIME_ALLOW_ANONYMOUS="true", REALTIME_LISTEN=f"127.0.0.1:{port}",
                   REALTIME_WATCHER_HTTP=f"127.0.0.1:{free_port()}", REALTIME_PRESENCE_ROOMS="post:,public",
                   REALTIME_DEMO="true")  # /demo and its write API: development only
        watched = config.load(env)
        asyncio.run(self._setup(mongo_uri, env))
        self.spawn("watcher", [sys.executable, "-m", "watchers"], env)
        self.port = port
        self.server_env = env
        self.start_server()
        token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 7 * 86400}, secret, algorithm="HS256")
        db = watched.database
        base, _, query = mongo_uri.partition("?")
        return {"url": f"http://127.0.0.1:{port}", "ws": f"ws://127.0.0.1:{port}/ws", "mongodb": mongo_uri,
                "mongodb_db": f"{base.rstrip('/')}/{db}" + (f"?{query}" if query else ""), "database": db,
                "collections": ", ".join(f"{db}.{c}" for c in (watched.mapping.posts, watched.mapping.likes,
                                                                 watched.mapping.comments)),
                "redis": redis_url, "token": token, "logs": self.log_dir}

    async def _setup(self, mongo_uri: str, env: dict[str, str]) -> None:
        from watchers import config
        from watchers.main import setup_collections

        await setup_collections(config.load(env))

    def start_server(self) -> None:
        server = self.spawn("server", [sys.executable, "-m", "realtime", "serve"], self.server_env, self.port)
        _wait_port(self.port, 20, server)

    def stop_server(self) -> bool:
        """Stops the server as a deployment would (SIGTERM: its clients are told 1001 and resume elsewhere, or
        here once it is back); False when it was not running."""
        for i, (name, proc) in enumerate(self.procs):
            if name == "server":
                del self.procs[i]
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                return True
        return False

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if self.standin is not None:
            self.standin.stop()
            self.standin = None


@dataclass
class Restarts:
    """When to start a child that died again: ``base`` seconds after it died, twice as long each time it dies
    again within ``stable`` seconds of its start, at most ``cap``. Pure: the caller passes the time."""

    base: float = 1.0
    cap: float = 30.0
    stable: float = 30.0
    delays: dict[str, float] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)

    def died(self, name: str, now: float) -> float:
        """The delay before starting ``name`` again, which just died."""
        quick = now - self.started.get(name, -math.inf) < self.stable
        delay = min(self.cap, self.delays[name] * 2) if quick and name in self.delays else self.base
        self.delays[name] = delay
        return delay

    def start(self, name: str, now: float) -> None:
        self.started[name] = now


def _exit_status(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


USERS = ["ada", "bob", "chen", "dana", "eli", "fay", "gus", "hana"]
TAGS = ["news", "cats", "python", "mongodb", "realtime", "music"]
WORDS = [
    "just shipped a thing", "coffee first", "anyone else seeing this?", "the build is green",
    "new blog post is up", "look at this cat", "release day!", "reading about change streams",
]


async def produce(mongo_uri: str, rate: float, stop: asyncio.Event, seed: int | None = None,
                  database: str = "app") -> None:
    """Simulated users: new posts (some with tags), likes and unlikes, comments, at about ``rate`` per second."""
    rng = random.Random(seed)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    db = client[database]
    # the posts' ids as stored (an ObjectId stays an ObjectId: its hex digits as a string name another post)
    posts: list[Any] = [d["_id"] async for d in db.posts.find({}, {"_id": 1}).sort("_id", -1).limit(50)]
    n = int(time.time())
    try:
        while not stop.is_set():
            n += 1
            roll = rng.random()
            user = rng.choice(USERS)
            if not posts or roll < 0.15:
                post_id = f"p{n}"
                await db.posts.insert_one({"_id": post_id, "authorId": user, "text": rng.choice(WORDS),
                                           "hashtags": rng.sample(TAGS, rng.randint(0, 2)),
                                           "createdAt": dt.datetime.now(dt.UTC)})
                posts = [post_id, *posts[:49]]
            elif roll < 0.75:
                post_id = rng.choice(posts[:10])
                like = {"postId": post_id, "userId": user}
                if await db.likes.find_one(like) is None:
                    await db.likes.insert_one({"_id": f"l{n}", **like})
                else:
                    await db.likes.delete_one(like)
            else:
                await db.comments.insert_one({"_id": f"c{n}", "postId": rng.choice(posts[:10]), "userId": user,
                                              "text": rng.choice(WORDS)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.expovariate(rate) if rate > 0 else 3600)
    finally:
        await client.close()


async def supervise(dev: Dev, restarts: Restarts, due: dict[str, float], stop: asyncio.Event, logs: str) -> None:
    """Starts the children that died again (the server, the watcher, Redis), each after its backoff, keeping
    the rest (the stand-in's data above all) as it is. Logged on stderr."""
    now = time.monotonic()
    dead = dev.dead()
    codes = {name: proc.returncode for name, proc in dev.procs}
    for name in dead:
        if name not in due:
            delay = restarts.died(name, now)
            due[name] = now + delay
            print(f"realtime dev: the {name} died ({_exit_status(codes[name])}; see {logs}/{name}.log); starting it "
                  f"again in {delay:.0f}s", file=sys.stderr, flush=True)
    for name, at in sorted(due.items(), key=lambda item: item[1]):
        if at > time.monotonic() or stop.is_set():
            continue
        del due[name]
        try:
            await asyncio.to_thread(dev.respawn, name)
        except DevError as exc:
            delay = restarts.died(name, time.monotonic())
            due[name] = time.monotonic() + delay
            print(f"realtime dev: the {name} did not start again ({exc}); trying again in {delay:.0f}s",
                  file=sys.stderr, flush=True)
            continue
        restarts.start(name, time.monotonic())
        print(f"realtime dev: the {name} started again", file=sys.stderr, flush=True)


def main(port: int, mongo_port: int, rate: float) -> int:
    dev = Dev(port=port, mongo_port=mongo_port, rate=rate)
    try:
        where = dev.start()
    except DevError as exc:
        print(f"realtime dev: {exc}", file=sys.stderr)
        dev.stop()
        return 1
    except BaseException:
        dev.stop()
        raise
    print(f"realtime dev: demo {where['url']}/demo · server {where['url']} (WebSocket {where['ws']}) · "
          f"MongoDB {where['mongodb_db']} · "
          f"Redis {where['redis']} · logs {where['logs']}", flush=True)
    print(f"realtime dev: the watcher reads {where['collections']}: write there with any client, e.g. "
          f"mongosh '{where['mongodb_db']}'", flush=True)
    print(f"realtime dev: a token for user u1: {where['token']} (anonymous clients may read public rooms)",
          flush=True)
    print(f"realtime dev: Ctrl-C stops everything; kill -USR1 {os.getpid()} stops the server, and the next "
          "one starts it again; a process that dies is started again", flush=True)

    async def run() -> None:
        stop = asyncio.Event()
        poke = asyncio.Event()  # a signal came: stop, or SIGUSR1
        toggles = 0
        loop = asyncio.get_running_loop()

        def ended() -> None:
            stop.set()
            poke.set()

        def toggle() -> None:
            nonlocal toggles
            toggles += 1
            poke.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, ended)
        loop.add_signal_handler(signal.SIGUSR1, toggle)
        producer = (loop.create_task(produce(where["mongodb"], rate, stop, database=where["database"]))
                    if rate > 0 else None)
        restarts = Restarts()
        due: dict[str, float] = {}  # children that died -> when to start them again
        for name, _ in dev.procs:
            restarts.start(name, time.monotonic())
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(poke.wait(), 1.0)
            poke.clear()
            while toggles and not stop.is_set():
                toggles -= 1
                due.pop("server", None)
                if await asyncio.to_thread(dev.stop_server):
                    print("realtime dev: server stopped (SIGUSR1 starts it again)", flush=True)
                    continue
                try:
                    await asyncio.to_thread(dev.start_server)
                except DevError as exc:
                    print(f"realtime dev: the server did not start again: {exc}; stopping", file=sys.stderr)
                    stop.set()
                    break
                restarts.start("server", time.monotonic())
                print(f"realtime dev: server started again at {where['url']}", flush=True)
            await supervise(dev, restarts, due, stop, where["logs"])
        if producer is not None:
            await asyncio.gather(producer, return_exceptions=True)

    try:
        asyncio.run(run())
    finally:
        dev.stop()
    print("realtime dev: stopped", flush=True)
    return 0
