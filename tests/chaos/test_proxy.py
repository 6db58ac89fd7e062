"""The fault proxy itself, against an echo server: each shape does to the bytes what it says."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.chaos.proxy import ProxyLoop, Shape
from tests.conftest import TIMEOUT


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
def proxies() -> Iterator[ProxyLoop]:
    loop = ProxyLoop(seed=3)
    yield loop
    loop.close()


async def roundtrip(port: int, data: bytes, within: float = TIMEOUT) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.readexactly(len(data)), within)
    finally:
        writer.close()


async def test_a_clean_link_forwards_both_ways(echo: int, proxies: ProxyLoop) -> None:
    link = proxies.link("l", ("127.0.0.1", echo))
    assert await roundtrip(link.port, b"hello" * 1000) == b"hello" * 1000


async def test_delay_holds_every_chunk_back_and_keeps_the_order(echo: int, proxies: ProxyLoop) -> None:
    link = proxies.link("l", ("127.0.0.1", echo))
    proxies.shape("l", Shape(delay=0.3, jitter=0.2))
    reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
    start = time.monotonic()
    for i in range(20):
        writer.write(b"%03d" % i)
        await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(60), TIMEOUT)
    assert got == b"".join(b"%03d" % i for i in range(20))
    assert time.monotonic() - start >= 0.6  # at least the delay, each way
    writer.close()


async def test_a_partition_holds_the_bytes_until_the_heal(echo: int, proxies: ProxyLoop) -> None:
    link = proxies.link("l", ("127.0.0.1", echo))
    reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
    proxies.shape("l", Shape(held=frozenset({"up", "down"})))
    writer.write(b"held")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.5)
    late = asyncio.ensure_future(roundtrip(link.port, b"new connection"))  # opened during the partition
    proxies.shape("l", Shape())
    assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"held"
    assert await late == b"new connection"
    writer.close()


async def test_one_way_partition_holds_one_direction_only(echo: int, proxies: ProxyLoop) -> None:
    link = proxies.link("l", ("127.0.0.1", echo))
    reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
    proxies.shape("l", Shape(held=frozenset({"down"})))  # the echo gets the bytes; its answer is held
    writer.write(b"ping")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.5)
    proxies.shape("l", Shape())
    assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"ping"
    writer.close()


async def test_a_blackhole_answers_nothing_ever_and_closes_nothing(echo: int, proxies: ProxyLoop) -> None:
    link = proxies.link("l", ("127.0.0.1", echo))
    reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
    proxies.shape("l", Shape(blackhole=True))
    writer.write(b"lost")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(4), 0.5)
    proxies.shape("l", Shape())  # healed: the old connection stays dead (half-open), a new one works
    writer.write(b"lost too")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(4), 0.5)
    assert not reader.at_eof()
    assert await roundtrip(link.port, b"fresh") == b"fresh"
    writer.close()


async def test_reset_and_refuse_end_connections_with_a_reset(echo: int, proxies: ProxyLoop) -> None:
    link = proxies.link("l", ("127.0.0.1", echo))
    reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
    assert await roundtrip(link.port, b"x") == b"x"
    proxies.reset("l")
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        writer.write(b"after")
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(5), TIMEOUT)
    proxies.shape("l", Shape(refuse=True))
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await roundtrip(link.port, b"refused")
    proxies.shape("l", Shape())
    assert await roundtrip(link.port, b"again") == b"again"


async def test_bandwidth_is_capped(echo: int, proxies: ProxyLoop) -> None:
    link = proxies.link("l", ("127.0.0.1", echo))
    proxies.shape("l", Shape(rate=20 * 1024))
    start = time.monotonic()
    assert await roundtrip(link.port, b"b" * 10 * 1024) == b"b" * 10 * 1024
    assert time.monotonic() - start >= 0.5 * 0.9  # 10 KiB at 20 KiB/s, each way: about a second


async def test_a_moved_upstream_takes_the_new_connections(echo: int, proxies: ProxyLoop) -> None:
    link = proxies.link("l", ("127.0.0.1", 1))  # nothing listens: the client sees a reset
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await roundtrip(link.port, b"nobody")
    proxies.move("l", ("127.0.0.1", echo))
    assert await roundtrip(link.port, b"somebody") == b"somebody"
