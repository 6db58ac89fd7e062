"""``realtime dev``: everything starts, events flow from the demo producer, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
import websockets

from tests.conftest import TIMEOUT, free_port
from tests.e2e.test_cli_mongo import MONGOSH, _mongosh_env

pytestmark = [pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> set[int]:
    """Every descendant of a process, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


async def test_dev_runs_everything_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    errors = (tmp_path / "stderr").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "realtime", "dev", "--port", str(port), "--mongo-port",  # noqa: ASYNC220
                             str(free_port()), "--rate", "20"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=errors, text=True)
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), TIMEOUT * 3)
        match = re.search(r"WebSocket (ws://\S+)\)", first)
        assert match, (first, (tmp_path / "stderr").read_text())
        assert "MongoDB mongodb://" in first and "Redis redis://" in first
        # The URI names the watched database: a client that writes there is heard (mongosh writes to `test`
        # when the URI names none, and nothing happens).
        uri = re.search(r"MongoDB (mongodb://\S+) ", first)
        assert uri and re.fullmatch(r"mongodb://127\.0\.0\.1:\d+/app\?replicaSet=rs0", uri.group(1)), first
        second = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), TIMEOUT)
        assert "app.posts, app.likes, app.comments" in second and uri.group(1) in second, second
        demo = re.search(r"demo (http://127\.0\.0\.1:\d+/demo) ", first)  # the demo page, first
        assert demo and first.index(demo.group(1)) < first.index("WebSocket"), first
        with urllib.request.urlopen(demo.group(1), timeout=TIMEOUT) as page:  # noqa: ASYNC210 - a local page
            assert page.status == 200 and page.headers["content-type"].startswith("text/html")
        kids = children(proc.pid)
        assert len(kids) >= 3, "redis-server, the watcher and the server run as child processes"
        async with websockets.connect(match.group(1)) as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "rooms": ["public"]}).decode())
            seen = []
            deadline = time.monotonic() + TIMEOUT * 2
            while not any(f.get("type") == "post:created" for f in seen):
                assert time.monotonic() < deadline, f"no post from the demo producer: {seen}"
                seen.append(orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT * 2)))
            if MONGOSH.exists():  # the README's first event, with the URI as printed
                script = 'db.posts.insertOne({_id: "first-event", authorId: "me", text: "hello, realtime"})'
                done = await asyncio.to_thread(
                    subprocess.run, [str(MONGOSH), uri.group(1), "--quiet", "--norc", "--eval", script],
                    capture_output=True, text=True, timeout=TIMEOUT * 2, env=_mongosh_env(tmp_path),
                    cwd=tmp_path, stdin=subprocess.DEVNULL, check=False)
                assert done.returncode == 0, done.stderr
                while not any(f.get("type") == "post:created" and f["data"]["id"] == "first-event" for f in seen):
                    assert time.monotonic() < deadline + TIMEOUT * 2, "mongosh's insert made no event"
                    seen.append(orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT * 2)))
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), TIMEOUT * 2) == 0
        assert not [pid for pid in kids if alive(pid)], "no process is left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        errors.close()


def test_dev_without_redis_server_says_what_to_do(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["PATH"] = str(bin_dir)
    result = subprocess.run([sys.executable, "-m", "realtime", "dev", "--port", str(free_port()), "--mongo-port",
                             str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT * 3)
    assert result.returncode == 1
    assert "redis-server is not installed" in result.stderr
    assert "Traceback" not in result.stderr


async def test_dev_stops_and_starts_the_server_on_sigusr1_with_the_secret_it_was_given(tmp_path: Path) -> None:
    """An app beside ``realtime dev`` (examples/nextjs) mints tokens with REALTIME_JWT_SECRET; SIGUSR1 makes an
    outage of the server alone, and the next one ends it, with the rest (MongoDB, Redis, the watcher) running."""
    import jwt

    port = free_port()
    secret = "s" * 40
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {"REALTIME_JWT_SECRET": secret}
    errors = (tmp_path / "stderr").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "realtime", "dev", "--port", str(port), "--mongo-port",  # noqa: ASYNC220
                             str(free_port()), "--rate", "0"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=errors, text=True)

    async def line(expected: str) -> str:
        assert proc.stdout is not None
        while True:
            text = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), TIMEOUT * 3)
            assert text, (tmp_path / "stderr").read_text()
            if expected in text:
                return text

    async def authenticated() -> str:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            minted = jwt.encode({"sub": "eve", "exp": int(time.time()) + 600}, secret)
            await ws.send(orjson.dumps({"op": "auth", "token": minted}).decode())
            reply = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            return str(reply.get("user"))

    try:
        await line(f"kill -USR1 {proc.pid} stops the server")
        assert await authenticated() == "eve"  # a token signed with the secret it was given
        proc.send_signal(signal.SIGUSR1)
        await line("server stopped")
        with pytest.raises(OSError):
            await websockets.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=TIMEOUT)
        proc.send_signal(signal.SIGUSR1)
        await line("server started again")
        assert await authenticated() == "eve"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), TIMEOUT * 2) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        errors.close()


def _child(dev_pid: int, *argv: str) -> int:
    """The child of ``realtime dev`` whose command line ends with ``argv``."""
    for pid in children(dev_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if [part.decode() for part in cmdline[-len(argv):]] == list(argv) and alive(pid):
            return pid
    raise AssertionError(f"no child {' '.join(argv)} of realtime dev")


async def test_dev_starts_a_server_or_watcher_that_died_again_keeping_the_data(tmp_path: Path) -> None:
    """SIGKILL of the server under ``realtime dev`` took the whole stack down, the stand-in's data with it."""
    from pymongo import MongoClient

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    errors_path = tmp_path / "stderr"
    errors = errors_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "realtime", "dev", "--port", str(port), "--mongo-port",  # noqa: ASYNC220
                             str(free_port()), "--rate", "0"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=errors, text=True)

    async def said(expected: str) -> None:
        deadline = time.monotonic() + TIMEOUT * 3
        while expected not in errors_path.read_text():
            assert proc.poll() is None, f"realtime dev ended: {errors_path.read_text()}"
            assert time.monotonic() < deadline, f"realtime dev did not say {expected!r}: {errors_path.read_text()}"
            await asyncio.sleep(0.05)

    async def created(post_id: str) -> None:
        """A post written now reaches a WebSocket client: the watcher and the server both work."""
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send(orjson.dumps({"op": "subscribe", "rooms": ["public"]}).decode())
            await asyncio.to_thread(mongo.app.posts.insert_one, {"_id": post_id, "authorId": "a", "text": "hi"})
            deadline = time.monotonic() + TIMEOUT * 3
            while True:
                assert time.monotonic() < deadline, f"no post:created for {post_id}"
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT * 3))
                if frame.get("type") == "post:created" and frame["data"]["id"] == post_id:
                    return

    mongo: MongoClient[dict[str, object]] | None = None
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), TIMEOUT * 3)
        uri = re.search(r"MongoDB (mongodb://\S+) ", first)
        assert uri, (first, errors_path.read_text())
        mongo = MongoClient(uri.group(1))
        await created("before")

        os.kill(_child(proc.pid, "-m", "realtime", "serve"), signal.SIGKILL)
        await said("the server died (killed by SIGKILL")
        await said("the server started again")
        assert mongo.app.posts.find_one({"_id": "before"}) is not None, "the stand-in's data is gone"
        await created("after-server")

        os.kill(_child(proc.pid, "-m", "watchers"), signal.SIGKILL)
        await said("the watcher died (killed by SIGKILL")
        await said("the watcher started again")
        await created("after-watcher")

        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), TIMEOUT * 2) == 0
    finally:
        if mongo is not None:
            mongo.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        errors.close()
