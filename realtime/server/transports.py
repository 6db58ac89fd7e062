"""Long-polling (``GET /poll``) and Server-Sent Events (``GET /sse``): the same rooms, rules, ids and
payloads as the WebSocket, served by any instance; and :func:`collect`, the replay from history that every
transport uses.

Both authenticate like the WebSocket (``Authorization: Bearer``, or ``access_token`` in the query for
clients that cannot set headers, such as ``EventSource``), answer a position that history no longer covers
with a ``reset``, and return the very bytes the WebSocket sends for each event. They have the WebSocket's
protections too:

* a long-poll in flight and an SSE stream count as connections of their user and address, with the
  WebSocket connections, against ``REALTIME_MAX_CONNECTIONS_PER_USER`` and ``..._PER_ADDRESS`` (past them:
  429 ``too_many_connections``);
* the token's ``exp`` ends them: an SSE stream gets a final ``close`` event (4003 ``token_expired``) and
  nothing after it; a long-poll still waiting answers 401 ``token_expired``;
* an SSE stream's unsent data is bounded like a WebSocket connection's (``REALTIME_QUEUE_BYTES`` and
  ``REALTIME_QUEUE_MESSAGES``): past the bound it is closed as slow (a final ``close`` event, 4008, behind
  what is queued, and the connection cut if that is not read within the close timeout);
* on shutdown a long-poll answers at once with what it has, and an SSE stream ends with a ``close`` event
  (1001 ``going_away``) and a ``retry`` hint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError
from sanic import Request
from sanic.response import HTTPResponse, raw

from realtime import events as ev
from realtime.auth import Principal
from realtime.errors import CLOSE_CODES, ClientError
from realtime.protocol import parse_since, readable
from realtime.resume import Spans, already_had, covered
from realtime.server.addresses import client_address
from realtime.server.budget import Hold, ReplayBusy, ReplayMemory, ReplayTooBig

log = logging.getLogger("realtime.server")

MAX_WAIT = 30.0
SSE_HEARTBEAT = 15.0
SSE_RETRY = 2000  # ms: the reconnection delay an SSE stream announces when it starts
GOING_AWAY_RETRY = (1000, 5000)  # ms: the range of the (random) reconnection delay announced at shutdown
PAGE = 128 * 1024  # bytes a replay reads from Redis per round trip, for all its rooms
ENTRY_EXTRA = 64  # bytes counted per event held, on top of its payload (the objects around it)
READ_EXTRA = ENTRY_EXTRA + 32  # per envelope read: its payload adds "op" and "room" (11 bytes; 31 without "ts")
CHUNK = 64 * 1024  # bytes of replayed events an SSE stream writes at a time
# Reads of history again during one replay (WebSocket or SSE), each when the live events kept meanwhile passed the
# connection's bounds, that find no fewer events than the last read (the client does not catch up), before the
# replay closes the connection as slow.
REREADS = 3


def event_payload(envelope: dict[str, Any], room: str) -> bytes:
    """An event as every transport sends it (the WebSocket frame's text)."""
    return orjson.dumps({"op": "event", "id": envelope["id"], "type": envelope["type"], "room": room,
                         "data": envelope.get("data"), "ts": envelope.get("ts")})


def _label(event_rooms: Any, wanted: set[str], default: str) -> str:
    """The room an event is labelled with for a client of ``wanted`` rooms: the first of the event's own rooms
    that the client asked for, as live delivery labels it (whichever room's history it was read from)."""
    if isinstance(event_rooms, list):
        for room in event_rooms:
            if room in wanted:
                return str(room)
    return default


def _entry_key(entry_id: bytes) -> tuple[int, int]:
    """A stream entry's id as Redis gives it (always ``<ms>-<seq>``), as a pair of integers: what
    :func:`realtime.events.parse_id` gives, without the checks a client's text needs."""
    head, _, tail = entry_id.partition(b"-")
    return int(head), int(tail)


# -- the replay -----------------------------------------------------------------------------------------------

@dataclass
class Collected:
    events: list[tuple[tuple[int, int], str, bytes]] = field(default_factory=list)  # (id, room, payload)
    resets: dict[str, list[str]] = field(default_factory=dict)  # reason -> rooms
    replayed: set[str] = field(default_factory=set)
    head: tuple[int, int] = (0, 0)  # the global stream's newest id when the replay was planned


async def collect(history: Any, rooms: tuple[str, ...], since: str, limit: int, deep: Any = None, *,
                  memory: ReplayMemory | Hold, had: Spans | None = None) -> Collected:
    """The events of ``rooms`` after ``since`` from their history, merged by id, each once; and which rooms
    need a reset instead. With ``deep`` (a :class:`~realtime.server.deep.DeepReplay`), what Redis trimmed is
    read back from MongoDB's oplog where it still holds it. ``had``: what the connection has been sent of its
    other rooms (:meth:`~realtime.server.hub.Hub.delivered`); an event of one of them in its span is left out.

    What the replay reads is held against ``memory``, the process's replay budget: given the budget itself,
    until this returns (for a caller that hands the events on without awaiting anything); given a
    :class:`~realtime.server.budget.Hold`, until the caller leaves it. Raises
    :class:`~realtime.server.budget.ReplayBusy` when other replays hold the budget; a replay that alone needs
    more than the budget gives its rooms a ``too_far_behind`` reset, as one of more than ``limit`` events."""
    if isinstance(memory, Hold):
        return await _collect(history, rooms, since, limit, deep, memory, had or {})
    async with memory.hold() as hold:
        return await _collect(history, rooms, since, limit, deep, hold, had or {})


async def _collect(history: Any, rooms: tuple[str, ...], since: str, limit: int, deep: Any, hold: Hold,
                   had: Spans) -> Collected:
    out = Collected()
    wanted = set(rooms)
    stream = await history.state()
    out.head = max(stream.last or (0, 0), stream.last_reset or (0, 0))
    info = await history.room_info(list(rooms))
    readable_rooms = []
    deep_rooms = []
    for room in rooms:
        ok, why = covered(since, info[room], stream)
        if ok:
            readable_rooms.append(room)
        elif why == "history_trimmed" and deep is not None:
            deep_rooms.append(room)
        else:
            out.resets.setdefault(why, []).append(room)
    merged: dict[tuple[int, int], tuple[str, bytes]] = {}
    left: set[tuple[int, int]] = set()  # left out: the connection has them (see had)
    base = hold.size
    too_big = False
    try:
        if deep_rooms:
            outcome = await deep.replay(deep_rooms, since, await history.first_ids(deep_rooms), label=rooms, had=had)
            if outcome.events is None:
                out.resets.setdefault(outcome.reason, []).extend(deep_rooms)
            else:
                await hold.grow(sum(len(payload) + ENTRY_EXTRA for _, _, payload in outcome.events))
                readable_rooms += deep_rooms  # and the rest of their history from Redis
                for key, room, payload in outcome.events:
                    merged[key] = (room, payload)
        found = await _read(history, readable_rooms, since, limit, hold)
        kept = sum(len(payload) + ENTRY_EXTRA for _, payload in merged.values())
        for room in readable_rooms:
            entries = found.pop(room)
            if len(entries) > limit:
                out.resets.setdefault("too_far_behind", []).append(room)
                continue
            out.replayed.add(room)
            entries.reverse()
            while entries:  # each envelope goes as its payload comes
                entry_id, raw_envelope = entries.pop()
                key = _entry_key(entry_id)
                if key not in merged and key not in left:
                    envelope = orjson.loads(raw_envelope)
                    if had and already_had(key, envelope.get("rooms"), had):
                        left.add(key)
                        continue
                    label = _label(envelope.get("rooms"), wanted, room)
                    payload = event_payload(envelope, label)
                    merged[key] = (label, payload)
                    kept += len(payload) + ENTRY_EXTRA
        if len(merged) <= limit:  # hold what is kept (an envelope of an unusual shape may need a little more)
            if base + kept > hold.size:
                await hold.grow(base + kept - hold.size)
            hold.shrink(base + kept)
    except ReplayTooBig:
        too_big = True
    if too_big or len(merged) > limit:
        merged.clear()
        hold.shrink(base)
        reset = {room for why in out.resets.values() for room in why}
        out.resets.setdefault("too_far_behind", []).extend(sorted(set(rooms) - reset))
        out.replayed.clear()
        return out
    # One moment for every room: the rooms are read one after the other, in rounds, while events go on being
    # published; what came after the stream's head as it was when the replay began is left to the live path
    # (else a quiet room read early and a busy room read late would leave a hole in the quiet one).
    cut = stream.last or (0, 0)
    for key in sorted(merged):
        if key > cut:
            break
        room, payload = merged[key]
        out.events.append((key, room, payload))
    return out


async def _read(history: Any, rooms: list[str], since: str, limit: int, hold: Hold
                ) -> dict[str, list[tuple[bytes, bytes]]]:
    """Each room's history after ``since``, at most ``limit + 1`` entries per room, read in rounds of at most
    PAGE bytes for all the rooms still unfinished (and, for a room whose next entry is larger than its share,
    that entry's size), each reserved from ``hold`` before it is read."""
    found: dict[str, list[tuple[bytes, bytes]]] = {room: [] for room in rooms}
    after = dict.fromkeys(rooms, since)
    need = dict.fromkeys(rooms, 0)  # the size of an entry that did not fit the room's last share
    sizes = dict.fromkeys(rooms, 0)  # the bytes of the entries read, to tell Redis what size to expect
    reading = list(rooms)
    while reading:
        room_left = hold.memory.limit - hold.size
        share = max(min(PAGE, room_left) // len(reading), 1)
        reads = {room: (after[room], max(share, need[room]), limit + 1 - len(found[room]),
                        sizes[room] // len(found[room]) if found[room] else 0) for room in reading}
        before = hold.size
        await hold.grow(sum(read[1] for read in reads.values()))
        try:
            pages = await history.pages(reads, READ_EXTRA)
        except BaseException:
            hold.shrink(before)
            raise
        got = 0
        for room, (entries, next_size) in pages.items():
            found[room] += entries
            size = sum(len(envelope) + READ_EXTRA for _, envelope in entries)
            sizes[room] += size
            got += size
            if entries:
                after[room] = entries[-1][0].decode()
            need[room] = next_size
            if not next_size or len(found[room]) > limit:
                reading.remove(room)
        hold.shrink(before + got)
    return found


# -- HTTP clients in flight -------------------------------------------------------------------------------------

class HttpClients:
    """The long-polls and SSE streams in flight in this process: counted, with the hub's WebSocket connections,
    against the per-user and per-address limits while they last; told first when the server stops."""

    def __init__(self, hub: Any, max_per_user: int, max_per_address: int) -> None:
        self.hub = hub
        self.max_per_user = max_per_user
        self.max_per_address = max_per_address
        self.open: set[PollWait | SseStream] = set()
        self.stopping = False
        self._idle: asyncio.Event | None = None

    @contextlib.contextmanager
    def admitted(self, client: PollWait | SseStream, user: str | None, address: str) -> Iterator[None]:
        """While in the block: counted as a connection of ``user`` and ``address``, and fed the events of its
        rooms. Raises ``too_many_connections`` (at the door) past a limit."""
        hub = self.hub
        if hub.by_address.get(address, 0) >= self.max_per_address:
            hub.metrics.refused.inc(reason="address")
            raise ClientError("too_many_connections", "too many connections from this address")
        if user is not None and hub.by_user.get(user, 0) >= self.max_per_user:
            hub.metrics.refused.inc(reason="user")
            raise ClientError("too_many_connections", "too many connections for this user")
        hub.count(user, address)
        self.open.add(client)
        hub.listen(client)
        try:
            yield
        finally:
            hub.unlisten(client)
            self.open.discard(client)
            hub.uncount(user, address)
            if not self.open and self._idle is not None:
                self._idle.set()

    async def close_all(self, grace: float) -> None:
        """Shutdown: every long-poll answers with what it has, every SSE stream ends (``going_away``); wait up
        to ``grace`` seconds for their handlers to finish."""
        self.stopping = True
        for client in list(self.open):
            client.going_away()
        if self.open:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(grace, 0.01)):
                    await self._idle.wait()


# -- long-polling -------------------------------------------------------------------------------------------------

class PollWait:
    """A long-poll waiting for the events of its rooms. The hub feeds it each event of those rooms, once; it
    keeps them (within the per-connection bounds) for the answer it gives if the server stops meanwhile."""

    __slots__ = ("after", "events", "full", "last", "max_bytes", "max_messages", "rooms", "size", "stopping",
                 "woke")

    def __init__(self, rooms: tuple[str, ...], after: tuple[int, int], max_bytes: int, max_messages: int) -> None:
        self.rooms = rooms
        self.after = after  # the poll's position: only what comes after it is kept
        self.max_bytes, self.max_messages = max_bytes, max_messages
        self.last = (0, 0)
        self.events: list[tuple[tuple[int, int], str, bytes]] = []
        self.size = 0
        self.full = False  # a reset came, or the bounds were reached: what is kept stops there
        self.stopping = False
        self.woke = asyncio.Event()

    def feed(self, key: tuple[int, int], room: str, payload: bytes) -> None:
        if key <= self.last:
            return  # the same event through another of its rooms
        self.last = key
        if key <= self.after:
            return  # (this server's reader is behind the position the client got elsewhere)
        if not self.full:
            if len(self.events) >= self.max_messages or self.size + len(payload) > self.max_bytes:
                self.full = True
            else:
                self.events.append((key, room, payload))
                self.size += len(payload)
        self.woke.set()

    def reset(self, key: tuple[int, int], reason: str) -> None:
        self.full = True  # (the next poll reads the reset from history)
        self.woke.set()

    def going_away(self) -> None:
        self.stopping = True
        self.woke.set()

    def kept(self) -> Collected:
        """What came live since the poll began waiting (a gap-free run of events after its position)."""
        return Collected(events=self.events)


def _poll_body(got: Collected, since: str) -> bytes:
    events = b",".join(payload for _, _, payload in got.events)
    nxt = since
    if got.events:
        k = got.events[-1][0]
        nxt = f"{k[0]}-{k[1]}"
    if got.resets:  # those rooms go on from now: next is past the reset (else polling on repeats it for ever)
        k = max(got.head, got.events[-1][0]) if got.events else got.head
        nxt = f"{k[0]}-{k[1]}"
    resets = [{"rooms": sorted(rooms), "reason": why} for why, rooms in got.resets.items()]
    return b'{"events":[' + events + b'],"resets":' + orjson.dumps(resets) + b',"next":' + orjson.dumps(nxt) + b"}"


async def _answer(got: Collected, since: str, hold: Hold) -> bytes:
    """The poll's answer, built while the events are held: its bytes are held too (or, when the two would not
    fit the whole budget, the rooms replayed get a ``too_far_behind`` reset instead)."""
    size = sum(len(payload) + 1 for _, _, payload in got.events) + 64 + sum(
        len(why) + sum(len(room) + 3 for room in rooms) + 32 for why, rooms in got.resets.items())
    try:
        await hold.grow(size)
    except ReplayTooBig:
        got = Collected(resets={**got.resets, "too_far_behind": [*got.resets.get("too_far_behind", []),
                                                                 *sorted(got.replayed)]}, head=got.head)
    body = _poll_body(got, since)
    hold.shrink(len(body))  # (the events go once the caller lets go of them)
    return body


async def poll(state: Any, request: Request) -> HTTPResponse | None:
    headers = _cors(state, request)
    try:
        principal = _principal(state, request)
        rooms = _rooms(state, request, principal)
        wait = _wait(request)
        since_arg = request.args.get("since")
        since = parse_since(since_arg) if since_arg is not None else (await state.history.last_id()).decode()
    except ClientError as exc:
        return _error(state, exc, headers)
    except (RedisError, OSError):
        return _error(state, ClientError("unavailable", "history is unreachable; retry"), headers)
    cfg = state.cfg
    waiter = PollWait(rooms, ev.parse_id(since), cfg.queue_bytes, cfg.queue_messages)
    expires = _expires(principal)
    try:
        with state.http.admitted(waiter, principal.user if principal else None, _address(state, request)):
            async with state.replays.hold() as hold:
                got = await collect(state.history, rooms, since, cfg.replay_limit, state.deep, memory=hold)
                if not got.events and not got.resets and not state.http.stopping:
                    hold.shrink(0)
                    left = expires - time.time()  # of the token's life
                    if min(wait, left) > 0 and not waiter.events:
                        try:
                            async with asyncio.timeout(min(wait, left)):
                                await waiter.woke.wait()
                        except TimeoutError:
                            if left <= wait:  # (the timer may fire a hair before the clock reaches exp)
                                raise ClientError("token_expired", "the token expired while the poll waited") from None
                    if waiter.stopping:
                        got = waiter.kept()  # at once, without reading history again
                    elif waiter.events or waiter.full:
                        got = await collect(state.history, rooms, since, cfg.replay_limit, state.deep, memory=hold)
                if time.time() >= expires:
                    raise ClientError("token_expired", "the token has expired")
                body = await _answer(got, since, hold)
                del got
                state.hub.metrics.polls.inc()
                response = await request.respond(raw(body, content_type="application/json",
                                                     headers={**headers, "Cache-Control": "no-store"}))
                await response.send()  # the answer is in the transport before the replay lets go of it
    except ClientError as exc:
        return _error(state, exc, headers)
    except ReplayBusy:
        return _error(state, ClientError("unavailable", "too many replays at once; retry"), headers)
    except (RedisError, OSError):
        return _error(state, ClientError("unavailable", "history is unreachable; retry"), headers)
    return None


# -- Server-Sent Events -------------------------------------------------------------------------------------------

def _sse_event(key: tuple[int, int], payload: bytes) -> bytes:
    return b"id: %d-%d\ndata: %s\n\n" % (key[0], key[1], payload)


def _sse_reset(rooms: list[str] | tuple[str, ...], reason: str) -> bytes:
    return b"event: reset\ndata: " + orjson.dumps({"op": "reset", "rooms": sorted(rooms), "reason": reason}) + b"\n\n"


def sse_close(name: str, retry: int | None = None) -> bytes:
    """The last event of a stream the server ends: ``close``, with the WebSocket's close code and name."""
    code = CLOSE_CODES[name]
    hint = b"retry: %d\n" % retry if retry is not None else b""
    return hint + b"event: close\ndata: " + orjson.dumps({"op": "close", "code": code.code, "reason": name}) + b"\n\n"


def sse_error(code: str, message: str) -> bytes:
    return b"event: error\ndata: " + orjson.dumps({"op": "error", "code": code, "message": message}) + b"\n\n"


class SseStream:
    """One SSE response, written as a WebSocket connection is: the hub feeds it each event of its rooms, once,
    and it writes it to the transport at once (no task, no queue of its own), closing the stream as slow when
    the transport holds more than ``max_bytes`` unsent, or has held unsent bytes for more than ``max_messages``
    writes in a row. Until :meth:`live`, while the replay is read, live events are kept aside and written after
    it, but for those it already sent; past the same bounds no more are kept, and :attr:`spilled` says from which
    event on the rooms' history has to be read again (see :meth:`replayed`)."""

    __slots__ = ("backlog", "chunked", "done", "ended", "expires", "final", "held", "held_size", "hub", "last",
                 "max_bytes", "max_messages", "rooms", "spilled", "transport")

    def __init__(self, rooms: tuple[str, ...], hub: Any, max_bytes: int, max_messages: int, expires: float) -> None:
        self.rooms = rooms
        self.hub = hub
        self.max_bytes, self.max_messages = max_bytes, max_messages
        self.expires = expires
        self.last = (0, 0)
        self.held: list[tuple[tuple[int, int] | None, bytes]] | None = []  # (id, or None for a reset; text)
        self.held_size = 0
        self.spilled: tuple[int, int] | None = None  # the first live event not kept aside, past the bounds
        self.transport: Any = None
        self.chunked = True
        self.backlog = 0  # writes while the transport held unsent bytes
        self.ended: str | None = None  # why the stream ended (a close name, "error", or "gone": the client left)
        self.final: bytes | None = None  # the last event, until it is written
        self.done = asyncio.Event()

    # the hub's side
    def feed(self, key: tuple[int, int], room: str, payload: bytes) -> None:
        if key <= self.last or self.ended:
            return  # the same event through another of its rooms
        self.last = key
        if time.time() >= self.expires:
            self.end("token_expired")  # nothing after exp
            return
        self._out(key, _sse_event(key, payload), key)

    def reset(self, key: tuple[int, int], reason: str) -> None:
        if not self.ended:
            self._out(None, _sse_reset(self.rooms, reason), key)

    def going_away(self) -> None:
        self.end("going_away", retry=random.randint(*GOING_AWAY_RETRY))

    # the handler's side
    def attach(self, transport: Any, chunked: bool) -> None:
        """The response has started: from now on, write to ``transport`` (as chunks when ``chunked``)."""
        self.transport, self.chunked = transport, chunked
        self._close()  # (when it ended before the response started)

    def replayed(self, got: Collected) -> tuple[int, int] | None:
        """Write a replay, then what came live meanwhile (but for what the replay sent); live from then on.

        When live events passed the bounds meanwhile, those kept before the first that was not are written, live
        events are kept aside again from now, and the id of that first one is returned: the rooms' history is to be
        read again from it (and given here again). None once live (or ended)."""
        if self.ended:
            return None
        for why, rooms in got.resets.items():
            self._write(_sse_reset(rooms, why), 1)
        upto = (0, 0)
        chunk: list[bytes] = []
        size = 0
        for key, _, payload in got.events:
            chunk.append(_sse_event(key, payload))
            size += len(chunk[-1])
            upto = key
            if size >= CHUNK:
                self._write(b"".join(chunk), len(chunk))
                chunk, size = [], 0
                if self.ended:
                    return
        if chunk:
            self._write(b"".join(chunk), len(chunk))
        if got.resets and not self.ended:
            # An id without data moves EventSource's Last-Event-ID past the reset, without an event: a reconnect
            # then goes on from here rather than being told the same reset again.
            self._write(b"id: %d-%d\n\n" % max(got.head, upto), 1)
        spilled = self.spilled
        if spilled is None:
            self.live(max(got.head, upto))  # the replay covered the rooms up to the head: live goes on after it
            return None
        # The replay covered the rooms up to the head; the live events kept cover them up to `spilled`.
        upto = max(got.head, upto)
        held, self.held, self.held_size, self.spilled = self.held, [], 0, None
        for at, data in held or ():
            if self.ended:
                return None
            if at is None or upto < at < spilled:
                self._write(data, 1)
        return None if self.ended else spilled

    def live(self, upto: tuple[int, int] = (0, 0)) -> None:
        """Write what was kept aside (after ``upto``, where the replay ended); write live events at once, but
        none at or before ``upto`` (a stream reader behind the replay hands those over late)."""
        self.last = max(self.last, upto)
        held, self.held, self.held_size = self.held, None, 0
        for key, data in held or ():
            if self.ended:
                return
            if key is None or key > upto:
                self._write(data, 1)

    def fail(self, code: str, message: str) -> None:
        """End the stream with an ``error`` event (the replay could not be served)."""
        self._finish(sse_error(code, message), "error")

    def end(self, name: str, retry: int | None = None) -> None:
        """End the stream with a final ``close`` event saying why (a close code's name)."""
        if self.ended:
            return
        if name in ("slow", "token_expired"):
            self.hub.metrics.closes.inc(reason=name)
        if name == "slow":
            self.hub.metrics.slow.inc()
        self._finish(sse_close(name, retry), name)

    def expiring(self) -> bool:
        if time.time() >= self.expires:
            self.end("token_expired")
        return self.ended is not None

    def _finish(self, final: bytes, why: str) -> None:
        if self.ended:
            return
        self.ended = why
        self.held = None
        self.final = final
        self._close()
        self.done.set()

    def _close(self) -> None:
        """Write the final event behind what is queued, end the response, close the connection."""
        t, final = self.transport, self.final
        if t is None or final is None:
            return
        self.final = None
        if not t.is_closing():
            t.write(self._framed(final) + (b"0\r\n\r\n" if self.chunked else b""))
            t.close()
            self.hub.abort_later(t)  # cut if what it holds is not read within the close timeout

    def _framed(self, data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data

    def _out(self, key: tuple[int, int] | None, data: bytes, at: tuple[int, int]) -> None:
        """Write an event (``key``; None for a reset, at ``at``), or keep it aside during a replay."""
        held = self.held
        if held is None:
            self._write(data, 1)
            return
        if self.spilled is not None:
            return  # read from history again, with the rest
        if self.held_size + len(data) > self.max_bytes or len(held) >= self.max_messages:
            self.spilled = at
            return
        held.append((key, data))
        self.held_size += len(data)

    def _write(self, data: bytes, messages: int) -> None:
        t = self.transport
        if self.ended:
            return
        if t.is_closing():
            self.ended = "gone"  # the client left: the handler is cancelled and cleans up
            self.done.set()
            return
        t.write(self._framed(data))
        queued = t.get_write_buffer_size()
        if queued:
            self.backlog += messages
            if queued > self.max_bytes or self.backlog > self.max_messages:
                self.end("slow")
        else:
            self.backlog = 0


async def sse(state: Any, request: Request) -> HTTPResponse | None:
    headers = _cors(state, request)
    try:
        principal = _principal(state, request)
        rooms = _rooms(state, request, principal)
        since_arg = request.headers.get("last-event-id") or request.args.get("since")
        since = parse_since(since_arg) if since_arg else None
    except ClientError as exc:
        return _error(state, exc, headers)
    cfg = state.cfg
    stream = SseStream(rooms, state.hub, cfg.queue_bytes, cfg.queue_messages, _expires(principal))
    try:
        with state.http.admitted(stream, principal.user if principal else None, _address(state, request)):
            await _stream(state, request, stream, since, headers)
    except ClientError as exc:  # (refused at the door: the stream has not started)
        return _error(state, exc, headers)
    return None


async def _stream(state: Any, request: Request, stream: SseStream, since: str | None,
                  headers: dict[str, str]) -> None:
    cfg = state.cfg
    response = await request.respond(content_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    await response.send(b"retry: %d\n\n" % SSE_RETRY)
    transport: Any = request.transport
    sock = transport.get_extra_info("socket")
    if cfg.send_buffer and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.send_buffer)
    stream.attach(transport, response.headers.get("transfer-encoding") == "chunked")
    state.hub.metrics.sse_streams.inc()
    if state.http.stopping:
        stream.going_away()
    elif since is None:
        stream.live()
    else:
        try:
            async with state.replays.hold() as hold:
                got = await collect(state.history, stream.rooms, since, cfg.replay_limit, state.deep, memory=hold)
                if not stream.expiring():
                    await _replay(state, stream, got, hold)
                del got
        except ReplayBusy:
            stream.fail("unavailable", "too many replays at once; retry")
        except (RedisError, OSError):
            stream.fail("unavailable", "history is unreachable; retry")
    while not stream.ended:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(SSE_HEARTBEAT, max(stream.expires - time.time(), 0.0))):
                await stream.done.wait()
        if stream.expiring():
            break
        # The heartbeat goes through Sanic, which then knows the response is alive; a reader that has not
        # taken what is queued within the heartbeat timeout is closed as slow.
        try:
            async with asyncio.timeout(cfg.heartbeat_timeout):
                await response.send(b": heartbeat\n\n")
        except TimeoutError:
            stream.end("slow")


async def _replay(state: Any, stream: SseStream, got: Collected, hold: Hold) -> None:
    """Write a replay; while live events kept aside meanwhile passed the stream's bounds, read the rooms' history
    again from the first that was not kept, and write that (at most REREADS reads that find no fewer events than
    the last: a client that reads more slowly than its rooms publish is closed as slow, and resumes)."""
    spilled = stream.replayed(got)
    found, stuck = len(got.events), 0
    while spilled is not None and not stream.expiring():
        hold.shrink(0)  # what was read is written (or in the transport's buffer, which the bounds limit)
        if stuck == REREADS:
            stream.end("slow")
            return
        state.hub.metrics.rereads.inc()
        ms, seq = ev.id_before(spilled)  # a read after it begins with `spilled`
        more = await collect(state.history, stream.rooms, f"{ms}-{seq}", state.cfg.replay_limit, memory=hold)
        if len(more.events) >= found:
            stuck += 1
        found = len(more.events)
        state.hub.metrics.replayed.inc(found)
        spilled = stream.replayed(more)


# -- shared ---------------------------------------------------------------------------------------------------------

async def head(state: Any, request: Request, content_type: str) -> HTTPResponse:
    """``HEAD /poll`` and ``HEAD /sse``: the answer GET would start with (its checks, status and headers), at
    once, without waiting, streaming or reading history."""
    headers = _cors(state, request)
    try:
        principal = _principal(state, request)
        _rooms(state, request, principal)
        if content_type == "application/json":
            _wait(request)
        since_arg = request.headers.get("last-event-id") or request.args.get("since")
        if since_arg:
            parse_since(since_arg)
    except ClientError as exc:
        return _error(state, exc, headers)
    return raw(b"", content_type=content_type, headers={**headers, "Cache-Control": "no-store"})


def _error(state: Any, exc: ClientError, headers: dict[str, str]) -> HTTPResponse:
    state.hub.metrics.errors.inc(code=exc.code)
    if exc.code in ("unauthorized", "token_expired"):
        state.hub.metrics.auth_failures.inc(reason=exc.code)
    body = orjson.dumps({"error": {"code": exc.code, "message": exc.message}})
    return raw(body, status=exc.http_status, content_type="application/json", headers=headers)


def cors_headers(allowed: tuple[str, ...], origin: str | None) -> dict[str, str]:
    """The CORS headers for a request from ``origin``: the origin echoed when it is one of ``allowed`` (``*``
    allows any), none when it is not; ``Vary: Origin`` whenever the answer depends on it."""
    if not allowed:
        return {}
    vary = {"Vary": "Origin"}
    if "*" in allowed:
        found = "*"
    elif origin is not None and origin in allowed:
        found = origin
    else:
        return vary
    return {"Access-Control-Allow-Origin": found, "Access-Control-Allow-Headers": "Authorization, Last-Event-ID",
            **vary}


def _cors(state: Any, request: Request) -> dict[str, str]:
    return cors_headers(state.cfg.cors_origins, request.headers.get("origin"))


def preflight(state: Any, request: Request) -> HTTPResponse:
    headers = _cors(state, request)
    if "Access-Control-Allow-Origin" in headers:
        headers["Access-Control-Allow-Methods"] = "GET, OPTIONS"
        headers["Access-Control-Max-Age"] = "600"
    return raw(b"", status=204, headers=headers)


def _address(state: Any, request: Request) -> str:
    return client_address(request.ip or "?", request.headers.getall("x-forwarded-for", []),
                          state.cfg.trusted_proxies)


def _expires(principal: Principal | None) -> float:
    """When the token ends the request (never without a token, or without a finite ``exp``)."""
    if principal is None or principal.expires is None or not math.isfinite(principal.expires):
        return math.inf
    return principal.expires


def _principal(state: Any, request: Request) -> Principal | None:
    header = request.headers.get("authorization")
    token = None
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ClientError("unauthorized", "use Authorization: Bearer <token>")
        token = value.strip()
    elif request.args.get("access_token"):
        token = request.args.get("access_token")
    if token is None:
        if state.cfg.session.allow_anonymous:
            return None
        raise ClientError("unauthorized", "a token is needed (Authorization: Bearer, or access_token)")
    if state.verifier is None:
        raise ClientError("unauthorized", "token authentication is not configured")
    principal: Principal = state.verifier.verify(token)
    return principal


def _rooms(state: Any, request: Request, principal: Principal | None) -> tuple[str, ...]:
    raw_rooms = ",".join(request.args.getlist("rooms", [])) if request.args.getlist("rooms") else ""
    names = [r for r in raw_rooms.split(",") if r]
    if not names:
        raise ClientError("bad_frame", "rooms is required: a comma-separated list of room names")
    if len(names) > state.cfg.session.max_rooms:
        raise ClientError("too_many_rooms", f"at most {state.cfg.session.max_rooms} rooms")
    for name in names:
        if not ev.valid_room(name):
            raise ClientError("bad_room", f"invalid room name: {name[:40]!r}")
        if not readable(name, principal):
            raise ClientError("forbidden_room", f"not allowed to read {name}")
    return tuple(dict.fromkeys(names))


def _wait(request: Request) -> float:
    text = request.args.get("wait")
    if text is None:
        return 25.0
    try:
        value = float(text)
    except ValueError:
        raise ClientError("bad_wait", f"wait must be a number of seconds from 0 to {MAX_WAIT:g}") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_WAIT:
        raise ClientError("bad_wait", f"wait must be a number of seconds from 0 to {MAX_WAIT:g}")
    return value
