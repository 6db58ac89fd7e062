"""The door: what a connection may hold before it is a WebSocket, so that slow or idle requests cannot use
up the server's file descriptors (slowloris).

* **A whole head in time.** A request's head must arrive whole within ``REALTIME_HEAD_TIMEOUT`` seconds of
  its first byte. Sanic's request timeout restarts on every byte, so a client trickling one byte a second
  kept a connection for ever; here the clock of a head in progress is not wound back by its bytes.
* **Every connection counts.** From the moment it is accepted, a connection counts toward its address's
  limit (``REALTIME_MAX_CONNECTIONS_PER_ADDRESS``): half-open requests, idle keep-alive connections,
  long-polls and SSE streams, and WebSockets (which the hub counts from their upgrade on). One over the
  limit is answered at once with ``429 too_many_connections`` and closed, before it can hold anything.
  Connections from a trusted proxy (``REALTIME_TRUSTED_PROXIES``) are not counted here: the proxy speaks
  for many clients, which the hub tells apart by ``X-Forwarded-For`` once the request's head is read.

:class:`Door` is the count (no I/O); :class:`GuardedProtocol` is Sanic's WebSocket-capable protocol with
the door in front. It relies on Sanic's ``http.stage`` and ``_time``, read for the version in
``lean.WRITTEN_FOR`` (tests/e2e/test_door.py checks the behaviour end to end).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any, cast

import orjson
from sanic.http.constants import Stage
from sanic.server.protocols.websocket_protocol import WebSocketProtocol

from realtime.server.addresses import Network

log = logging.getLogger("realtime.server")


class Door:
    """Connections per address that are not (yet) WebSockets, against the per-address limit."""

    def __init__(self, limit: int, trusted: tuple[Network, ...], websockets: Callable[[str], int],
                 on_refused: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.trusted = trusted
        self.websockets = websockets  # the hub's count of an address's WebSockets
        self.on_refused = on_refused or (lambda: None)
        self.count: dict[str, int] = {}

    def admit(self, peer: str) -> tuple[bool, str | None]:
        """A new connection from ``peer``: whether it may in (False: it is over the limit, refuse it), and the
        key it is counted under (None: not counted, a trusted proxy)."""
        if self._trusted(peer):
            return True, None
        n = self.count.get(peer, 0)
        if n + self.websockets(peer) >= self.limit:
            self.on_refused()
            return False, None
        self.count[peer] = n + 1
        return True, peer

    def release(self, key: str | None) -> None:
        """The connection counted under ``key`` closed, or became a WebSocket (which the hub counts)."""
        if key is None:
            return
        n = self.count.get(key, 0) - 1
        if n > 0:
            self.count[key] = n
        else:
            self.count.pop(key, None)

    def _trusted(self, peer: str) -> bool:
        if not self.trusted:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address.version == net.version and address in net for net in self.trusted)


REFUSED = orjson.dumps({"error": {"code": "too_many_connections",
                                  "message": "too many connections from this address"}})
REFUSAL = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
           b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(REFUSED), REFUSED))


class GuardedProtocol(WebSocketProtocol):
    """Sanic's protocol with the door in front (see the module's docstring)."""

    __slots__ = ("counted",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counted: str | None = None

    def connection_made(self, transport: Any) -> None:
        cast(Any, super()).connection_made(transport)
        door: Door | None = getattr(getattr(self.app.ctx, "state", None), "door", None)
        peer = transport.get_extra_info("peername")
        if door is None or not isinstance(peer, tuple) or not peer:
            return  # a unix socket, or the server is not started: nothing to count by
        admitted, self.counted = door.admit(str(peer[0]))
        if not admitted:
            transport.write(REFUSAL)
            transport.close()

    def data_received(self, data: bytes) -> None:
        http = self.http
        if self.websocket is None and http is not None and http.stage is Stage.REQUEST:
            # A head in progress: its deadline (Sanic's request timeout) runs from its first byte.
            me = cast(Any, self)
            started = me._time
            cast(Any, super()).data_received(data)
            me._time = started
            return
        cast(Any, super()).data_received(data)

    async def websocket_handshake(self, request: Any, subprotocols: Any = None) -> Any:
        ws = await super().websocket_handshake(request, subprotocols)
        key, self.counted = self.counted, None
        door: Door | None = getattr(getattr(self.app.ctx, "state", None), "door", None)
        if door is not None:
            door.release(key)  # a WebSocket now: the hub counts it
        return ws

    def connection_lost(self, exc: Exception | None) -> None:
        key, self.counted = self.counted, None
        if key is not None:
            door: Door | None = getattr(getattr(self.app.ctx, "state", None), "door", None)
            if door is not None:
                door.release(key)
        cast(Any, super()).connection_lost(exc)
