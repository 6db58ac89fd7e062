"""The door (realtime/server/door.py): slow request heads are cut at their deadline, and connections that are
not yet WebSockets count toward the per-address limit."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import TIMEOUT, RedisServer
from tests.e2e.serverkit import ServerProcess, Stack, running_stack, token

pytestmark = pytest.mark.e2e
LIMIT = 4
HEAD_TIMEOUT = 2.0


@pytest.fixture(scope="module", params=["fast", "standard"])
def door(request: pytest.FixtureRequest, redis_server: RedisServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A server on the WebSocket fast path, and one on Sanic's standard path: both have the door."""
    env = {"REALTIME_MAX_CONNECTIONS_PER_ADDRESS": str(LIMIT), "REALTIME_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
           "REALTIME_FAST_PATH": "true" if request.param == "fast" else "false"}
    with running_stack(redis_server, tmp_path_factory.mktemp("door"), "door", servers=1, watcher=False,
                       server_env=env) as st:
        assert st.servers[0].metric("realtime_fast_path") == (1.0 if request.param == "fast" else 0.0)
        yield st


def open_from(address: str, port: int) -> socket.socket:
    """A TCP connection to the server from ``address`` (any 127.x.y.z is this machine's loopback)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(address, 0))
    return sock


class Trickle:
    """A request head sent one byte at a time, every ``every`` seconds, never finished."""

    def __init__(self, sock: socket.socket, every: float = 0.3) -> None:
        self.sock = sock
        self.every = every
        self.head = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Padding: " + b"a" * 10_000
        self.ended_at: float | None = None
        self.started = time.monotonic()

    async def run(self) -> None:
        self.sock.setblocking(False)
        loop = asyncio.get_running_loop()
        for byte in self.head:
            try:
                await loop.sock_sendall(self.sock, bytes([byte]))
            except OSError:
                break
            try:  # has the server ended it?
                data = self.sock.recv(4096)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data is not None:
                break
            await asyncio.sleep(self.every)
        self.ended_at = time.monotonic()


async def websocket(server: ServerProcess, address: str) -> int | None:
    """Open a WebSocket from ``address``: None when it opens, else the HTTP status of the refusal."""
    sock = await asyncio.to_thread(open_from, address, server.port)
    try:
        async with connect(server.url, sock=sock, open_timeout=TIMEOUT,
                           additional_headers={"Authorization": f"Bearer {token('u1')}"}):
            return None
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_a_trickled_head_is_cut_at_its_deadline_and_counts_toward_the_limit(door: Stack) -> None:
    """Regression: heads trickled a byte at a time stayed open for ever (Sanic's request timeout restarts on
    every byte) and were not counted until their upgrade, so they used up the server's descriptors."""
    server = door.servers[0]
    address = "127.0.0.5"
    socks = [await asyncio.to_thread(open_from, address, server.port) for _ in range(LIMIT)]
    trickles = [Trickle(s) for s in socks]
    tasks = [asyncio.create_task(t.run()) for t in trickles]
    try:
        await asyncio.sleep(0.5)
        # The address holds its limit in half-open heads: one more connection is refused at once ...
        assert await websocket(server, address) == 429
        # ... while another address is not affected.
        assert await websocket(server, "127.0.0.6") is None
        # Every trickle is cut within its deadline (plus Sanic's check interval), though it keeps sending.
        done, _ = await asyncio.wait(tasks, timeout=HEAD_TIMEOUT * 4)
        assert len(done) == LIMIT, "a trickled head outlived its deadline"
        for t in trickles:
            assert t.ended_at is not None and t.ended_at - t.started < HEAD_TIMEOUT * 3
        # Closed, they no longer count.
        assert await websocket(server, address) is None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
    assert server.metric("realtime_refused_connections_total", reason="address") >= 1


async def test_websockets_and_idle_connections_share_the_limit(door: Stack) -> None:
    server = door.servers[0]
    address = "127.0.0.7"
    idle = [await asyncio.to_thread(open_from, address, server.port) for _ in range(LIMIT - 1)]
    try:
        assert await websocket(server, address) is None  # the last place
        sock = await asyncio.to_thread(open_from, address, server.port)
        try:
            opened = await connect(server.url, sock=sock, open_timeout=TIMEOUT,
                                   additional_headers={"Authorization": f"Bearer {token('u1')}"})
        except InvalidStatus as exc:
            pytest.fail(f"refused while the address had a free place: {exc}")
        try:
            # LIMIT - 1 idle connections and one WebSocket: the address is full.
            assert await websocket(server, address) == 429
        finally:
            await opened.close()
    finally:
        for s in idle:
            s.close()
    await asyncio.sleep(0.2)
    assert await websocket(server, address) is None


def test_the_door_lets_a_trusted_proxy_through() -> None:
    """The hub counts the clients behind a trusted proxy by X-Forwarded-For (test_server.py covers it); the door
    does not count the proxy's own connections, which carry many clients."""
    from realtime.server.addresses import parse_networks
    from realtime.server.door import Door

    d = Door(2, parse_networks("10.0.0.0/8"), lambda a: 0)
    assert [d.admit("10.1.2.3") for _ in range(5)] == [(True, None)] * 5
    assert [d.admit("192.0.2.1") for _ in range(3)] == [(True, "192.0.2.1"), (True, "192.0.2.1"), (False, None)]
    d.release("192.0.2.1")
    assert d.admit("192.0.2.1") == (True, "192.0.2.1")
