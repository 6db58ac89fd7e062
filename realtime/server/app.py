"""The Sanic application: ``/ws``, ``/poll``, ``/sse``, ``/healthz``, ``/readyz``, ``/metrics``, ``/client/realtime.js``
(and ``/demo`` with ``REALTIME_DEMO=true``); one stream reader per process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sanic import Request, Sanic, Websocket
from sanic.response import HTTPResponse, raw

from realtime import events as ev
from realtime.auth import TokenVerifier
from realtime.errors import CLOSE_CODES
from realtime.protocol import (
    Authenticated,
    Close,
    PresenceQuery,
    Send,
    Session,
    Subscribe,
    Sync,
    Typing,
    Unsubscribe,
    close,
    error_frame,
    frame,
)
from realtime.server import demo, lean, transports, web
from realtime.server.addresses import client_address
from realtime.server.budget import Hold as MemoryHold
from realtime.server.budget import ReplayBusy, ReplayMemory
from realtime.server.config import ServerConfig
from realtime.server.deep import DeepReplay
from realtime.server.door import Door
from realtime.server.history import History
from realtime.server.hub import NOWHERE, Conn, Hub, text_frame
from realtime.server.lean import FastProtocol, Heartbeats
from realtime.server.presence import Presence
from realtime.server.reader import StreamReader
from realtime.server.retry import Unavailable, retrying
from realtime.server.transports import ENTRY_EXTRA, REREADS, HttpClients, collect
from realtime.tasks import cancel_all
from watchers.keys import Keys

log = logging.getLogger("realtime.server")
REPLAY_CHUNK = 64 * 1024  # bytes of replayed frames written at a time (each frame still counts as one message)
Framed = tuple[bytes, int]  # a replay's frame, and the bytes of the replay memory it holds until written
CLOSE_DRAIN = 5.0  # seconds a closed connection's late frames are read (and dropped) before the socket closes


@dataclass
class State:
    cfg: ServerConfig
    redis: Redis
    hub: Hub
    history: History
    reader: StreamReader
    verifier: TokenVerifier | None
    presence: Presence
    replays: ReplayMemory  # the memory replays in flight may hold (every transport's)
    http: HttpClients  # long-polls and SSE streams in flight
    deep: DeepReplay | None = None
    door: Door | None = None
    fast: bool = False
    mongo: Any = None
    listener: Redis | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    closing: set[asyncio.Future[Any]] = field(default_factory=set)
    stopping: bool = False


def _keys(prefix: str) -> tuple[str, str, str]:
    tag = "{" + prefix + "}"
    return f"{tag}:events", f"{tag}:resets", f"{tag}:room:"


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


def _jwks_text(cfg: ServerConfig) -> str | None:
    if cfg.auth.jwks_url is None:
        return None
    with urllib.request.urlopen(cfg.auth.jwks_url, timeout=10) as reply:
        text: str = reply.read().decode()
        return text


def create_app(cfg: ServerConfig, name: str = "realtime") -> Sanic[Any, Any]:
    app = Sanic(name, configure_logging=False)
    app.config.update({
        "WEBSOCKET_MAX_SIZE": cfg.max_frame,
        "WEBSOCKET_PING_INTERVAL": cfg.heartbeat or None,  # heartbeats: a ping every so often ...
        "WEBSOCKET_PING_TIMEOUT": cfg.heartbeat_timeout,  # ... answered in time, or the connection closes (1011)
        "GRACEFUL_SHUTDOWN_TIMEOUT": cfg.shutdown_grace,
        "REQUEST_TIMEOUT": cfg.head_timeout,  # from a head's first byte: see realtime/server/door.py
        "ACCESS_LOG": False,
        "MOTD": False,
    })

    fast = cfg.fast_path and lean.supported()
    if fast:
        app.config.update({"WEBSOCKET_PING_INTERVAL": None})  # one heartbeat task for all (see _tick)

    @app.before_server_start
    async def start(app: Sanic[Any, Any]) -> None:
        events_key, resets_key, room_prefix = _keys(cfg.prefix)
        # Every command has a deadline: a Redis that hangs (stopped, partitioned) fails calls instead of
        # freezing them. The pub/sub listener waits without one (see Presence).
        redis = Redis.from_url(cfg.redis_url, socket_timeout=cfg.redis_timeout,
                               socket_connect_timeout=cfg.redis_timeout)
        listener = Redis.from_url(cfg.redis_url, socket_connect_timeout=cfg.redis_timeout, socket_keepalive=True)
        hub = Hub(queue_bytes=cfg.queue_bytes, queue_messages=cfg.queue_messages, send_buffer=cfg.send_buffer,
                  fast=fast)
        history = History(redis, events_key, resets_key, room_prefix)
        verifier = cfg.auth.verifier(await asyncio.to_thread(_jwks_text, cfg))
        reader = StreamReader(cfg.redis_url, events_key, hub.on_entries, count=cfg.read_count,
                              timeout=cfg.redis_timeout, on_lost=hub.metrics.reader_lost.inc)
        presence = Presence(redis, cfg.prefix, hub.deliver_ephemeral, ttl=cfg.presence_ttl,
                            typing_ttl=cfg.typing_ttl, typing_interval=cfg.typing_interval, listener=listener,
                            on_error=lambda what: hub.metrics.presence_errors.inc(what=what))
        state = State(cfg, redis, hub, history, reader, verifier, presence, fast=fast, listener=listener,
                      replays=ReplayMemory(cfg.replay_memory, cfg.replay_memory_wait, hub.metrics.registry),
                      http=HttpClients(hub, cfg.max_conns_per_user, cfg.max_conns_per_address))
        # The door counts the TCP connections that are not WebSockets (polls and SSE streams among them); the
        # hub's WebSockets complete an address's count.
        state.door = Door(cfg.max_conns_per_address, cfg.trusted_proxies,
                          lambda a: hub.websockets_by_address.get(a, 0),
                          on_refused=lambda: hub.metrics.refused.inc(reason="address"))
        if cfg.mongodb_uri is not None:
            state.mongo = AsyncMongoClient(cfg.mongodb_uri, serverSelectionTimeoutMS=5000,
                                           appname="realtime-server deep replay")
            state.deep = DeepReplay(state.mongo, cfg.database, cfg.mapping, redis, Keys(cfg.prefix),
                                    seconds=cfg.deep_seconds, limit=cfg.replay_limit, concurrency=cfg.deep_concurrency)
        app.ctx.state = state
        last = b"$"
        for attempt in range(50):
            try:
                last = await history.last_id()
                break
            except (RedisError, OSError) as exc:
                if attempt == 0:
                    log.warning("Redis unreachable at start (%s); retrying", exc)
                await asyncio.sleep(0.2)
        await reader.start(last)
        await presence.start()
        state.tasks.append(asyncio.get_running_loop().create_task(_tick(state)))
        log.info("serving on %s:%d, reading %s from %s", cfg.host, cfg.port, events_key, last.decode())

    @app.before_server_stop
    async def stop(app: Sanic[Any, Any]) -> None:
        state: State = app.ctx.state
        state.stopping = True
        going = CLOSE_CODES["going_away"]
        # WebSockets first: their close frames (1001: resume elsewhere) are written before this listener awaits
        # anything, ahead of Sanic, which cancels their handlers meanwhile and would close them with 1000 (the
        # end of the session, for a client). Then long-polls answer and SSE streams end (going_away).
        await state.hub.close_all(going.code, "going away", cfg.shutdown_grace)
        await state.http.close_all(cfg.shutdown_grace)
        await cancel_all(state.tasks)
        await state.presence.stop()
        await state.reader.stop()
        if state.mongo is not None:
            await state.mongo.close()
        await state.redis.aclose()
        if state.listener is not None:
            await state.listener.aclose()

    async def websocket(request: Request, ws: Websocket) -> None:
        await _serve_socket(request.app.ctx.state, request, ws)

    cast(Any, app).websocket("/ws")(websocket)  # (Sanic's decorator is untyped)

    @app.get("/poll")
    async def poll(request: Request) -> HTTPResponse | None:
        return await transports.poll(request.app.ctx.state, request)

    @app.get("/sse")
    async def sse(request: Request) -> HTTPResponse | None:
        return await transports.sse(request.app.ctx.state, request)

    @app.route("/poll", methods=["HEAD"], name="poll_head")
    async def poll_head(request: Request) -> HTTPResponse:
        return await transports.head(request.app.ctx.state, request, "application/json")

    @app.route("/sse", methods=["HEAD"], name="sse_head")
    async def sse_head(request: Request) -> HTTPResponse:
        return await transports.head(request.app.ctx.state, request, "text/event-stream")

    @app.route("/poll", methods=["OPTIONS"], name="poll_preflight")
    async def poll_preflight(request: Request) -> HTTPResponse:
        return transports.preflight(request.app.ctx.state, request)

    @app.route("/sse", methods=["OPTIONS"], name="sse_preflight")
    async def sse_preflight(request: Request) -> HTTPResponse:
        return transports.preflight(request.app.ctx.state, request)

    @app.route("/healthz", methods=["GET", "HEAD"])
    async def healthz(request: Request) -> HTTPResponse:
        return raw(orjson.dumps({"ok": True}), content_type="application/json")

    @app.route("/readyz", methods=["GET", "HEAD"])
    async def readyz(request: Request) -> HTTPResponse:
        state: State = request.app.ctx.state
        problems = []
        stream = None
        try:
            # Bounded on its own: a hung Redis (stopped, or blackholed by a partition) must not hang the probe
            # for as long as REALTIME_REDIS_TIMEOUT lets a command wait.
            async with asyncio.timeout(cfg.ready_timeout):
                stream = await state.history.state()
        except TimeoutError:
            problems.append(f"redis: no answer within {cfg.ready_timeout:g}s")
        except (RedisError, OSError) as exc:
            problems.append(f"redis: {type(exc).__name__}")
        if not state.reader.connected or time.monotonic() - state.reader.last_reply > 5.0:
            problems.append("the stream reader is not reading")
        elif stream is not None and stream.last is not None and state.reader.last not in (b"$",):
            behind = (stream.last[0] >> 32) - (ev.parse_id(state.reader.last.decode())[0] >> 32)
            if behind > cfg.lag_ready_seconds:
                problems.append(f"delivery lags {behind}s behind the stream")
        if state.stopping:
            problems.append("shutting down")
        body = orjson.dumps({"ready": not problems, "problems": problems})
        return raw(body, status=200 if not problems else 503, content_type="application/json")

    @app.route("/metrics", methods=["GET", "HEAD"])
    async def metrics(request: Request) -> HTTPResponse:
        state: State = request.app.ctx.state
        return raw(state.hub.metrics.registry.render().encode(), content_type="text/plain; version=0.0.4")

    web.register(app)  # GET /client/realtime.js
    if cfg.demo:
        demo.register(app, cfg)  # /demo and its write API: REALTIME_DEMO=true only (development)
    return app


TICK = 0.25  # seconds between two heartbeat slices


async def _tick(state: State) -> None:
    """Once a second, each session's clock checks (auth deadline, token expiry, idle). On the fast path, every
    TICK a slice of the heartbeats: one shared ping frame, each connection once per REALTIME_HEARTBEAT, and
    1011 for a connection silent for REALTIME_HEARTBEAT_TIMEOUT after a ping."""
    cfg = state.cfg
    beats = Heartbeats(cfg.heartbeat, cfg.heartbeat_timeout, TICK) if state.fast and cfg.heartbeat else None
    next_clock = time.monotonic() + 1.0
    while True:
        await asyncio.sleep(TICK)
        now = time.monotonic()
        if beats is not None:
            for conn in beats.step(state.hub.conns, now):
                state.hub.forget(conn)
                state.hub.metrics.closes.inc(reason="heartbeat")
                conn.ws.fail_connection(CLOSE_CODES["internal"].code, "no answer to heartbeats")
        if now < next_clock:
            continue
        next_clock = now + 1.0
        for conn in list(state.hub.conns):
            actions = conn.session.tick()
            if actions:
                task = asyncio.ensure_future(_handle(state, conn, actions))
                state.closing.add(task)
                task.add_done_callback(_retrieved(state.closing))


async def _serve_socket(state: State, request: Request, ws: Websocket) -> None:
    cfg = state.cfg
    hub = state.hub
    address = client_address(request.ip or "?", request.headers.getall("x-forwarded-for", []), cfg.trusted_proxies)
    if ws.ws_proto.extensions:  # shared raw frames need an uncompressed connection; Sanic never negotiates one
        await ws.close(CLOSE_CODES["internal"].code, "compression not supported")
        return
    if state.stopping:
        await ws.close(CLOSE_CODES["going_away"].code, "going away")
        return
    if hub.by_address.get(address, 0) >= cfg.max_conns_per_address:
        hub.metrics.refused.inc(reason="address")
        await ws.close(CLOSE_CODES["too_many_connections"].code, "too many connections from this address")
        return
    session = Session(cfg.session, state.verifier, time.time)
    conn = Conn(hub, ws, session, address)
    hub.add(conn)
    try:
        await _handle(state, conn, session.start(_bearer(request.headers.get("authorization"))))
        if isinstance(ws.io_proto, FastProtocol):
            inbox = Inbox(state, conn)
            ws.io_proto.listen(inbox.receive)
            try:
                await ws.io_proto.closed()
            finally:
                inbox.stop()
        else:
            async for message in ws:
                if not conn.alive:
                    await _drain(ws)
                    break
                await _handle(state, conn, functools.partial(session.receive, message))
    finally:
        rooms = _tracked(state, conn.session.rooms)
        hub.forget(conn)
        if conn.user is not None and rooms:
            state.presence.left(conn.user, rooms)


class Inbox:
    """The fast path's client messages: the protocol hands each one to :meth:`receive` as it arrives, and one
    task works through a burst of them, in order (none while the connection is quiet).

    What waits is bounded like a flood: while the task is on a slow message (a replay waiting for Redis or for
    the replay memory), a client may have at most REALTIME_BURST + REALTIME_FLOOD_CLOSE_AFTER messages, and
    REALTIME_QUEUE_BYTES of text (at least REALTIME_MAX_FRAME), waiting behind it. Past either bound the
    connection is closed with 4009 (``flood``: as many messages at once would end it all the same once handled)
    and what waits is dropped. The messages of one read from the socket, before the task has begun, are not
    held to it (one read is bounded): they are handled as ever, rate limits and flood close included."""

    __slots__ = ("busy", "conn", "messages", "size", "state", "worker")

    def __init__(self, state: State, conn: Conn) -> None:
        self.state = state
        self.conn = conn
        self.messages: list[bytes | str] | None = None
        self.size = 0  # the length of the messages waiting
        self.worker: asyncio.Task[None] | None = None
        self.busy = False  # the task has begun: what arrives now waits behind a message being handled

    def receive(self, message: bytes | str) -> None:
        if not self.conn.alive or self.conn.session.closed:
            return  # closed, or closing: what the client still sends is read and dropped
        if self.messages is None:
            self.messages = []
        self.messages.append(message)
        self.size += len(message)
        cfg = self.state.cfg
        if self.busy and (len(self.messages) > cfg.session.burst + cfg.session.flood_close_after
                          or self.size > max(cfg.queue_bytes, cfg.max_frame)):
            self._flooded()
            return
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())
            self.state.closing.add(self.worker)
            self.worker.add_done_callback(_retrieved(self.state.closing))

    def _flooded(self) -> None:
        """Too much waits: drop it, and close the connection as a flood (the message in hand is not answered)."""
        self.messages, self.size = None, 0
        self.conn.session.closed = True
        task = asyncio.ensure_future(_handle(self.state, self.conn, [close("flood")]))
        self.state.closing.add(task)
        task.add_done_callback(_retrieved(self.state.closing))

    async def _work(self) -> None:
        conn = self.conn
        self.busy = True
        try:
            while self.messages and conn.alive:
                message = self.messages.pop(0)
                self.size -= len(message)
                await _handle(self.state, conn, functools.partial(conn.session.receive, message))
        finally:
            self.worker, self.busy = None, False
            if not self.messages:
                self.messages, self.size = None, 0

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()


async def _handle(state: State, conn: Conn, actions: list[Any] | Callable[[], list[Any]]) -> None:
    """Carry out a session's actions (or those of a call to the session, such as its ``receive`` of a client
    frame, made here). A failure nobody foresaw, in the session or in carrying its actions out, is logged and
    ends the connection with 1011 (internal error: the client reconnects and resumes), never a task's
    unretrieved exception that leaves the connection open and deaf."""
    try:
        await _apply(state, conn, actions() if callable(actions) else actions)
    except Exception:
        log.exception("a client message failed; closing its connection with 1011")
        state.hub.metrics.closes.inc(reason="internal")
        state.hub.forget(conn)
        internal = CLOSE_CODES["internal"]
        with contextlib.suppress(Exception):
            await conn.ws.close(internal.code, "internal error")


def _retrieved(tasks: set[asyncio.Future[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback: out of ``tasks``, and its exception (if any) logged, never left unretrieved."""
    def done(task: asyncio.Future[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a server task failed", exc_info=task.exception())
    return done


async def _drain(ws: Websocket) -> None:
    """The server has closed this connection but the client still sends: discard its frames until its close
    frame (or for CLOSE_DRAIN seconds). Closing the socket with unread data in it sends a reset, which can
    destroy our close frame, and its code, before the client has read it (a flood would end in 1006)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_DRAIN):
            async for _ in ws:
                pass


async def _apply(state: State, conn: Conn, actions: list[Any]) -> None:
    hub = state.hub
    for action in actions:
        if not conn.alive:
            return
        if isinstance(action, Send):
            if action.frame.startswith(b'{"op":"error"'):
                code = orjson.loads(action.frame).get("code", "")
                hub.metrics.errors.inc(code=code)
                if code in ("unauthorized", "token_expired", "token_mismatch"):
                    hub.metrics.auth_failures.inc(reason=code)
            conn.send(text_frame(action.frame))
        elif isinstance(action, Close):
            hub.forget(conn)
            name = next((c.name for c in CLOSE_CODES.values() if c.code == action.code), str(action.code))
            hub.metrics.closes.inc(reason=name)
            if name in ("unauthorized", "token_expired", "auth_timeout"):
                hub.metrics.auth_failures.inc(reason=name)
            with contextlib.suppress(Exception):
                await conn.ws.close(action.code, action.reason)
            return
        elif isinstance(action, Authenticated):
            user = action.principal.user
            if conn.user != user and hub.by_user.get(user, 0) >= state.cfg.max_conns_per_user:
                hub.metrics.refused.inc(reason="user")
                conn.send(text_frame(error_frame("too_many_connections", "too many connections for this user")))
                await _apply(state, conn, [Close(CLOSE_CODES["too_many_connections"].code, "too many connections")])
                return
            was, rooms = conn.user, _tracked(state, conn.session.rooms)
            hub.set_user(conn, user)
            if was is None and rooms:  # anonymous until now: present from here on
                state.presence.joined(user, rooms)
        elif isinstance(action, Subscribe):
            if action.since is None:
                _join(state, conn, action.rooms, _reader_at(state))
                conn.send(text_frame(frame("subscribed", ref=action.ref, rooms=list(action.rooms))))
            else:
                await _replay(state, conn, action.rooms, action.since, action.ref, join=True)
        elif isinstance(action, Unsubscribe):
            hub.leave(conn, action.rooms)
            if conn.user is not None and _tracked(state, action.rooms):
                state.presence.left(conn.user, _tracked(state, action.rooms))
        elif isinstance(action, Sync):
            await _replay(state, conn, action.rooms, action.since, action.ref, join=False)
        elif isinstance(action, Typing):
            await _typing(state, conn, action.room)
        elif isinstance(action, PresenceQuery):
            if not _tracked(state, [action.room]):
                conn.send(text_frame(error_frame("unsupported", "presence is not tracked in this room", action.ref)))
                continue
            try:
                users = await state.presence.query(action.room)
            except (RedisError, OSError):
                conn.send(text_frame(error_frame("unavailable", "presence is unreachable; retry", action.ref)))
                continue
            conn.send(text_frame(frame("presence", ref=action.ref, room=action.room, users=users)))


async def _replay(state: State, conn: Conn, rooms: tuple[str, ...], since: str, ref: Any, *, join: bool) -> None:
    """Events of ``rooms`` after ``since`` from history, then live, with no gap and no duplicate.

    Live events are kept aside from the moment the rooms are joined until the replay has been written (at the
    client's pace: see :class:`_Paced`), and merged into it in id order. Past the bounds of the connection's queue
    the hold keeps no more: every room of the connection is then read from history again, from the first event
    it did not keep (a stream reader that catches up with a burst hands a connection many events at once; a
    replay from the oplog takes seconds). A read again that finds fewer events than the last read shows the client
    catching up; a connection whose hold still passes its bounds after REREADS reads again that did not reads more
    slowly than its rooms publish: it is closed as slow. What a read again found, up to the head of the stream, a
    stream reader behind it hands over late: dropped from then on (see :meth:`Hub.catch_up`), not kept.

    When history stays unreachable for REALTIME_RETRY_SECONDS, nothing is left half-done: the rooms are left, the
    kept events of the connection's other rooms go out in order, and the client gets ``unavailable`` naming the
    rooms, to subscribe to again with the same ``since``."""
    hub = state.hub
    hub.metrics.replays.inc()
    # The replay's share of the replay memory: what it reads, held until written to the connection (part by part,
    # at the client's pace), given back on the way out whatever happens.
    async with state.replays.hold() as budget:
        await _replay_held(state, conn, rooms, since, ref, join, budget)


async def _replay_held(state: State, conn: Conn, rooms: tuple[str, ...], since: str, ref: Any, join: bool,
                       budget: MemoryHold) -> None:
    hub = state.hub
    with hub.holding(conn) as hold:
        # What the connection's other rooms have sent it (live before the hold, or replayed) is left out of this
        # replay: an event of theirs that is also in these rooms would come twice (a subscribe that a partition
        # delayed reaches the server after they went out). What they send during the hold is merged below.
        reader = _reader_at(state)
        delivered = hub.delivered(conn, reader, rooms) if reader is not None else {}
        if join:
            _join(state, conn, rooms)
        try:
            got = await retrying(lambda: collect(state.history, rooms, since, state.cfg.replay_limit, state.deep,
                                                 memory=budget, had=delivered),
                                 state.cfg.retry_seconds, "a replay")
        except (Unavailable, ReplayBusy) as exc:
            why = "too many replays at once" if isinstance(exc, ReplayBusy) else "history is unreachable"
            kept = hold.release()
            if hold.spilled is not None:  # its other rooms' live events past the bounds are gone: it resumes
                hub.slow(conn)
                return
            _leave(state, conn, rooms)
            for _, _, data, event_rooms in kept:  # the others' live events, which the rooms left did not hold
                if "*" in event_rooms or any(r in conn.session.rooms for r in event_rooms):
                    conn.send(data)
            hub.metrics.errors.inc(code="unavailable")
            conn.send(text_frame(frame("error", ref=ref, code="unavailable", rooms=list(rooms),
                                       message=f"{why}: these rooms are not subscribed; "
                                               "subscribe again with the same since")))
            return
        if join:
            conn.send(text_frame(frame("subscribed", ref=ref, rooms=list(rooms))))
        for why, reset_rooms in got.resets.items():
            conn.send(text_frame(frame("reset", ref=ref, rooms=sorted(reset_rooms), reason=why)))
            hub.metrics.resets.inc(reason=why)
        last = got.events[-1][0] if got.events else None
        replayed = {key for key, _, _ in got.events}
        # The client has every event of these rooms up to its position: since, or the last one replayed. A live
        # event of theirs at or before it comes from a stream reader that is behind the client (it resumed here
        # from a server further on): not again.
        position = max(ev.parse_id(since), last) if last is not None else ev.parse_id(since)
        mine = set(rooms)

        def had(key: tuple[int, int], event_rooms: tuple[str, ...] | list[str]) -> bool:
            return key in replayed or (key <= position and ("*" in event_rooms or any(r in mine for r in event_rooms)))

        # From the end of the replay on, the connection has every event of these rooms after since (replayed, then
        # live); of a room reset instead, those after what the reader had handed over and the replay's position.
        reset = {r for why in got.resets.values() for r in why}
        # A room the connection was already in keeps what it covered before since (it stayed in it throughout).
        start = ev.parse_id(since)
        cover = ({r: max(position, reader) if r in reset else min(start, conn.covered.get(r, start)) for r in rooms}
                 if reader is not None else {})
        # A read again leaves out what the client has of these rooms (up to position) and what the other rooms had
        # sent it before the hold (they sent nothing since: their live events were kept, or not kept past the bounds).
        again = {**delivered, **dict.fromkeys(rooms, (NOWHERE, position))}
        # History and the live events kept meanwhile (of every room of the connection), by id: what is not written
        # yet, each with what it holds of the replay memory (an event read from history: what collect() held for
        # it; a live one kept, which the connection's queue bounds: nothing). A client's position never goes back;
        # what is newer than the replay's last event comes after `synced`.
        pool = {key: (text_frame(payload), len(payload) + ENTRY_EXTRA) for key, _, payload in got.events}
        found = len(got.events)  # by the last read
        hub.metrics.replayed.inc(len(got.events))
        del got
        budget.shrink(sum(cost for _, cost in pool.values()))
        out = _Paced(conn, last, text_frame(frame("synced", ref=ref, rooms=list(rooms),
                                                  last=f"{last[0]}-{last[1]}" if last is not None else None)),
                     state.cfg.heartbeat_timeout, budget)
        stuck = 0  # reads again that found no fewer events than the last read
        # A stream reader behind the replay's last event would hand the connection's other rooms' events up to it over
        # after `synced` (ids would go back): those are read from history, as if the hold had stopped keeping there.
        behind = last is not None and any(r not in mine for r in conn.session.rooms)
        complete: dict[str, tuple[int, int]] = {}  # per room, where a read again left it complete
        while True:
            for key, _, data, event_rooms in hold.take():
                if key not in pool and not had(key, event_rooms):
                    pool[key] = (data, 0)
            spilled, at = hold.spilled, _reader_position(state)
            if behind:
                behind = False
                now = _reader_at(state)
                if spilled is None and last is not None and now is not None and now < last:
                    spilled = (now[0], now[1] + 1)  # (the first id after the reader's position)
            frames = out.frames([(key, pool.pop(key)) for key in sorted(pool) if spilled is None or key < spilled],
                                done=spilled is None or last is None or spilled > last)
            if spilled is None and out.fits(frames):
                hold.release()  # (nothing was kept since the take) live from here on, behind these frames
                if frames:
                    out.send(frames)
                break
            if not await out.write(frames):
                return  # gone, or closed as slow
            if spilled is None:
                if not await out.drained():
                    return
                continue  # what was kept while the client took those frames (within the bounds): written at once
            # Everything from `spilled` on that the hold did not keep: from history, with what it keeps from now on.
            if stuck == REREADS:
                hub.slow(conn)  # it reads more slowly than its rooms publish: it resumes from its last event
                return
            hub.metrics.rereads.inc()
            ms, seq = ev.id_before(spilled)  # a read after it begins with `spilled`
            after = f"{ms}-{seq}"
            read = functools.partial(collect, state.history, tuple(conn.session.rooms), after,
                                     state.cfg.replay_limit, memory=budget, had=again)
            try:
                more = await retrying(read, state.cfg.retry_seconds, "a replay's read again")
            except (Unavailable, ReplayBusy):
                hub.slow(conn)  # what its rooms published meanwhile cannot be read: it resumes
                return
            if not conn.alive:
                return
            for why, reset_rooms in more.resets.items():
                conn.send(text_frame(frame("reset", rooms=sorted(reset_rooms), reason=why)))
                hub.metrics.resets.inc(reason=why)
                for r in reset_rooms:  # it has every event of the room handed over after the take (kept, or read again)
                    cover[r] = max(position, at) if r in mine else at
            for key, _, payload in more.events:
                if key not in replayed:
                    replayed.add(key)
                    pool[key] = (text_frame(payload), len(payload) + ENTRY_EXTRA)
            budget.shrink(sum(cost for _, cost in pool.values()))
            for r in more.replayed:  # it has every event of those rooms up to the head (read, or left out as had)
                complete[r] = max(complete.get(r, more.head), more.head)
            hub.metrics.replayed.inc(len(more.events))
            if len(more.events) >= found:
                stuck += 1
            found = len(more.events)
            if more.replayed and _reader_position(state) < more.head:
                # The reader hands over late what this read found: dropped, so that it does not fill the hold again.
                hub.catch_up(conn, more.head, tuple(more.replayed))
    # A stream reader behind what the connection has been sent (the client's position in these rooms, the head of a
    # read again in every room it did not reset) hands those events over late: not again.
    catch = {position: list(rooms)}
    for r, head in complete.items():
        catch.setdefault(head, []).append(r)
    for upto, caught in catch.items():
        if _reader_position(state) < upto:
            hub.catch_up(conn, upto, tuple(caught))
    if cover:
        hub.cover(conn, cover)


class _Paced:
    """A replay's frames, written in id order a part at a time, each part when the client has taken the last: a
    replay goes at the client's pace, so a long one is not cut as slow (4008) for being long. A part is at most
    REPLAY_CHUNK bytes and half the bounds of unsent bytes and frames (it may find the kernel's buffers still full
    of the last and stay unsent whole): one system call, not one per event. ``synced`` goes after the events
    replayed (at or before ``last``). Each frame comes with what it holds of the replay's share of the replay memory
    (``budget``), given back once it is written."""

    def __init__(self, conn: Conn, last: tuple[int, int] | None, synced: bytes, stall: float,
                 budget: MemoryHold) -> None:
        hub = conn.hub
        self.conn, self.last, self.synced, self.stall, self.budget = conn, last, synced, stall, budget
        self.most = max(1, hub.queue_messages // 2)
        self.room = max(1, min(REPLAY_CHUNK, hub.queue_bytes // 2))
        self.unsent = False  # a part was written since the transport last held nothing

    def frames(self, items: list[tuple[tuple[int, int], Framed]], *, done: bool) -> list[Framed]:
        """The frames of ``items`` (in id order, each with what it holds of the budget), with ``synced`` before the
        first newer than the last event replayed, or after them all when ``done`` (no replayed event is left to
        write)."""
        out = []
        for key, framed in items:
            if self.synced and (self.last is None or key > self.last):
                out.append((self.synced, 0))
                self.synced = b""
            out.append(framed)
        if done and self.synced:
            out.append((self.synced, 0))
            self.synced = b""
        return out

    def send(self, frames: list[Framed]) -> None:
        """Write ``frames`` at once; what they held of the budget goes back."""
        self.conn.send(b"".join(data for data, _ in frames), len(frames))
        self.budget.shrink(self.budget.size - sum(cost for _, cost in frames))

    def fits(self, frames: list[Framed]) -> bool:
        """Whether ``frames`` may be written at once: with what the connection's transport holds, they stay within
        the bounds of unsent bytes and frames even if the client takes none of them."""
        conn, hub = self.conn, self.conn.hub
        queued = conn.transport.get_write_buffer_size()
        if not queued:
            conn.backlog = 0  # nothing unsent: the frames written so far no longer count against the bound
        size = queued + sum(len(data) for data, _ in frames)
        return size <= hub.queue_bytes and conn.backlog + len(frames) <= hub.queue_messages

    async def write(self, frames: list[Framed]) -> bool:
        """Write ``frames``, each part when the client has taken what the transport held. False when the connection
        is gone or was closed (a client that takes nothing for ``stall`` seconds is closed as slow)."""
        chunk: list[Framed] = []
        size = 0
        for framed in frames:
            if chunk and (size + len(framed[0]) > self.room or len(chunk) >= self.most):
                if not await self._part(chunk):
                    return False
                chunk, size = [], 0
            chunk.append(framed)
            size += len(framed[0])
        return await self._part(chunk) if chunk else self.conn.alive

    async def drained(self) -> bool:
        """Wait until the transport holds nothing (see :func:`_drained`)."""
        self.unsent = False
        return await _drained(self.conn, self.stall)

    async def _part(self, chunk: list[Framed]) -> bool:
        if self.unsent and not await self.drained():
            return False
        self.send(chunk)
        self.unsent = True
        return self.conn.alive


async def _drained(conn: Conn, stall: float) -> bool:
    """Wait until the connection's transport has handed the kernel what it holds, for as long as the client
    keeps reading: a replay goes at the client's pace, so a long one is not cut as slow (4008) for being
    long. A client that takes nothing for ``stall`` seconds (REALTIME_HEARTBEAT_TIMEOUT) is closed as slow.
    False when the connection is gone or was closed."""
    t = conn.transport
    queued = t.get_write_buffer_size()
    if not queued:
        conn.backlog = 0
        return conn.alive
    loop = asyncio.get_running_loop()
    deadline = loop.time() + stall
    pause = 0.001
    while conn.alive:
        await asyncio.sleep(pause)
        now = t.get_write_buffer_size()
        if not now:
            conn.backlog = 0  # nothing unsent: the frames written so far no longer count against the bound
            return conn.alive
        if now < queued:
            queued, deadline, pause = now, loop.time() + stall, 0.001
        elif loop.time() >= deadline:
            conn.hub.slow(conn)
            return False
        else:
            pause = min(pause * 2, 0.05)
    return False


def _reader_position(state: State) -> tuple[int, int]:
    """The id of the last event this server's stream reader handed over ((0, 0) before the first)."""
    return _reader_at(state) or (0, 0)


def _reader_at(state: State) -> tuple[int, int] | None:
    """The id after which this server's stream reader hands over every event: the last it handed over, or where
    it started reading; None while it reads from "$" (whatever comes after its next read)."""
    try:
        return ev.parse_id(state.reader.last.decode())
    except (ev.BadEventId, UnicodeDecodeError):
        return None


def _tracked(state: State, rooms: tuple[str, ...] | list[str] | set[str]) -> tuple[str, ...]:
    """The rooms whose presence is tracked (announcing joins costs a frame per member: not for huge rooms)."""
    prefixes = state.cfg.presence_rooms
    return tuple(r for r in rooms if r.startswith(prefixes))


def _join(state: State, conn: Conn, rooms: tuple[str, ...], after: tuple[int, int] | None = None) -> None:
    state.hub.join(conn, rooms, after)
    tracked = _tracked(state, rooms)
    if conn.user is not None and tracked:
        state.presence.joined(conn.user, tracked)  # written to Redis in the background: never waits


def _leave(state: State, conn: Conn, rooms: tuple[str, ...]) -> None:
    """Out of ``rooms``, as if the client had unsubscribed (without the ``unsubscribed`` frame)."""
    gone = tuple(r for r in rooms if r in conn.session.rooms)
    conn.session.rooms.difference_update(gone)
    state.hub.leave(conn, gone)
    tracked = _tracked(state, gone)
    if conn.user is not None and tracked:
        state.presence.left(conn.user, tracked)


async def _typing(state: State, conn: Conn, room: str) -> None:
    now = time.monotonic()
    if conn.user is None or now - conn.last_typing < state.presence.typing_interval:
        return  # at most one typing notice per interval per connection; the rest are dropped quietly
    conn.last_typing = now
    if not await state.presence.typed(conn.user, room):
        state.hub.metrics.errors.inc(code="unavailable")
        conn.send(text_frame(error_frame("unavailable", "typing was not announced: Redis is unreachable")))
