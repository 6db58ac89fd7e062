"""Long-polling (``GET /poll``) and Server-Sent Events (``GET /sse``): the same rooms, rules, ids and
payloads as the WebSocket, served by any instance.

Both authenticate like the WebSocket (``Authorization: Bearer``, or ``access_token`` in the query for
clients that cannot set headers, such as ``EventSource``), answer a position that history no longer covers
with a ``reset``, and return the very bytes the WebSocket sends for each event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError
from sanic import Request
from sanic.response import HTTPResponse, raw

from realtime import events as ev
from realtime.auth import Principal
from realtime.errors import ClientError
from realtime.protocol import parse_since, readable
from realtime.resume import covered

log = logging.getLogger("realtime.server")

MAX_WAIT = 30.0
SSE_QUEUE = 10_000  # events an SSE stream may hold unsent before it is ended as slow
SSE_HEARTBEAT = 15.0


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


@dataclass
class Collected:
    events: list[tuple[tuple[int, int], str, bytes]] = field(default_factory=list)  # (id, room, payload)
    resets: dict[str, list[str]] = field(default_factory=dict)  # reason -> rooms
    replayed: set[str] = field(default_factory=set)


async def collect(history: Any, rooms: tuple[str, ...], since: str, limit: int, deep: Any = None) -> Collected:
    """The events of ``rooms`` after ``since`` from their history, merged by id, each once; and which rooms
    need a reset instead. With ``deep`` (a :class:`~realtime.server.deep.DeepReplay`), what Redis trimmed is
    read back from MongoDB's oplog where it still holds it."""
    out = Collected()
    wanted = set(rooms)
    stream = await history.state()
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
    if deep_rooms:
        outcome = await deep.replay(deep_rooms, since, await history.first_ids(deep_rooms), label=rooms)
        if outcome.events is None:
            out.resets.setdefault(outcome.reason, []).extend(deep_rooms)
        else:
            readable_rooms += deep_rooms  # and the rest of their history from Redis
            for key, room, payload in outcome.events:
                merged[key] = (room, payload)
    found = await history.read(readable_rooms, since, limit) if readable_rooms else {}
    for room in readable_rooms:
        entries = found.get(room, [])
        if len(entries) > limit:
            out.resets.setdefault("too_far_behind", []).append(room)
            continue
        out.replayed.add(room)
        for entry_id, raw_envelope in entries:
            key = ev.parse_id(entry_id.decode())
            if key not in merged:
                envelope = orjson.loads(raw_envelope)
                label = _label(envelope.get("rooms"), wanted, room)
                merged[key] = (label, event_payload(envelope, label))
    if len(merged) > limit:
        out.resets.setdefault("too_far_behind", []).extend(sorted(out.replayed))
        out.replayed.clear()
        return out
    for key in sorted(merged):
        room, payload = merged[key]
        out.events.append((key, room, payload))
    return out


class Listener:
    """A poll or SSE client waiting on rooms: the hub feeds it each event of those rooms, once."""

    __slots__ = ("last", "notify", "queue", "resets", "rooms", "slow")

    def __init__(self, rooms: tuple[str, ...], notify: Callable[[], None]) -> None:
        self.rooms = rooms
        self.notify = notify
        self.queue: list[tuple[tuple[int, int], str, bytes]] = []
        self.resets: list[tuple[tuple[int, int], str]] = []
        self.last = (0, 0)
        self.slow = False

    def feed(self, key: tuple[int, int], room: str, payload: bytes) -> None:
        if key <= self.last:
            return  # the same event through another of its rooms
        self.last = key
        if len(self.queue) >= SSE_QUEUE:
            self.slow = True
        else:
            self.queue.append((key, room, payload))
        self.notify()

    def reset(self, key: tuple[int, int], reason: str) -> None:
        self.resets.append((key, reason))
        self.notify()


def _error(exc: ClientError, headers: dict[str, str]) -> HTTPResponse:
    body = orjson.dumps({"error": {"code": exc.code, "message": exc.message}})
    return raw(body, status=exc.http_status, content_type="application/json", headers=headers)


def _cors(state: Any, request: Request) -> dict[str, str]:
    origin = state.cfg.cors_origin
    if not origin:
        return {}
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Headers": "Authorization, Last-Event-ID",
            "Vary": "Origin"}


def preflight(state: Any, request: Request) -> HTTPResponse:
    headers = _cors(state, request)
    if headers:
        headers["Access-Control-Allow-Methods"] = "GET, OPTIONS"
        headers["Access-Control-Max-Age"] = "600"
    return raw(b"", status=204, headers=headers)


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


def _poll_body(got: Collected, since: str) -> bytes:
    events = b",".join(payload for _, _, payload in got.events)
    nxt = since
    if got.events:
        k = got.events[-1][0]
        nxt = f"{k[0]}-{k[1]}"
    resets = [{"rooms": sorted(rooms), "reason": why} for why, rooms in got.resets.items()]
    return b'{"events":[' + events + b'],"resets":' + orjson.dumps(resets) + b',"next":' + orjson.dumps(nxt) + b"}"


async def poll(state: Any, request: Request) -> HTTPResponse:
    headers = _cors(state, request)
    try:
        principal = _principal(state, request)
        rooms = _rooms(state, request, principal)
        wait = _wait(request)
        since_arg = request.args.get("since")
        since = parse_since(since_arg) if since_arg is not None else (await state.history.last_id()).decode()
    except ClientError as exc:
        state.hub.metrics.errors.inc(code=exc.code)
        return _error(exc, headers)
    except (RedisError, OSError):
        return _error(ClientError("unavailable", "history is unreachable; retry"), headers)
    hub = state.hub
    woke = asyncio.Event()
    listener = Listener(rooms, woke.set)
    hub.listen(listener)  # before reading history: nothing can fall between the read and the wait
    try:
        got = await collect(state.history, rooms, since, state.cfg.replay_limit, state.deep)
        if not got.events and not got.resets and wait > 0 and not listener.queue:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woke.wait(), wait)
            got = await collect(state.history, rooms, since, state.cfg.replay_limit, state.deep)
    except (RedisError, OSError):
        return _error(ClientError("unavailable", "history is unreachable; retry"), headers)
    finally:
        hub.unlisten(listener)
    hub.metrics.polls.inc()
    return raw(_poll_body(got, since), content_type="application/json",
               headers={**headers, "Cache-Control": "no-store"})


def _sse_event(key: tuple[int, int], payload: bytes) -> bytes:
    return b"id: %d-%d\ndata: %s\n\n" % (key[0], key[1], payload)


def _sse_reset(rooms: list[str], reason: str) -> bytes:
    return b"event: reset\ndata: " + orjson.dumps({"op": "reset", "rooms": sorted(rooms), "reason": reason}) + b"\n\n"


async def sse(state: Any, request: Request) -> HTTPResponse | None:
    headers = _cors(state, request)
    try:
        principal = _principal(state, request)
        rooms = _rooms(state, request, principal)
        since_arg = request.headers.get("last-event-id") or request.args.get("since")
        since = parse_since(since_arg) if since_arg else None
    except ClientError as exc:
        state.hub.metrics.errors.inc(code=exc.code)
        return _error(exc, headers)
    hub = state.hub
    woke = asyncio.Event()
    listener = Listener(rooms, woke.set)
    hub.listen(listener)
    response = await request.respond(content_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    hub.metrics.sse_streams.inc()
    try:
        await response.send(b"retry: 2000\n\n")
        sent_upto = (0, 0)  # live events held during the replay and already sent by it are skipped
        if since is not None:
            got = await collect(state.history, rooms, since, state.cfg.replay_limit, state.deep)
            for why, reset_rooms in got.resets.items():
                await response.send(_sse_reset(reset_rooms, why))
            for key, _, payload in got.events:
                await response.send(_sse_event(key, payload))
            if got.events:
                sent_upto = got.events[-1][0]
        while not state.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woke.wait(), SSE_HEARTBEAT)
            woke.clear()
            if listener.slow:
                log.info("ending an SSE stream that reads too slowly")
                return None
            items, listener.queue = listener.queue, []
            resets, listener.resets = listener.resets, []
            chunks = [_sse_reset(list(rooms), reason) for _, reason in resets]
            chunks += [_sse_event(key, payload) for key, _, payload in items if key > sent_upto]
            await response.send(b"".join(chunks) if chunks else b": heartbeat\n\n")
    except (RedisError, OSError):
        await response.send(b"event: error\ndata: {\"code\":\"unavailable\"}\n\n")
    finally:
        hub.unlisten(listener)
    return None
