"""The stream reader against a Redis that goes silent without closing the connection (a partition or a
blackhole): it must cut the connection and read on from where it was, not wait for ever."""

from __future__ import annotations

import asyncio
import logging

import hiredis
import pytest

from realtime.server.reader import StreamReader


async def test_a_silent_connection_is_cut_and_the_reader_reads_on_from_its_last_id() -> None:
    """The first connection answers the first XREAD, then nothing (the packets go nowhere, the connection stays
    open); the reader cuts it once silent past BLOCK plus the timeout, reconnects, and asks from the last id
    handed over."""
    asked: list[list[bytes]] = []
    connections = 0
    silent_ones: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        me, answered = connections, 0
        parser = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    asked.append([me, *command])
                    if me == 1 and answered == 1:
                        silent_ones.append(writer)  # blackholed: no answer, no close
                        continue
                    answered += 1
                    n = len(asked)
                    writer.write(_entry_reply(f"1-{n}"))
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    got: list[bytes] = []
    lost: list[int] = []
    three = asyncio.Event()

    def on_entries(entries: list[tuple[bytes, list[bytes]]]) -> None:
        got.extend(e[0] for e in entries)
        if len(got) >= 3:
            three.set()

    stream = StreamReader(f"redis://127.0.0.1:{port}/0", "k", on_entries, block_ms=100, timeout=0.3,
                          on_lost=lambda: lost.append(1))
    try:
        await stream.start(b"0-0")
        async with asyncio.timeout(10):
            await three.wait()
    finally:
        await stream.stop()
        server.close()
        for writer in silent_ones:
            writer.close()
        await server.wait_closed()
    assert lost == [1]
    assert got[:1] == [b"1-1"]
    second = [c for c in asked if c[0] == 2]
    assert second and second[0][-1] == b"1-1"  # read on from the last id handed over: no gap
    assert len(got) == len(set(got))


def _entry_reply(entry_id: str) -> bytes:
    """An XREAD reply: one stream, one entry with one field ``e``."""
    return (b"*1\r\n*2\r\n$1\r\nk\r\n*1\r\n*2\r\n" + b"$%d\r\n%s\r\n" % (len(entry_id), entry_id.encode())
            + b"*2\r\n$1\r\ne\r\n$2\r\n{}\r\n")


async def test_a_redis_loading_its_data_is_a_warning_and_the_reader_reads_on(caplog: pytest.LogCaptureFixture) -> None:
    """A restarted Redis answers LOADING while it reads its data back: a passing state, logged as a warning (it
    was an error); the reader reconnects and reads on. Another refusal is still an error."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        me = connections
        parser = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while parser.gets() is not False:
                    if me == 1:
                        writer.write(b"-LOADING Redis is loading the dataset in memory\r\n")
                    elif me == 2:
                        writer.write(b"-ERR something else\r\n")
                    else:
                        writer.write(_entry_reply(f"1-{me}"))
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    got = asyncio.Event()
    stream = StreamReader(f"redis://127.0.0.1:{port}/0", "k", lambda entries: got.set(), block_ms=100, timeout=0.3)
    try:
        with caplog.at_level(logging.WARNING, logger="realtime.server"):
            await stream.start(b"0-0")
            async with asyncio.timeout(10):
                await got.wait()
    finally:
        await stream.stop()
        server.close()
        await server.wait_closed()
    refused = [(r.levelno, r.getMessage()) for r in caplog.records if "refused a command" in r.getMessage()]
    assert refused[0][0] == logging.WARNING and "LOADING" in refused[0][1]
    assert refused[1][0] == logging.ERROR and "something else" in refused[1][1]
