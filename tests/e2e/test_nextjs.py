"""The React bindings (clients/react) and the Next.js example (examples/nextjs).

The bindings' unit tests run with vitest. The end-to-end test builds the example (``next build``, once per
session), starts it beside ``realtime dev`` and drives two browser contexts in headless Chromium (Debian's
``chromium``, driven by ``playwright-core`` from tests/browser). Each is skipped, saying why, where node, the
npm packages (scripts/test installs them from the locks) or chromium are missing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
import redis
from pymongo import MongoClient

from tests.conftest import TIMEOUT, free_port
from tests.integration.watcherkit import wait_for

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "react"
EXAMPLE = ROOT / "examples" / "nextjs"
BROWSER = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SECRET = "a-secret-for-the-nextjs-example-test-only"
OUTAGE_TEXT = "written while the server was down"  # as tests/browser/nextjs.mjs writes it


def _node_missing(*folders: Path) -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    for folder in folders:
        if not (folder / "node_modules").is_dir():
            return f"the npm packages of {folder.relative_to(ROOT)} are not installed: run `npm ci` there " \
                   "(scripts/test does)"
    return None


@pytest.mark.parametrize("react", ["19", "18"])
def test_the_react_bindings_unit_tests(react: str) -> None:
    """useRealtime, useRoom, useEvent, useLikeButton, useOptimisticUpdate, useNewPosts, useConnection,
    usePresence, useTyping; server rendering without a socket; one connection under strict mode. On React 19,
    and on React 18 (clients/react/react18: the same tests with React 18 installed there)."""
    where = PACKAGE if react == "19" else PACKAGE / "react18"
    missing = _node_missing(where)
    if missing:
        pytest.skip(missing)
    commands = [["node", "node_modules/vitest/vitest.mjs", "run"]]
    if react == "19":
        commands.insert(0, ["node", "node_modules/typescript/bin/tsc", "--noEmit", "-p", "."])
    for command in commands:
        result = subprocess.run(command, cwd=where, capture_output=True, text=True, timeout=TIMEOUT * 12,
                                check=False, env=dict(os.environ, CI="true", NO_COLOR="1"))
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert re.search(r"Tests\s+\d+ passed", result.stdout), result.stdout


@dataclass
class Running:
    app: str  # the Next.js app's URL
    dev: subprocess.Popen[str]
    mongodb: str
    redis: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)  # the example's build and start environment

    def dev_line(self, expected: str) -> str:
        """Waits for a line of ``realtime dev``'s output that holds ``expected``."""
        assert self.dev.stdout is not None
        while True:
            line = self.dev.stdout.readline()
            assert line, f"realtime dev ended; see {self.log}"
            if expected in line:
                return line


def _wait_http(url: str, proc: subprocess.Popen[Any], what: str) -> None:
    def answers() -> bool:
        assert proc.poll() is None, f"{what} exited (code {proc.returncode})"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT):
                return True
        except urllib.error.HTTPError:
            return True  # it answers
        except OSError:
            return False
    wait_for(answers, what, timeout=TIMEOUT * 6)


def _stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=TIMEOUT * 2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def nextjs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """``realtime dev`` (no demo producer), the example built for it (once) and started with ``next start``."""
    missing = _node_missing(PACKAGE, EXAMPLE, BROWSER)
    if missing:
        pytest.skip(missing)
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does)")
    logs = tmp_path_factory.mktemp("nextjs")
    port, app_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {
        "REALTIME_JWT_SECRET": SECRET,  # the app mints its tokens with it
        "REALTIME_CORS_ORIGIN": f"http://127.0.0.1:{app_port}",  # long-polling from the app's pages
    }
    dev_log = (logs / "dev.stderr").open("w")
    dev = subprocess.Popen([sys.executable, "-m", "realtime", "dev", "--port", str(port), "--mongo-port",
                            str(free_port()), "--rate", "0"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=dev_log, text=True)
    app: subprocess.Popen[bytes] | None = None
    app_log: IO[bytes] | None = None
    try:
        assert dev.stdout is not None
        first = dev.stdout.readline()
        mongodb = re.search(r"MongoDB (mongodb://\S+) ", first)
        redis_url = re.search(r"Redis (redis://\S+) ", first)
        assert mongodb and redis_url and f":{port} " in first, (first, (logs / "dev.stderr").read_text())
        running = Running(f"http://127.0.0.1:{app_port}", dev, mongodb.group(1), redis_url.group(1),
                          logs / "dev.stderr")
        running.dev_line("kill -USR1")
        # The build inlines NEXT_PUBLIC_ variables: it is made for this server's address.
        build_env = dict(os.environ, NEXT_PUBLIC_WEBSOCKET_URL=f"ws://127.0.0.1:{port}/ws",
                         NEXT_PUBLIC_REALTIME_WS_RETRY_MS="1500", NEXT_TELEMETRY_DISABLED="1")
        for command, cwd in ((["node", "build.mjs"], PACKAGE), (["node", "node_modules/next/dist/bin/next", "build"],
                                                              EXAMPLE)):
            built = subprocess.run(command, cwd=cwd, env=build_env, capture_output=True, text=True,
                                   timeout=TIMEOUT * 60, check=False)
            assert built.returncode == 0, built.stdout[-6000:] + built.stderr[-3000:]
        running.env = build_env | {"MONGODB_URI": mongodb.group(1)}
        app_log = (logs / "next.log").open("wb")
        app = subprocess.Popen(["node", "node_modules/next/dist/bin/next", "start", "-p", str(app_port), "-H",
                                "127.0.0.1"], cwd=EXAMPLE, stdout=app_log, stderr=subprocess.STDOUT,
                               env=build_env | {"MONGODB_URI": mongodb.group(1), "REALTIME_JWT_SECRET": SECRET})
        _wait_http(f"{running.app}/api/token", app, "next start")  # 401 without a user: it answers
        yield running
    finally:
        if app is not None:
            _stop(app)
        if app_log is not None:
            app_log.close()
        _stop(dev, signal.SIGINT)
        assert dev.stdout is not None
        dev.stdout.close()
        dev_log.close()


def _published(redis_url: str, found: Any, what: str) -> None:
    """Waits until the global stream holds an event for which ``found(event)`` is true."""
    r = redis.Redis.from_url(redis_url)
    try:
        def holds() -> bool:
            return any(found(orjson.loads(fields[b"e"])) for _, fields in r.xrevrange("{rt}:events", count=50))
        wait_for(holds, what, timeout=TIMEOUT * 3)
    finally:
        r.close()


async def test_the_nextjs_example_in_headless_chromium(nextjs: Running, tmp_path: Path) -> None:
    """Alice and Bob, each in a browser context of their own: a like in one shows in the other; a like whose API
    call fails is rolled back; a new post raises the banner; with the WebSocket blocked the page falls back to
    long-polling, and goes back when it works; the realtime server stops while Bob unlikes and posts, starts
    again, and Alice's page gets both (resumed from its position, no gap)."""
    mongo: MongoClient[dict[str, Any]] = MongoClient(nextjs.mongodb)
    try:
        mongo.get_default_database().posts.insert_one(
            {"_id": "n1", "authorId": "carol", "text": "the first post", "createdAt": dt.datetime.now(dt.UTC)})
    finally:
        mongo.close()
    await asyncio.to_thread(_published, nextjs.redis, lambda e: e["type"] == "post:created"
                            and e["data"]["id"] == "n1", "the watcher to publish n1")

    def stop() -> None:
        nextjs.dev.send_signal(signal.SIGUSR1)
        nextjs.dev_line("server stopped")

    def start() -> None:
        # what Bob wrote while the server was down is in the stream before it starts again: it comes by replay
        _published(nextjs.redis, lambda e: e["type"] == "post:unliked" and e["data"]["userId"] == "bob",
                   "the watcher to publish Bob's unlike")
        _published(nextjs.redis, lambda e: e["type"] == "post:created" and e["data"]["text"] == OUTAGE_TEXT,
                   "the watcher to publish Bob's post")
        nextjs.dev.send_signal(signal.SIGUSR1)
        nextjs.dev_line("server started again")

    out: list[str] = []
    env = dict(os.environ, CHROMIUM=CHROMIUM, REALTIME_TEST_TIMEOUT=str(TIMEOUT))
    proc = await asyncio.create_subprocess_exec(
        "node", str(BROWSER / "nextjs.mjs"), nextjs.app, str(tmp_path), cwd=BROWSER, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    replies = {"STOP": (stop, b"STOPPED\n"), "START": (start, b"STARTED\n")}
    try:
        async with asyncio.timeout(TIMEOUT * 30):
            while line := (await proc.stdout.readline()).decode():
                out.append(line.rstrip())
                print(line.rstrip(), flush=True)  # (with -s: as it goes)
                if line.strip() in replies:
                    action, reply = replies[line.strip()]
                    await asyncio.to_thread(action)
                    proc.stdin.write(reply)
                    await proc.stdin.drain()
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = "\n".join(out)
    assert code == 0, f"the browser test failed (screenshots in {tmp_path}):\n{log}"
    assert out[-1] == "OK", log


def _notice(app: str, tmp_path: Path, text: str, state: str) -> str:
    """The example's page at ``app`` says ``text`` and its badge is in ``state`` (tests/browser/nextjs.mjs)."""
    env = dict(os.environ, CHROMIUM=CHROMIUM, REALTIME_TEST_TIMEOUT=str(TIMEOUT))
    done = subprocess.run(["node", str(BROWSER / "nextjs.mjs"), "notice", app, str(tmp_path), text, state],
                          cwd=BROWSER, env=env, capture_output=True, text=True, timeout=TIMEOUT * 12,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("secret", [None, "not-the-realtime-servers-secret-at-all"])
def test_the_example_says_what_is_wrong_with_its_secret(nextjs: Running, tmp_path: Path, secret: str | None) -> None:
    """Without REALTIME_JWT_SECRET, the page said nothing, never connected and asked for a token over and over:
    now the server log and the page say it is missing, and the page connects anonymously (``realtime dev``
    allows it). With a wrong one, the page rendered HTTP 500: now it renders the feed and says why it is not
    live."""
    port = free_port()
    env = {k: v for k, v in nextjs.env.items() if k != "REALTIME_JWT_SECRET"}
    if secret:
        env["REALTIME_JWT_SECRET"] = secret
    log = (tmp_path / "next.log").open("wb")
    app = subprocess.Popen(["node", "node_modules/next/dist/bin/next", "start", "-p", str(port), "-H", "127.0.0.1"],
                           cwd=EXAMPLE, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/api/token", app, "next start")
        if secret is None:
            assert "REALTIME_JWT_SECRET is not set" in (tmp_path / "next.log").read_text()
            asked = urllib.request.Request(f"{url}/api/token", headers={"Cookie": "user=alice"})
            with urllib.request.urlopen(asked, timeout=TIMEOUT) as res:
                body = orjson.loads(res.read())
            assert body["token"] is None and "REALTIME_JWT_SECRET is not set" in body["problem"], body
            _notice(url, tmp_path, "REALTIME_JWT_SECRET is not set in the Next.js server", "connected")
        else:
            with urllib.request.urlopen(f"{url}/?user=alice", timeout=TIMEOUT * 2) as res:
                html = res.read().decode()
            assert res.status == 200 and "refused this app&#x27;s token" in html, html[:2000]
            _notice(url, tmp_path, "REALTIME_JWT_SECRET must be the server's secret", "offline")
    finally:
        _stop(app)
        log.close()


def _server_pid(dev_pid: int) -> int:
    """The ``realtime serve`` child of ``realtime dev``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == dev_pid and cmdline[-3:-1] == [b"realtime", b"serve"]:
            return int(entry.name)
    raise AssertionError("no realtime serve under realtime dev")


@pytest.mark.parametrize("frozen", ["the realtime server", "MongoDB"])
def test_the_page_is_rendered_in_bounded_time_when_a_server_hangs(nextjs: Running, frozen: str) -> None:
    """A stopped (SIGSTOP) realtime server, or a frozen MongoDB (the stand-in lives in ``realtime dev``), held
    the page's render for ever: now it renders the feed offline, or a page that says the database does not
    answer, within the example's bounds (2 s for the position; 3 to 8 s for MongoDB)."""
    pid = _server_pid(nextjs.dev.pid) if frozen == "the realtime server" else nextjs.dev.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        with urllib.request.urlopen(f"{nextjs.app}/?user=dave", timeout=TIMEOUT * 3) as res:
            html = res.read().decode()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert res.status == 200
    if frozen == "the realtime server":
        assert "Live updates are off" in html and "did not answer within 2 s" in html, html[:3000]
    else:
        assert "could not be read from the database" in html, html[:3000]
