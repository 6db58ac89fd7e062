"""Fixtures shared by every test tier: a private redis-server, and MongoDB (the stand-in, or a real one).

``MONGODB_URI`` set: the contract tests run against that MongoDB (a replica set; fault injection needs
``enableTestCommands=1``), and the tests that need the stand-in's own controls are skipped. Unset: they
run against the stand-in, started in-process on a free port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient, MongoClient

from realtime.standin import StandIn

# Every wait in the tests scales from this one figure (seconds); raise it on a slow machine.
TIMEOUT = float(os.environ.get("REALTIME_TEST_TIMEOUT", "10"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def own_redis(workdir: Path, port: int | None = None) -> Iterator[RedisServer]:
    """A redis-server on a free loopback port (or ``port``), keeping nothing on disk; stopped on the way out."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; the tests start their own (apt-get install redis-server)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.02)
        yield RedisServer(f"redis://127.0.0.1:{port}/0", port, proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
            proc.terminate()
        proc.wait(timeout=TIMEOUT)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of our own on a free loopback port, stopped at the end of the session."""
    with own_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@dataclass
class Mongo:
    """The MongoDB under test: its URI, and the stand-in when that is what runs."""

    uri: str
    standin: StandIn | None

    @property
    def is_real(self) -> bool:
        return self.standin is None

    def need_standin(self) -> StandIn:
        if self.standin is None:
            pytest.skip("needs the stand-in's own controls (a real MongoDB cannot truncate its oplog on demand)")
        return self.standin


@pytest.fixture(scope="session")
def mongo() -> Iterator[Mongo]:
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield Mongo(uri, None)
        return
    standin = StandIn()
    standin.start()
    yield Mongo(standin.uri, standin)
    standin.stop()


@pytest.fixture
def fresh_standin() -> Iterator[StandIn]:
    """A stand-in of the test's own, for tests that change its oplog or its faults."""
    standin = StandIn()
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture
def db_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def aclient(mongo: Mongo) -> AsyncIterator[AsyncMongoClient[dict[str, object]]]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        mongo.uri, serverSelectionTimeoutMS=int(TIMEOUT * 1000)
    )
    yield client
    await client.close()


@pytest.fixture
def client(mongo: Mongo) -> Iterator[MongoClient[dict[str, object]]]:
    c: MongoClient[dict[str, object]] = MongoClient(mongo.uri, serverSelectionTimeoutMS=int(TIMEOUT * 1000))
    yield c
    c.close()
