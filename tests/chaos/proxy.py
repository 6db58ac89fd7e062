"""A fault proxy of our own: asyncio TCP between two parts of the system, on a thread of its own.

Each :class:`Link` listens on a loopback port and forwards every connection to an upstream address (which
can move: a restarted process gets a new port). While it forwards, it can

- **delay** every chunk by a fixed time plus a random jitter (order kept, as TCP keeps it),
- **cap the bandwidth** in bytes per second, each direction,
- **reset** the connections it carries (RST, at once), and refuse new ones for a while (as a port nobody
  listens on),
- **blackhole**: accept and never answer; the connections it carries stop delivering anything, in both
  directions, for good (half-open: neither side gets a FIN or a RST; after the heal they stay dead until an
  end gives up on them), and new connections made meanwhile are accepted and never connected upstream,
- **partition** for a while: nothing is delivered, in both directions or in one; at the heal what was held
  flows again, in order, as TCP's retransmissions would deliver it; connections opened meanwhile reach the
  upstream at the heal.

Everything runs on one event loop in a daemon thread (:class:`ProxyLoop`), so that what the test does on its
own loop, or blocking, never slows the network down. Kernel-level faults the proxy cannot fake (a SYN that
is never answered, TCP keepalive and retransmission timeouts) are out of its reach; see docs/chaos.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

CHUNK = 16 * 1024
QUEUE = 64  # chunks queued per direction before the reader stops reading (backpressure to the sender)
UP, DOWN = "up", "down"  # client to upstream, upstream to client


@dataclass(frozen=True)
class Shape:
    """How a link forwards right now (``Shape()`` is a clean wire)."""

    delay: float = 0.0  # seconds added to every chunk
    jitter: float = 0.0  # plus a uniform random 0..jitter seconds
    rate: float = 0.0  # bytes per second per direction; 0: unlimited
    held: frozenset[str] = frozenset()  # directions partitioned (held until the heal)
    blackhole: bool = False
    refuse: bool = False  # new connections are reset at once

    def describe(self) -> str:
        parts = []
        if self.delay or self.jitter:
            parts.append(f"delay {self.delay * 1000:.0f}+{self.jitter * 1000:.0f}ms")
        if self.rate:
            parts.append(f"{self.rate / 1024:.0f}KiB/s")
        if self.held:
            parts.append("partition " + "+".join(sorted(self.held)))
        if self.blackhole:
            parts.append("blackhole")
        if self.refuse:
            parts.append("refusing")
        return ", ".join(parts) or "clean"


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a RST (SO_LINGER 0), as a crashed peer or a middlebox does."""
    with contextlib.suppress(Exception):
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()


class Pipe:
    """One proxied connection: the client's socket, the upstream's, and a task per direction."""

    def __init__(self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.link = link
        self.client = (reader, writer)
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.dead = False  # blackholed: nothing is delivered any more, ever
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        link = self.link
        try:
            if link.shape.blackhole:
                self.dead = True
            while not self.dead and link.shape.held:
                await link.changed.wait()  # a partition: the connection reaches upstream at the heal
            if self.dead:
                await self._swallow(*self.client)
                return
            try:
                self.upstream = await asyncio.wait_for(asyncio.open_connection(*link.upstream), 5.0)
            except (OSError, TimeoutError):
                _rst(self.client[1])  # nothing listens upstream: the client sees its connection reset
                return
            self.tasks = [asyncio.ensure_future(self._direction(UP, self.client, self.upstream[1])),
                          asyncio.ensure_future(self._direction(DOWN, self.upstream, self.client[1]))]
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            if not self.dead:
                self.close()
            link.pipes.discard(self)

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A blackholed connection: read and drop until its end gives up (closes); then close our socket to it,
        which nobody else hears of."""
        with contextlib.suppress(Exception):
            while await reader.read(CHUNK):
                pass
        writer.transport.abort()

    async def _direction(self, direction: str, src_ends: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                         dst: asyncio.StreamWriter) -> None:
        link = self.link
        src = src_ends[0]
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE)
        writer = asyncio.ensure_future(self._write(direction, queue, dst))
        try:
            last_due = 0.0
            while True:
                try:
                    data = await src.read(CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                if self.dead:
                    if not data:  # this end gave up on the dead connection; the other end hears nothing
                        src_ends[1].transport.abort()
                        return
                    continue
                shape = link.shape
                due = time.monotonic() + shape.delay + (link.rng.random() * shape.jitter if shape.jitter else 0.0)
                last_due = max(last_due, due)  # never reorder
                await queue.put((last_due, data))
                if not data:
                    break
            await writer
        finally:
            if not writer.done():
                writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
            if not self.dead:
                for task in self.tasks:  # one direction ended: the connection ends (as most proxies do)
                    if task is not asyncio.current_task():
                        task.cancel()

    async def _write(self, direction: str, queue: asyncio.Queue[tuple[float, bytes]],
                     dst: asyncio.StreamWriter) -> None:
        link = self.link
        while True:
            due, data = await queue.get()
            while direction in link.shape.held and not self.dead:
                await link.changed.wait()
            if self.dead:
                continue
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(Exception):
                    dst.write_eof()
                return
            rate = link.shape.rate
            if rate:
                for i in range(0, len(data), 1024):
                    piece = data[i:i + 1024]
                    dst.write(piece)
                    await dst.drain()
                    await asyncio.sleep(len(piece) / rate)
            else:
                dst.write(data)
                await dst.drain()

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for _, w in (self.client, self.upstream or self.client):
            with contextlib.suppress(Exception):
                w.close()

    def reset(self) -> None:
        self.dead = False
        for task in self.tasks:
            task.cancel()
        _rst(self.client[1])
        if self.upstream is not None:
            _rst(self.upstream[1])

    def kill(self) -> None:
        """Close both ends without a word (at the end of a test)."""
        for task in self.tasks:
            task.cancel()
        for _, w in (self.client, self.upstream or self.client):
            w.transport.abort()


class Link:
    """A listening port forwarding to ``upstream``, shaped by :meth:`shape`."""

    def __init__(self, name: str, upstream: tuple[str, int], rng: random.Random) -> None:
        self.name = name
        self.upstream = upstream
        self.rng = rng
        self.shape = Shape()
        self.pipes: set[Pipe] = set()
        self.changed = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0, backlog=256)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.shape.refuse:
            _rst(writer)
            return
        pipe = Pipe(self, reader, writer)
        self.pipes.add(pipe)
        await pipe.run()

    def set_shape(self, shape: Shape) -> None:
        if shape.blackhole and not self.shape.blackhole:
            for pipe in self.pipes:
                pipe.dead = True
        self.shape = shape
        self.changed.set()  # wake the waiters, then a fresh event for the next change
        self.changed = asyncio.Event()

    def reset_all(self) -> None:
        for pipe in list(self.pipes):
            pipe.reset()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for pipe in list(self.pipes):
            pipe.kill()
        self.changed.set()


class ProxyLoop:
    """The links, on an event loop of their own in a daemon thread; every method may be called from any thread."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.links: dict[str, Link] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxies", daemon=True)
        self._thread.start()

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def run() -> T:
            return await fn()
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(timeout=30)

    def link(self, name: str, upstream: tuple[str, int]) -> Link:
        link = Link(name, upstream, random.Random(self.rng.random()))

        async def start() -> None:
            await link.start()
        self._call(start)
        self.links[name] = link
        return link

    def shape(self, name: str, shape: Shape) -> None:
        link = self.links[name]

        async def apply() -> None:
            link.set_shape(shape)
        self._call(apply)

    def reset(self, name: str) -> None:
        link = self.links[name]

        async def apply() -> None:
            link.reset_all()
        self._call(apply)

    def move(self, name: str, upstream: tuple[str, int]) -> None:
        """The upstream moved (a restarted process listens elsewhere): new connections go there."""
        link = self.links[name]

        async def apply() -> None:
            link.upstream = upstream
        self._call(apply)

    def heal_all(self) -> None:
        for name in self.links:
            self.shape(name, Shape())

    def connections(self, name: str) -> int:
        link = self.links[name]

        async def count() -> int:
            return len(link.pipes)
        return self._call(count)

    def close(self) -> None:
        async def stop_all() -> None:
            await asyncio.gather(*(link.stop() for link in self.links.values()), return_exceptions=True)
        with contextlib.suppress(Exception):
            self._call(stop_all)

        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            self._call(cancel_rest)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()


def describe(shapes: dict[str, Shape]) -> str:
    return "; ".join(f"{name}: {shape.describe()}" for name, shape in shapes.items() if shape != Shape())

