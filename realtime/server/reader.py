"""The stream reader: one ``XREAD BLOCK`` always in flight on the global stream, spoken in RESP directly.

redis-py's coroutine stack costs about a quarter of a millisecond per batch, a large share of the fan-out
budget, so the reader is a small ``asyncio.Protocol`` parsing replies with ``hiredis``. As soon as a batch
arrives the next ``XREAD`` is sent, then the batch is handed to the fan-out while that read is in flight.
On a lost connection it reconnects (with backoff) and reads on from the last id it handed over: no gap.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis

from realtime.tasks import cancel_all

log = logging.getLogger("realtime.server")

Entries = list[tuple[bytes, list[bytes]]]


def resp(*args: bytes | str | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        data = a.encode() if isinstance(a, str) else (b"%d" % a if isinstance(a, int) else a)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _XRead(asyncio.Protocol):
    def __init__(self, reader: StreamReader, hello: list[bytes]) -> None:
        self.owner = reader
        self.parser = hiredis.Reader()
        self.hello = hello
        self.skip = len(hello)
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:  # an asyncio or uvloop transport
        self.transport = transport
        for command in self.hello:
            transport.write(command)
        self.request()

    def request(self) -> None:
        assert self.transport is not None
        o = self.owner
        self.transport.write(resp("XREAD", "COUNT", o.count, "BLOCK", o.block_ms, "STREAMS", o.key, o.last))

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        while True:
            reply = self.parser.gets()
            if reply is False:
                return
            if isinstance(reply, hiredis.ReplyError):
                # LOADING (a restarted Redis reading its data back) and BUSY pass: the reader reconnects and reads on
                transient = str(reply).startswith(("LOADING", "BUSY"))
                (log.warning if transient else log.error)("redis refused a command of the stream reader: %s", reply)
                if self.transport is not None:
                    self.transport.close()
                return
            if self.skip:
                self.skip -= 1
                continue
            self.owner.last_reply = time.monotonic()
            if reply is None:  # BLOCK timed out: nothing new
                self.request()
                continue
            entries = reply[0][1]
            self.owner.last = entries[-1][0]
            self.request()  # the next read is in flight while this batch fans out
            try:
                self.owner.on_entries(entries)
            except Exception:
                log.exception("fan-out of a batch failed")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class StreamReader:
    def __init__(self, url: str, key: str, on_entries: Callable[[Entries], None], *, count: int = 512,
                 block_ms: int = 1000, timeout: float = 5.0, on_lost: Callable[[], None] | None = None) -> None:
        self.url = url
        self.key = key
        self.on_entries = on_entries
        self.on_lost = on_lost  # told each time the connection to Redis is lost (then it reconnects)
        self.count = count
        self.block_ms = block_ms
        # Redis answers an XREAD BLOCK within block_ms: a connection silent for that plus ``timeout`` (REALTIME_
        # REDIS_TIMEOUT) is dead though not closed (a partition, a blackhole, a Redis stopped): cut and reconnect.
        self.silence = block_ms / 1000 + timeout
        self.last: bytes = b"$"
        self.last_reply = 0.0
        self.connected = False
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None

    def _endpoint(self) -> tuple[dict[str, Any], list[bytes]]:
        u = urlparse(self.url)
        hello: list[bytes] = []
        if u.password:
            hello.append(resp("AUTH", unquote(u.username or "default"), unquote(u.password)) if u.username
                         else resp("AUTH", unquote(u.password)))
        db = (u.path or "/0").lstrip("/") or "0"
        if db != "0":
            hello.append(resp("SELECT", db))
        if u.scheme == "unix":
            return {"path": u.path}, hello
        kwargs: dict[str, Any] = {"host": u.hostname or "127.0.0.1", "port": u.port or 6379}
        if u.scheme == "rediss":
            kwargs["ssl"] = ssl.create_default_context()
        return kwargs, hello

    async def start(self, last: bytes) -> None:
        self.last = last
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
        if self._transport is not None:
            self._transport.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            endpoint, hello = self._endpoint()

            def factory(hello: list[bytes] = hello) -> _XRead:
                return _XRead(self, hello)

            try:
                if "path" in endpoint:
                    transport, proto = await loop.create_unix_connection(factory, endpoint["path"])
                else:
                    transport, proto = await loop.create_connection(factory, **endpoint)
            except OSError as exc:
                log.warning("stream reader cannot reach Redis (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._transport = transport
            self.connected = True
            self.last_reply = time.monotonic()
            delay = 0.1
            why = await self._until_lost(proto, transport)
            self.connected = False
            if self.on_lost is not None:
                self.on_lost()
            log.warning("stream reader lost Redis (%s); reconnecting from %s", why, self.last.decode())
            await asyncio.sleep(delay)

    async def _until_lost(self, proto: _XRead, transport: asyncio.Transport) -> Exception | str | None:
        """Wait until the connection is lost, or silent past :attr:`silence` (then cut): why it ended."""
        check = min(1.0, self.silence / 2)
        while True:
            done, _ = await asyncio.wait({proto.lost}, timeout=check)
            if done:
                return proto.lost.result()
            if time.monotonic() - self.last_reply > self.silence:
                transport.abort()
                return f"no reply within {self.silence:g}s"
