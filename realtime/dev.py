"""``realtime dev``: the whole product on one machine, with a simulated app writing to it.

Starts the MongoDB stand-in, a private ``redis-server`` (or uses ``REDIS_URL``), a watcher, a server and a
demo producer (simulated users posting, liking and commenting), prints where everything is, and stops it
all on Ctrl-C. Child processes die with it even if it is killed. SIGUSR1 stops the server, and the next one
starts it again: to watch clients ride out an outage and resume. ``REALTIME_JWT_SECRET``, when set, is the
secret its tokens are signed with (an app beside it, such as examples/nextjs, mints its own with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
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


def free_port(preferred: int | None = None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            bound: int = s.getsockname()[1]
            return bound
    raise DevError("no free port")


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

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(os.path.join(self.log_dir, f"{name}.log"), "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)
        log.close()
        self.procs.append((name, proc))
        return proc

    def start(self) -> dict[str, str]:
        from realtime.standin import StandIn
        from watchers import config

        mongo_port = free_port(self.mongo_port)
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
                                 "--appendonly", "no"], dict(os.environ))
            _wait_port(redis_port, 10, self.procs[-1][1])
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        port = free_port(self.port)
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
        server = self.spawn("server", [sys.executable, "-m", "realtime", "serve"], self.server_env)
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
          "one starts it again", flush=True)

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
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(poke.wait(), 1.0)
            poke.clear()
            while toggles and not stop.is_set():
                toggles -= 1
                if await asyncio.to_thread(dev.stop_server):
                    print("realtime dev: server stopped (SIGUSR1 starts it again)", flush=True)
                    continue
                try:
                    await asyncio.to_thread(dev.start_server)
                except DevError as exc:
                    print(f"realtime dev: the server did not start again: {exc}; stopping", file=sys.stderr)
                    stop.set()
                    break
                print(f"realtime dev: server started again at {where['url']}", flush=True)
            dead = [name for name, proc in dev.procs if proc.poll() is not None]
            if dead:
                print(f"realtime dev: {', '.join(dead)} stopped; see {where['logs']}; stopping", file=sys.stderr)
                stop.set()
        if producer is not None:
            await asyncio.gather(producer, return_exceptions=True)

    try:
        asyncio.run(run())
    finally:
        dev.stop()
    print("realtime dev: stopped", flush=True)
    return 0
