"""The WebSocket fast path: client frames handled as they arrive, and less kept per connection.

Everything here that depends on how Sanic and websockets work inside is in this one module, written for
the versions in :data:`WRITTEN_FOR` and used only when those are the installed ones (the tests fail when
they change, so that this module is looked at again). Elsewhere, Sanic's standard path runs.

What it changes, through :class:`FastProtocol` (a subclass of Sanic's public ``WebSocketProtocol``, passed
as ``protocol=`` when the server starts):

* Text frames from the client are handed to a callback from ``data_received``, with no ``recv()``, no
  task and no ``asyncio.wait`` per message; control frames (close, and pings and pongs the server did not
  send itself) still take Sanic's path, and the pong to a client's ping is queued by the sans-I/O protocol.
* Without ``recv()``, the frame assembler (a queue, two events and two locks per connection) is dropped.
* Heartbeats (:class:`Heartbeats`): one task pings every connection with the same frame, a slice of them at
  a time so that the pings and their pongs are spread over the interval; a connection that has sent nothing
  within the timeout of a ping is closed with 1011 (instead of a ping task per connection).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Collection
from importlib.metadata import version
from typing import Any, cast

from websockets.frames import Opcode
from websockets.protocol import State

from realtime.server.door import GuardedProtocol

log = logging.getLogger("realtime.server")
WRITTEN_FOR = {"sanic": "25.12.1", "websockets": "17.4"}
PING = b"\x89\x00"  # an unmasked ping with no payload; the client answers with an empty pong

_TEXT, _BINARY, _CONT, _PING, _PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PING, Opcode.PONG
_OPEN = State.OPEN


def installed() -> dict[str, str]:
    return {name: version(name) for name in WRITTEN_FOR}


def supported() -> bool:
    return installed() == WRITTEN_FOR


class _NoAssembler:
    """Stands in for Sanic's frame assembler, which only ``recv()`` reads; data frames never reach it here."""

    __slots__ = ()

    async def put(self, frame: Any) -> None:
        return None


NO_ASSEMBLER = _NoAssembler()
_pending: set[asyncio.Future[Any]] = set()  # control-frame handling in flight (kept referenced until done)


def _finished(task: asyncio.Future[Any]) -> None:
    """Out of ``_pending``; a failure is logged, never left unretrieved."""
    _pending.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("handling a client's control frame failed", exc_info=task.exception())


class Heartbeats:
    """Pings every connection once per ``interval``, ``tick / interval`` of them per :meth:`step`, so that a
    ping to each of thousands of connections, and their pongs, do not stall delivery all at once. A connection
    that has sent nothing within ``timeout`` of a ping is returned by :meth:`step` as silent.

    Connections are the hub's (realtime.server.hub.Conn, on the fast path): ``alive``, ``proto``, ``transport``
    and ``ws.io_proto``, a :class:`FastProtocol` whose ``last_in`` is when the client last sent anything."""

    def __init__(self, interval: float, timeout: float, tick: float) -> None:
        self.interval, self.timeout, self.tick = interval, timeout, tick
        self.order: list[Any] = []  # this round's connections, pinged in this order
        self.pos = 0
        self.started = -math.inf  # when this round started: one round per interval
        self.waiting: deque[tuple[float, Any]] = deque()  # (sent at, connection), in the order sent

    def step(self, conns: Collection[Any], now: float) -> list[Any]:
        """One tick: ping this tick's share of ``conns``; return the connections silent for too long."""
        silent = []
        waiting = self.waiting
        while waiting and now - waiting[0][0] >= self.timeout:
            sent, conn = waiting.popleft()
            if conn.alive and conn.ws.io_proto.last_in < sent:
                silent.append(conn)
        if not self.order:
            if now - self.started < self.interval:
                return silent
            self.order, self.pos, self.started = list(conns), 0, now
        n = math.ceil(len(self.order) * self.tick / self.interval)
        share = self.order[self.pos:self.pos + n]
        self.pos += n
        if self.pos >= len(self.order):
            self.order = []  # not kept until the next round: a new snapshot then
        for conn in share:
            io = conn.ws.io_proto
            if not conn.alive or conn.proto.state is not _OPEN or (io.pinged and io.last_in < io.pinged):
                continue  # gone, closing, or its last ping is still unanswered (in `waiting`)
            conn.transport.write(PING)
            io.pinged = now
            waiting.append((now, conn))
        return silent


class FastProtocol(GuardedProtocol):
    __slots__ = ("conn", "early", "fragments", "fragtext", "gone", "last_in", "lost", "on_text", "pinged")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_text: Callable[[bytes | str], None] | None = None
        # The hub's connection (realtime.server.hub.Conn), told when the connection leaves OPEN (write nothing
        # more), when the transport keeps unsent bytes, and when it has sent them all.
        self.conn: Any = None
        self.early: list[bytes | str] | None = None  # frames that came before the handler set on_text
        self.fragments: list[bytes] | None = None
        self.fragtext = False  # whether the fragmented message being assembled is text
        self.last_in = time.monotonic()
        self.pinged = 0.0  # when Heartbeats last pinged this connection
        self.gone: asyncio.Future[None] | None = None  # see closed()
        self.lost = False

    async def websocket_handshake(self, request: Any, subprotocols: Any = None) -> Any:
        ws = await super().websocket_handshake(request, subprotocols)
        ws.assembler = NO_ASSEMBLER
        # What the connection kept of its HTTP life: the timeout check (which stops itself once the handler
        # runs a websocket) and the request-body event.
        if self._callback_check_timeouts is not None:
            self._callback_check_timeouts.cancel()
            self._callback_check_timeouts = None
        cast(Any, self)._data_received = None
        return ws

    def data_received(self, data: bytes) -> None:
        ws: Any = self.websocket
        if ws is None:
            cast(Any, super()).data_received(data)  # still HTTP: the upgrade
            return
        self.last_in = time.monotonic()
        p: Any = ws.ws_proto
        p.receive_data(data)
        if p.state is not _OPEN:  # a close frame, or a protocol error: no data frame may follow ours
            self._left()
        out = p.data_to_send()
        rest: list[Any] | None = None
        frame: Any
        try:
            for frame in p.events_received():
                op = frame.opcode
                if op is _TEXT or op is _BINARY:
                    if frame.fin:
                        self._deliver(frame.data.decode() if op is _TEXT else frame.data)
                    else:
                        self.fragments, self.fragtext = [frame.data], op is _TEXT
                elif op is _CONT:
                    if self.fragments is not None:
                        self.fragments.append(frame.data)
                        if frame.fin:
                            whole, self.fragments = b"".join(self.fragments), None
                            self._deliver(whole.decode() if self.fragtext else whole)
                elif op is _PING or (op is _PONG and not frame.data):
                    continue  # the pong is queued in `out`; an empty pong answers our heartbeat
                else:
                    if rest is None:
                        rest = []
                    rest.append(frame)
        except UnicodeDecodeError:  # RFC 6455 §8.1: a text message that is not UTF-8 fails the connection
            self._fail(1007, "invalid UTF-8 in a text message")
            return
        except Exception:
            log.exception("a client frame could not be handled; closing the connection with 1011")
            self._fail(1011, "internal error")
            return
        if out or rest:
            task = asyncio.ensure_future(ws.async_data_received(out, rest or []))
            _pending.add(task)
            task.add_done_callback(_finished)

    def _fail(self, code: int, reason: str) -> None:
        """Out of the hub now; a close frame with ``code``, then the connection is closed."""
        self._left()
        self.fragments = None
        ws: Any = self.websocket
        ws.fail_connection(code, reason)

    def _left(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.hub.forget(conn)

    def eof_received(self) -> bool | None:
        self._left()
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._left()
        self.lost = True
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)
        cast(Any, super()).connection_lost(exc)

    def closed(self) -> asyncio.Future[None]:
        """Done once the TCP connection is gone. What ``ws.wait_for_connection_lost()`` waits for, without the
        shield and the wait_for around it (about 1 KiB per connection while it waits); cancelling the wait
        cancels only this future."""
        if self.gone is None:
            self.gone = asyncio.get_running_loop().create_future()
            if self.lost:
                self.gone.set_result(None)
        return self.gone

    def pause_writing(self) -> None:
        cast(Any, super()).pause_writing()
        if self.conn is not None:
            self.conn.hub.queued(self.conn)

    def resume_writing(self) -> None:
        cast(Any, super()).resume_writing()
        if self.conn is not None:
            self.conn.hub.direct(self.conn)

    def _deliver(self, message: bytes | str) -> None:
        if self.on_text is None:
            if self.early is None:
                self.early = []
            self.early.append(message)
            return
        self.on_text(message)

    def listen(self, on_text: Callable[[bytes | str], None]) -> None:
        """From now on, give each client message to ``on_text`` (and those that came before)."""
        self.on_text = on_text
        early, self.early = self.early, None
        for message in early or ():
            on_text(message)
