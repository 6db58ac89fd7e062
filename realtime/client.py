"""A Python client of ``realtime serve``: typed events over a WebSocket, with resume, and long-polling as a fallback.

::

    async with Client("ws://127.0.0.1:8000/ws", token=get_token, rooms=["post:42"], since=last) as client:
        async for item in client:   # ClientEvent, Reset or Presence
            ...

What it does for you (see docs/protocol.md and docs/guarantees.md):

* connects with ``Authorization: Bearer <token>`` and subscribes to its rooms; after a reconnect it subscribes
  with ``since`` = the last event id it saw, so the server replays what was missed;
* reconnects with jittered exponential backoff (:func:`backoff`) after transient close codes
  (:data:`realtime.errors.CLOSE_CODES`), and raises :class:`ClientClosed` after terminal ones (4001, ...);
  1000 (normal) ends the iteration;
* drops events whose id is at or below the last one seen (ids compare as pairs of integers);
* with a token callable (sync or async), sends a fresh token in an ``auth`` frame before the current one's
  ``exp``, and asks for a new one before reconnecting;
* after ``fallback_after`` WebSocket connections in a row failed (refused, timed out, refused upgrade, closed
  before the subscription was confirmed), long-polls ``GET /poll`` with the same token and position, and
  tries the WebSocket again every ``ws_retry`` seconds, going back to it as soon as it works.

``url`` may be a list: each (re)connection goes to the next one (servers share no session state). The
polling URLs are derived from them (``ws://h:p/ws`` polls ``http://h:p/poll``) unless ``http_url`` says
otherwise. Without ``since``, the first connection starts from live events, so a reconnect before the first
event arrived can miss events: give ``since`` (e.g. the id you stored last time) for a gap-free start.
Sleep, clock and randomness are injectable for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import inspect
import logging
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, cast
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from realtime import events as ev
from realtime.backoff import backoff
from realtime.errors import CLOSE_CODES

log = logging.getLogger("realtime.client")

TokenProvider = Callable[[], str | Awaitable[str]]
ABNORMAL = 1006  # no close frame: the connection was lost
_TRANSIENT = {c.code: c.transient for c in CLOSE_CODES.values()}


# -- items ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientEvent:
    id: str
    type: str
    room: str
    data: Any
    ts: int | None
    raw: str = field(default="", compare=False, repr=False)  # the event frame as received (JSON text)


@dataclass(frozen=True)
class Reset:
    """The history of these rooms after the client's position is gone: refetch their state."""

    rooms: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Presence:
    """An ephemeral ``user:online``, ``user:offline``, ``user:typing`` or ``user:stopped_typing``."""

    type: str
    room: str
    user: str | None


Item = ClientEvent | Reset | Presence


class ClientClosed(Exception):
    """The session ended for good: a terminal close code (int) or a refusal (an error code, str)."""

    def __init__(self, code: int | str, reason: str) -> None:
        super().__init__(f"{code}: {reason}" if reason else str(code))
        self.code = code
        self.reason = reason


class _Retry(Exception):
    """A transient failure of a poll: back off and try again."""


# -- pure helpers ---------------------------------------------------------------------------------------------

def transient(code: int) -> bool:
    """Whether a close code means reconnect and resume. Codes outside the table (1006: the connection was lost,
    1012: service restart, ...) are transient."""
    return _TRANSIENT.get(code, True)


class Cursor:
    """The last event id seen; an id at or below it is a duplicate."""

    def __init__(self, since: str | None = None) -> None:
        self.key: tuple[int, int] | None = None if since is None else ev.parse_id(since)

    @property
    def id(self) -> str | None:
        return None if self.key is None else f"{self.key[0]}-{self.key[1]}"

    def advance(self, event_id: str) -> bool:
        """Move to ``event_id`` when it is newer; whether it was."""
        key = ev.parse_id(event_id)
        if self.key is not None and key <= self.key:
            return False
        self.key = key
        return True

    def jump(self, event_id: str) -> None:
        """Move to ``event_id`` even backwards (a position the server gave after a reset)."""
        self.key = ev.parse_id(event_id)


def http_base(ws_url: str) -> str:
    """The HTTP base of a WebSocket URL: ``ws://h:p/ws`` -> ``http://h:p`` (``wss`` -> ``https``)."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path[:-3] if parts.path.endswith("/ws") else parts.path
    return urlunsplit((scheme, parts.netloc, path.rstrip("/"), "", ""))


def poll_url(base: str, rooms: Sequence[str], since: str | None, wait: float) -> str:
    """``{base}/poll?rooms=a,b&since=...&wait=...`` (no ``since``: from now)."""
    params = {"rooms": ",".join(rooms), **({"since": since} if since is not None else {}),
              "wait": f"{round(wait, 3):g}"}
    return base.rstrip("/") + "/poll?" + urlencode(params, quote_via=quote, safe=":,@")


def token_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT (unverified: only to know when to refresh it), or None."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (IndexError, ValueError):
        return None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


async def http_get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """One HTTP/1.1 GET (``Connection: close``): the status and the body. Bound it with ``asyncio.timeout``."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc.rpartition('@')[2]}", "Accept: application/json",
             "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or (443 if secure else 80),
                                                   ssl=True if secure else None)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """An HTTP/1.1 response: Content-Length, chunked, or up to the end of the connection."""
    status_line = (await reader.readline()).split(None, 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise ValueError("not an HTTP response")
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return int(status_line[1]), b"".join(chunks)
    if "content-length" in headers:
        return int(status_line[1]), await reader.readexactly(int(headers["content-length"]))
    return int(status_line[1]), await reader.read()


# -- the client -----------------------------------------------------------------------------------------------

@dataclass
class _End:
    error: BaseException | None


class Client:
    """See the module's docstring. ``transport`` is ``"websocket"`` or ``"polling"``; ``state`` is
    ``"connecting"``, ``"connected"``, ``"reconnecting"``, ``"polling"`` or ``"closed"``."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: str | TokenProvider | None = None,
        rooms: Sequence[str],
        since: str | None = None,
        on_event: Callable[[Item], Awaitable[None] | None] | None = None,
        http_url: str | Sequence[str] | None = None,
        fallback_after: int = 3,  # WebSocket failures in a row before long-polling
        ws_retry: float = 30.0,  # seconds between WebSocket attempts while polling
        poll_wait: float = 25.0,  # the ``wait`` of each poll (0 to 30)
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        refresh_before: float = 60.0,  # refresh a token this long before its exp (at most half its lifetime)
        connect_timeout: float = 10.0,
        queue_size: int = 1000,  # items read ahead of the consumer; past it, reading pauses
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.ws_urls = [url] if isinstance(url, str) else list(url)
        self.http_urls = ([http_url] if isinstance(http_url, str) else list(http_url)) if http_url is not None \
            else [http_base(u) for u in self.ws_urls]
        if not self.ws_urls or any(urlsplit(u).scheme not in ("ws", "wss") for u in self.ws_urls):
            raise ValueError("url must be one or more ws:// or wss:// URLs")
        if not self.http_urls or any(urlsplit(u).scheme not in ("http", "https") for u in self.http_urls):
            raise ValueError("http_url must be one or more http:// or https:// URLs")
        self.rooms = list(dict.fromkeys(rooms))
        if not self.rooms or not all(ev.valid_room(r) for r in self.rooms):
            raise ValueError(f"rooms must be valid room names, at least one: {self.rooms!r}")
        if not 0 <= poll_wait <= 30:
            raise ValueError("poll_wait must be from 0 to 30 seconds")
        self._cursor = Cursor(since)  # raises ValueError for a malformed since
        self._provider = token if callable(token) else None
        self._token: str | None = token if isinstance(token, str) else None
        self._expires = None if self._token is None else token_expiry(self._token)
        self._on_event = on_event
        self.fallback_after, self.ws_retry, self.poll_wait = fallback_after, ws_retry, poll_wait
        self.backoff_base, self.backoff_cap, self.refresh_before = backoff_base, backoff_cap, refresh_before
        self.connect_timeout = connect_timeout
        self._sleep, self._clock, self._rng = sleep, clock, rng
        self._queue: asyncio.Queue[Item | _End] = asyncio.Queue(queue_size)
        self._task: asyncio.Task[None] | None = None
        self._end: _End | None = None
        self._ws_turn = self._http_turn = self._refs = 0
        self.state = "connecting"
        self.transport = "websocket"
        self.url: str | None = None  # the server of the current (or last) WebSocket connection
        self.connections = 0  # WebSocket sessions whose subscription was confirmed
        self.last_id: str | None = None  # the id of the last event handed to the application

    # -- public API --

    @property
    def position(self) -> str | None:
        """The id the client resumes from: the last event id it received (or the server's position)."""
        return self._cursor.id

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Stop; an iteration in progress ends (items not yet taken are dropped)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state = "closed"
        if self._end is None:
            self._end = _End(None)
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(self._end)  # wakes a reader waiting in __anext__

    async def __aenter__(self) -> Client:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[Item]:
        self.start()
        return self

    async def __anext__(self) -> Item:
        if self._end is None:
            item = await self._queue.get()
            if not isinstance(item, _End):
                if isinstance(item, ClientEvent):
                    self.last_id = item.id
                return item
            self._end = item
        if self._end.error is not None:
            raise self._end.error
        raise StopAsyncIteration

    async def wait(self) -> None:
        """With ``on_event``: until the client stops (raises what stopped it)."""
        async for _ in self:
            pass

    # -- the loop --

    async def _run(self) -> None:
        try:
            await self._main()
        except Exception as exc:
            self.state = "closed"
            await self._queue.put(_End(exc))
        else:
            self.state = "closed"
            await self._queue.put(_End(None))

    def _delays(self) -> Iterator[float]:
        return backoff(self.backoff_base, self.backoff_cap, self._rng)

    async def _main(self) -> None:
        failures = 0
        delays = self._delays()
        while True:
            ws = await (self._poll_until_websocket() if failures >= self.fallback_after else self._open())
            if ws is None:
                failures += 1
                self.state = "reconnecting"
                if failures < self.fallback_after:
                    await self._sleep(next(delays))
                continue
            subscribed, code, reason = await self._session(ws)
            if subscribed:
                failures, delays = 0, self._delays()
            else:
                failures += 1
            if code == CLOSE_CODES["normal"].code:
                return
            if not transient(code) or (code == CLOSE_CODES["token_expired"].code and self._provider is None):
                raise ClientClosed(code, reason)
            if code == CLOSE_CODES["token_expired"].code:
                self._token = None  # get a new one before reconnecting
            log.info("connection to %s closed (%s %s); reconnecting", self.url, code, reason)
            self.state = "reconnecting"
            await self._sleep(next(delays))

    async def _open(self) -> ClientConnection | None:
        url = self.ws_urls[self._ws_turn % len(self.ws_urls)]
        self._ws_turn += 1
        token = await self._current_token()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            ws = await connect(url, additional_headers=headers, open_timeout=self.connect_timeout,
                               close_timeout=self.connect_timeout, compression=None)
        except (OSError, WebSocketException) as exc:
            log.info("cannot connect to %s: %s", url, exc)
            return None
        self.url = url
        return ws

    async def _session(self, ws: ClientConnection) -> tuple[bool, int, str]:
        """Subscribe on an open connection and read it until it closes: (subscribed, close code, reason)."""
        ref = self._ref()
        since = self._cursor.id
        subscribed = False
        code, reason = ABNORMAL, "connection lost"
        refresher = asyncio.get_running_loop().create_task(self._refresh(ws)) if self._provider else None
        try:
            await ws.send(orjson.dumps({"op": "subscribe", "rooms": self.rooms, "ref": ref,
                                        **({"since": since} if since else {})}).decode())
            while True:
                message = await ws.recv()
                try:
                    msg = orjson.loads(message)
                except orjson.JSONDecodeError:
                    continue
                op = msg.get("op") if isinstance(msg, dict) else None
                if op == "event":
                    await self._event(msg, message if isinstance(message, str) else message.decode())
                elif op == "subscribed" and msg.get("ref") == ref:
                    subscribed = True
                    self.connections += 1
                    self.state, self.transport = "connected", "websocket"
                    log.info("subscribed on %s from %s", self.url, since or "now")
                elif op == "reset":
                    await self._emit(Reset(tuple(msg.get("rooms") or ()), str(msg.get("reason"))))
                elif op == "presence" and "type" in msg:
                    await self._presence(msg)
                elif op == "error" and self._refused(msg):
                    reason = str(msg.get("message", "refused"))
                    break  # closed below; reconnect (with code 1006: lost)
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                code, reason = exc.rcvd.code, exc.rcvd.reason
        finally:
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            with contextlib.suppress(Exception):
                await ws.close()
        return subscribed, code, reason

    def _refused(self, msg: dict[str, Any]) -> bool:
        """An error frame: raises ClientClosed when retrying cannot help; whether to reconnect."""
        code, message = str(msg.get("code")), str(msg.get("message", ""))
        if code == "rate_limited":
            return False
        if code == "unavailable":
            log.warning("server: %s; reconnecting", message)
            return True
        raise ClientClosed(code, message)

    # -- long-polling --

    async def _poll_until_websocket(self) -> ClientConnection:
        """Long-poll until a WebSocket connection opens again (tried every ``ws_retry`` seconds)."""
        log.warning("WebSocket unreachable %d times in a row; long-polling", self.fallback_after)
        self.state = self.transport = "polling"
        next_try = self._clock() + self.ws_retry
        delays = self._delays()
        while True:
            if self._clock() >= next_try:
                ws = await self._open()
                if ws is not None:
                    return ws
                self.state = "polling"
                next_try = self._clock() + self.ws_retry
            try:
                await self._poll_round(max(0.0, min(self.poll_wait, next_try - self._clock())))
            except (OSError, EOFError, ValueError, _Retry) as exc:
                log.info("poll failed: %s", exc or type(exc).__name__)
                self._http_turn += 1
                await self._sleep(next(delays))
                continue
            delays = self._delays()

    async def _poll_round(self, wait: float) -> None:
        reset = await self._take(await self._poll(self.rooms, self._cursor.id, wait))
        if not reset:
            return
        # History does not cover our position in those rooms: polling from it again would answer with the same
        # reset at once. Take the server's current position for them, catch the other rooms up, then go on.
        now = await self._poll(sorted(reset), None, 0)
        others = [r for r in self.rooms if r not in reset]
        if others:
            await self._take(await self._poll(others, self._cursor.id, 0))
            self._cursor.advance(str(now["next"]))
        else:
            self._cursor.jump(str(now["next"]))

    async def _poll(self, rooms: Sequence[str], since: str | None, wait: float) -> dict[str, Any]:
        url = poll_url(self.http_urls[self._http_turn % len(self.http_urls)], rooms, since, wait)
        token = await self._current_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with asyncio.timeout(wait + self.connect_timeout):
            status, body = await http_get(url, headers)
        if status == 200:
            reply = orjson.loads(body)
            if not isinstance(reply, dict):
                raise ValueError("the poll's answer is not a JSON object")
            return reply
        try:
            error = orjson.loads(body)["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = str(status), body[:200].decode(errors="replace")
        if code == "token_expired" and self._provider is not None:
            self._token = None
            raise _Retry("token expired")
        if status in (400, 401, 403, 404):
            raise ClientClosed(code, message)
        raise _Retry(f"HTTP {status} {code}")

    async def _take(self, reply: dict[str, Any]) -> set[str]:
        """Hand a poll's resets and events on; the rooms reset."""
        reset: set[str] = set()
        for r in reply.get("resets") or ():
            rooms = tuple(str(x) for x in r.get("rooms") or ())
            reset.update(rooms)
            await self._emit(Reset(rooms, str(r.get("reason"))))
        for e in reply.get("events") or ():
            if isinstance(e, dict):
                await self._event(e, orjson.dumps(e).decode())
        with contextlib.suppress(ev.BadEventId):
            self._cursor.advance(cast(str, reply.get("next")))  # checked by parse_id
        return reset

    # -- items --

    async def _event(self, msg: dict[str, Any], raw: str) -> None:
        try:
            new = self._cursor.advance(cast(str, msg.get("id")))  # checked by parse_id
        except ev.BadEventId:
            log.warning("event without a valid id dropped: %.200s", raw)
            return
        if new:
            ts = msg.get("ts")
            await self._emit(ClientEvent(str(msg["id"]), str(msg.get("type")), str(msg.get("room")), msg.get("data"),
                                         ts if isinstance(ts, int) else None, raw))

    async def _presence(self, msg: dict[str, Any]) -> None:
        data = msg.get("data")
        user = data.get("userId") if isinstance(data, dict) else None
        await self._emit(Presence(str(msg["type"]), str(msg.get("room")), None if user is None else str(user)))

    async def _emit(self, item: Item) -> None:
        if self._on_event is None:
            await self._queue.put(item)
            return
        if isinstance(item, ClientEvent):
            self.last_id = item.id
        result = self._on_event(item)
        if inspect.isawaitable(result):
            await result

    # -- tokens --

    def _ref(self) -> str:
        self._refs += 1
        return f"c{self._refs}"

    async def _renew(self) -> str:
        assert self._provider is not None
        value = self._provider()
        token = await value if inspect.isawaitable(value) else value
        self._token, self._expires = token, token_expiry(token)
        return token

    async def _current_token(self) -> str | None:
        if self._provider is not None and (self._token is None or (
                self._expires is not None and self._expires - self._clock() <= self._margin())):
            return await self._renew()
        return self._token

    def _margin(self) -> float:
        """How long before exp to refresh: ``refresh_before``, or half the token's remaining life if shorter."""
        left = (self._expires or 0.0) - self._clock()
        return max(min(self.refresh_before, left / 2), 0.0)

    async def _refresh(self, ws: ClientConnection) -> None:
        """Send a fresh token in an ``auth`` frame before the current one expires, for as long as the session."""
        while self._expires is not None:
            await self._sleep(max(self._expires - self._clock() - self._margin(), 1.0))
            try:
                token = await self._renew()
            except Exception as exc:
                log.warning("token refresh failed: %s", exc)
                continue
            try:
                await ws.send(orjson.dumps({"op": "auth", "token": token, "ref": self._ref()}).decode())
            except ConnectionClosed:
                return  # the session is over; the next one starts with this token


# -- realtime tail --------------------------------------------------------------------------------------------

def _line(item: Item) -> str:
    if isinstance(item, ClientEvent):
        return item.raw
    if isinstance(item, Reset):
        return orjson.dumps({"op": "reset", "rooms": list(item.rooms), "reason": item.reason}).decode()
    return orjson.dumps({"op": "presence", "type": item.type, "room": item.room, "user": item.user}).decode()


async def tail(url: str, rooms: Sequence[str], *, token: str | None = None, since: str | None = None,
               out: TextIO = sys.stdout) -> int:
    """Print every item as a JSON line until SIGINT or SIGTERM (0), or a terminal close (1)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def printer(client: Client) -> None:
        async for item in client:
            out.write(_line(item) + "\n")
            out.flush()

    try:
        async with Client(url, token=token, rooms=rooms, since=since) as client:
            printing = asyncio.ensure_future(printer(client))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({printing, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in (stopping, printing):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return 0
    except ClientClosed as exc:
        print(f"realtime tail: the server ended the session: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def tail_command(args: argparse.Namespace) -> int:
    """``realtime tail``, from its parsed arguments."""
    token = args.token
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            print(f"realtime tail: ${args.token_env} is not set", file=sys.stderr)
            return 2
    try:
        return asyncio.run(tail(args.url, args.room, token=token, since=args.since))
    except ValueError as exc:
        print(f"realtime tail: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the handlers were installed
        return 0
