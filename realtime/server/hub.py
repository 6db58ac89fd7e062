"""Rooms and connections of one server process, and the fan-out of events to them.

Each event's frame is built once per room and the same bytes are written to every subscriber's
transport: no ``await``, no lock and no serialisation per connection. A connection whose state has left
OPEN is skipped; one whose transport holds more than its bound of unsent bytes or messages is closed as
slow, so a slow client never stalls the others. While a connection replays history, live events for it
are kept aside (bounded like its queue: past the bound the hold keeps no more and notes where it stopped, for the
replay to read the rest from history) and merged into the replay, so it sees no gap and no duplicate; and a
replay leaves out what the connection's other rooms have already sent it (each room's coverage, recorded when it
is joined or replayed: see ``Conn.covered``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from websockets.protocol import State

from realtime import events as ev
from realtime.errors import CLOSE_CODES
from realtime.metrics import STAGE_LATENCY, Registry
from realtime.protocol import Session, frame
from realtime.resume import Spans
from realtime.tasks import cancel_all

log = logging.getLogger("realtime.server")
OPEN = State.OPEN
ClosingAction = Callable[["Conn", int, str], None]
# A live event kept for a connection during its replay: (id, the room it is labelled with, its frame, all its
# rooms); a reset for every room is ("*" room, rooms ("*",)).
Kept = tuple[tuple[int, int], str, bytes, tuple[str, ...] | list[str]]
Key = tuple[int, int]
NOWHERE = (-1, -1)  # before every id


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (RFC 6455 §5.2) around ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def close_frame(code: int, reason: str) -> bytes:
    payload = code.to_bytes(2, "big") + reason.encode()[:120]
    return bytes((0x88, len(payload))) + payload


def _id_key(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    head, _, tail = text.partition("-")
    return int(head), int(tail or 0)


class Conn:
    """One WebSocket connection: its transport, its session, and its replay state."""

    __slots__ = ("address", "alive", "backlog", "catch", "covered", "fd", "hub", "last_typing", "nrooms", "pending",
                 "pending_bytes", "proto", "session", "spilled", "transport", "user", "ws")

    def __init__(self, hub: Hub, ws: Any, session: Session, address: str) -> None:
        self.hub = hub
        self.ws = ws
        self.proto = ws.ws_proto
        self.transport: asyncio.Transport = ws.io_proto.transport
        self.session = session
        self.address = address
        self.user: str | None = None
        self.alive = True
        self.backlog = 0  # frames written while the transport still held unsent bytes
        self.pending: list[Kept] | None = None  # live events kept during a replay
        self.pending_bytes = 0
        self.spilled: Key | None = None  # the first live event not kept, past the bounds (the rest were not either)
        # After replays on a server whose stream reader is behind the client's position: (the furthest of those
        # positions, each replayed room's own). Live events of a room at or before its position are the client's
        # already: dropped.
        self.catch: tuple[Key, dict[str, Key]] | None = None
        # Per room, the id after which the connection has been sent every event of the room the hub handed over:
        # where the stream reader was when it joined live, or the since of the room's replay. Recorded at joins
        # and replays (never per event); a room left is forgotten. A replay leaves out what these rooms sent.
        self.covered: dict[str, Key] = {}
        self.last_typing = 0.0
        self.fd = -1  # fast path: our duplicate of the socket's descriptor, while its transport holds nothing
        self.nrooms = 0  # the hub's rooms it is a member of

    def send(self, data: bytes, frames: int = 1) -> bool:
        """Write one or more whole frames (``frames`` of them, each counted against the connection's bound of
        unsent messages); close the connection as slow past its bounds. False when the connection is gone and
        nothing was written."""
        if not self.alive:
            return False
        if not self.hub.fast and self.proto.state is not OPEN:
            self.hub.forget(self)
            return False
        fd = self.fd
        if fd >= 0:
            self.hub.write_direct(self, fd, data)
            return self.alive
        t = self.transport
        t.write(data)
        queued = t.get_write_buffer_size()
        if queued:
            self.backlog += frames
            if queued > self.hub.queue_bytes or self.backlog > self.hub.queue_messages:
                self.hub.slow(self)
        else:
            self.backlog = 0
        return True


class Hold:
    """A replay's hold on a connection (see :meth:`Hub.holding`)."""

    __slots__ = ("conn", "hub", "released", "spilled")

    def __init__(self, hub: Hub, conn: Conn) -> None:
        self.hub = hub
        self.conn = conn
        self.released = False
        self.spilled: Key | None = None  # see take()

    def take(self) -> list[Kept]:
        """The live events kept since the hold began (or since the last take), in order; the hold goes on, empty.
        ``spilled`` then says where they stopped: the id of the first live event not kept, past the bounds (every
        event handed over after it was not kept either), or None when none was left out."""
        if self.released:
            return []
        conn = self.conn
        pending, conn.pending, conn.pending_bytes = conn.pending or [], [], 0
        self.spilled, conn.spilled = conn.spilled, None
        return pending

    def release(self) -> list[Kept]:
        """End the hold (once; later calls return nothing): the live events kept meanwhile, in order (and
        ``spilled``, as :meth:`take` sets it)."""
        if self.released:
            return []
        self.released = True
        conn = self.conn
        pending, conn.pending, conn.pending_bytes = conn.pending or [], None, 0
        self.spilled, conn.spilled = conn.spilled, None
        self.hub.touch(conn)
        return pending


class Room:
    __slots__ = ("fds", "listeners", "members", "others", "rest", "snap", "solo")

    def __init__(self) -> None:
        self.members: dict[Conn, None] = {}
        # Snapshots of the members, rebuilt after any change (snap None means stale): all of them; the
        # descriptors of those written directly (fds), and of those among them that are in no other room (solo);
        # the members not in fds (rest: held for a replay, catching up, or writing through their transport); the
        # members not in solo (others).
        self.snap: tuple[Conn, ...] | None = None
        self.fds: tuple[int, ...] = ()
        self.solo: tuple[int, ...] = ()
        self.rest: tuple[Conn, ...] = ()
        self.others: tuple[Conn, ...] = ()
        self.listeners: dict[Any, None] = {}  # long-poll and SSE clients (transports.PollWait, SseStream)

    def split(self) -> tuple[Conn, ...]:
        fds, solo, rest, others = [], [], [], []
        for conn in self.members:
            if conn.fd >= 0 and conn.pending is None and conn.catch is None and conn.alive:
                fds.append(conn.fd)
                if conn.nrooms == 1:
                    solo.append(conn.fd)
                    continue
            else:
                rest.append(conn)
            others.append(conn)
        self.fds, self.solo, self.rest, self.others = tuple(fds), tuple(solo), tuple(rest), tuple(others)
        snap = self.snap = tuple(self.members)
        return snap


class ServerMetrics:
    def __init__(self, hub: Hub) -> None:
        r = self.registry = Registry()
        self.connections = r.gauge("realtime_connections", "open WebSocket connections", read=lambda: len(hub.conns))
        self.subscriptions = r.gauge("realtime_subscriptions", "room subscriptions of open connections",
                                     read=lambda: sum(len(c.session.rooms) for c in hub.conns))
        self.rooms = r.gauge("realtime_rooms", "rooms with at least one subscriber here", read=lambda: len(hub.rooms))
        self.events = r.counter("realtime_events_received_total", "events read from the global stream")
        self.deliveries = r.counter("realtime_deliveries_total", "event frames written to connections")
        self.slow = r.counter("realtime_slow_closes_total", "connections closed because they read too slowly")
        self.closes = r.counter("realtime_closes_total", "connections closed by the server, by reason")
        self.replays = r.counter("realtime_replays_total", "replays served (subscribe or sync with since)")
        self.replayed = r.counter("realtime_replayed_events_total", "events sent from history")
        self.rereads = r.counter("realtime_replay_rereads_total",
                                 "reads of history again by replays whose live events kept aside passed the bounds")
        self.resets = r.counter("realtime_resets_total", "reset frames sent to clients, by reason")
        self.auth_failures = r.counter("realtime_auth_failures_total", "refused tokens, by reason")
        self.refused = r.counter("realtime_refused_connections_total", "connections refused at the door, by reason")
        self.errors = r.counter("realtime_client_errors_total", "error frames sent, by code")
        self.presence_errors = r.counter("realtime_presence_errors_total",
                                         "presence and typing writes Redis did not take (retried or expired), by what")
        self.reader_lost = r.counter("realtime_xread_reconnects_total",
                                     "times the stream reader lost its Redis connection (it then reconnects)")
        self.lag = r.gauge("realtime_xread_lag_seconds",
                           "now minus the wall time of the last event read from the stream")
        self.fast = r.gauge("realtime_fast_path", "1 when the WebSocket fast path (realtime/server/lean.py) is on",
                            read=lambda: 1.0 if hub.fast else 0.0)
        self.polls = r.counter("realtime_polls_total", "long-poll requests answered")
        self.sse_streams = r.counter("realtime_sse_streams_total", "SSE streams opened")
        self.listeners = r.gauge("realtime_http_listeners", "long-poll and SSE clients waiting",
                                 read=lambda: len(hub.listeners))
        # The last two stages of a change's way to clients (the watcher measures the first two, see docs/metrics.md)
        stages = r.histogram(STAGE_LATENCY, "seconds each stage of a change's way to clients took, by stage")
        self.from_redis = stages.labels(stage="redis_to_server")  # appended to the stream -> read here (wall)
        self.to_socket = stages.labels(stage="server_to_socket")  # read here -> written to a room's subscribers


class Hub:
    def __init__(self, *, queue_bytes: int, queue_messages: int, send_buffer: int = 0,
                 close_timeout: float = 5.0, fast: bool = False) -> None:
        # fast: connections come from lean.FastProtocol, which reports at once when one leaves OPEN (so the
        # fan-out need not ask each connection's state), and frames go straight to each socket with
        # os.write() while its transport holds nothing (see add()).
        self.fast = fast
        self.rooms: dict[str, Room] = {}
        self.conns: set[Conn] = set()
        self.by_user: dict[str, int] = {}
        self.by_address: dict[str, int] = {}  # WebSockets, long-polls and SSE streams
        self.websockets_by_address: dict[str, int] = {}  # WebSockets alone (the door counts the others)
        self.queue_bytes = queue_bytes
        self.queue_messages = queue_messages
        self.send_buffer = send_buffer
        self.close_timeout = close_timeout
        self.listeners: set[Any] = set()
        self.by_fd: dict[int, Conn] = {}
        self.metrics = ServerMetrics(self)

    # -- membership ------------------------------------------------------------------------------------
    def add(self, conn: Conn) -> None:
        self.conns.add(conn)
        self.by_address[conn.address] = self.by_address.get(conn.address, 0) + 1
        self.websockets_by_address[conn.address] = self.websockets_by_address.get(conn.address, 0) + 1
        t = conn.transport
        sock = t.get_extra_info("socket")
        if self.send_buffer and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        if self.fast:
            conn.ws.io_proto.conn = conn  # told when it leaves OPEN, and of its transport's pauses
            if sock is not None and t.get_extra_info("ssl_object") is None:
                # Direct writes may only happen while the transport holds nothing, or they would overtake
                # its bytes: with both water marks at 0, the transport says (pause_writing) as soon as it
                # keeps anything, and (resume_writing) once it has sent it all.
                t.set_write_buffer_limits(high=0, low=0)
                conn.fd = os.dup(sock.fileno())
                self.by_fd[conn.fd] = conn

    def queued(self, conn: Conn) -> None:
        """The transport keeps bytes: write through it until it has sent them (the fd stays ours)."""
        if conn.fd >= 0:
            conn.backlog = 0
            conn.fd = -conn.fd - 2  # remembered, negative: not in use
            self.touch(conn)

    def direct(self, conn: Conn) -> None:
        if conn.alive and conn.fd <= -2:
            conn.fd = -conn.fd - 2
            self.touch(conn)

    def touch(self, conn: Conn) -> None:
        """The connection's way of being written changed: its rooms' snapshots are stale."""
        for name in conn.session.rooms:
            room = self.rooms.get(name)
            if room is not None:
                room.snap = None

    @contextlib.contextmanager
    def holding(self, conn: Conn) -> Iterator[Hold]:
        """While a replay runs, live events for ``conn`` are kept aside, within the bounds of its queue (past
        them no more are kept: :attr:`Hold.spilled` says from which event on history has to be read again). The
        caller takes what is kept with :meth:`Hold.take` and ends the hold with
        :meth:`Hold.release`, which hands it the kept events to merge; if it leaves the block any other way
        (an exception, a cancellation), the hold ends all the same and the kept events are dropped: the caller
        then owes the client an error or a close, never silence."""
        if conn.pending is not None:
            raise RuntimeError("a connection is held by one replay at a time")
        conn.pending, conn.pending_bytes, conn.spilled = [], 0, None
        self.touch(conn)
        hold = Hold(self, conn)
        try:
            yield hold
        finally:
            hold.release()

    def catch_up(self, conn: Conn, position: tuple[int, int], rooms: tuple[str, ...]) -> None:
        """The client has every event of ``rooms`` up to ``position``, which this server's stream reader has not
        reached yet: until it does, live events of those rooms at or before it are dropped for this connection
        (they would come twice). Rooms it already catches up in keep their own position (the further one)."""
        caught = dict(conn.catch[1]) if conn.catch is not None else {}
        for name in rooms:
            caught[name] = max(caught.get(name, position), position)
        if caught:
            conn.catch = (max(caught.values()), caught)
        self.touch(conn)

    def cover(self, conn: Conn, rooms: dict[str, Key]) -> None:
        """After a replay: the connection has been sent every event of each of ``rooms`` after the id given (that
        it is still in)."""
        for name, after in rooms.items():
            room = self.rooms.get(name)
            if room is not None and conn in room.members:
                conn.covered[name] = after

    def delivered(self, conn: Conn, position: Key | None, besides: tuple[str, ...]) -> Spans:
        """What the connection has been sent of its rooms but ``besides``: per room, the span of ids (after, upto]
        of which it has every event of the room. ``position`` is the stream reader's (the hub has handed over
        every event up to it; None: nothing yet); a room the connection catches up in it has up to its
        catch-up position, when that is further."""
        caught = conn.catch[1] if conn.catch is not None else {}
        out: Spans = {}
        for name, after in conn.covered.items():
            if name in besides:
                continue
            upto = caught.get(name)
            if position is not None and (upto is None or position > upto):
                upto = position
            if upto is not None and upto > after:
                out[name] = (after, upto)
        return out

    def keep(self, conn: Conn, item: Kept) -> None:
        """A live event for a connection that is held by a replay (kept, within the bounds of its queue: past
        them it and those after it are not, and the hold notes its id, see :meth:`holding`) or catching up (see
        :meth:`catch_up`)."""
        catch = conn.catch
        if catch is not None:
            top, caught = catch
            key, _, data, event_rooms = item
            if key > top:  # the reader is past the client's positions: live as usual from here on
                conn.catch = None
                self.touch(conn)
            elif "*" in event_rooms:
                if key <= min(caught.values()):
                    return  # a reset marker every room's replay has answered already
            elif any(key <= caught.get(r, NOWHERE) for r in event_rooms):
                return  # the client has it: it has every event of that room up to its position
            if conn.pending is None:
                conn.send(data)
                return
        pending = conn.pending
        if pending is None or not conn.alive or conn.spilled is not None:
            return
        size = conn.pending_bytes + len(item[2])
        if size > self.queue_bytes or len(pending) >= self.queue_messages:
            conn.spilled = item[0]  # the replay reads it, and what comes after it, from history
            return
        pending.append(item)
        conn.pending_bytes = size

    def write_direct(self, conn: Conn, fd: int, data: bytes) -> None:
        try:
            k = os.write(fd, data)
        except BlockingIOError:
            k = 0
        except OSError:  # the peer is gone; the transport will notice and close
            self.forget(conn)
            return
        if k != len(data):
            conn.transport.write(data[k:])  # the rest through the transport: pause_writing follows

    def set_user(self, conn: Conn, user: str) -> None:
        if conn.user == user:
            return
        if conn.user is not None:
            self._dec(self.by_user, conn.user)
        conn.user = user
        self.by_user[user] = self.by_user.get(user, 0) + 1

    def join(self, conn: Conn, rooms: tuple[str, ...] | list[str], after: Key | None = None) -> None:
        """Into ``rooms``. ``after``: where the stream reader is, for a live join (the connection is sent every
        event of a room it joins now after it)."""
        n = conn.nrooms
        for name in rooms:
            room = self.rooms.get(name)
            if room is None:
                room = self.rooms[name] = Room()
            if conn not in room.members:
                room.members[conn] = None
                room.snap = None
                conn.nrooms += 1
                if after is not None:
                    conn.covered[name] = after
        if conn.nrooms != n:
            self.touch(conn)  # alone in a room or not: how its other rooms write to it (see on_entries)

    def leave(self, conn: Conn, rooms: tuple[str, ...] | list[str] | set[str]) -> None:
        n = conn.nrooms
        for name in rooms:
            conn.covered.pop(name, None)
            room = self.rooms.get(name)
            if room is not None and room.members.pop(conn, 0) is None:
                room.snap = None
                conn.nrooms -= 1
                if not room.members and not room.listeners:
                    del self.rooms[name]
        if conn.nrooms != n:
            self.touch(conn)

    def listen(self, listener: Any) -> None:
        self.listeners.add(listener)
        for name in listener.rooms:
            room = self.rooms.get(name)
            if room is None:
                room = self.rooms[name] = Room()
            room.listeners[listener] = None

    def unlisten(self, listener: Any) -> None:
        self.listeners.discard(listener)
        for name in listener.rooms:
            room = self.rooms.get(name)
            if room is not None:
                room.listeners.pop(listener, None)
                if not room.members and not room.listeners:
                    del self.rooms[name]

    def deliver_ephemeral(self, name: str, payload: bytes, skip: str | None = None) -> None:
        """Presence and typing: to the room's WebSocket members here, as they are (no id, no replay), but to
        the connections of user ``skip`` (the typist does not hear their own typing)."""
        room = self.rooms.get(name)
        if room is None or not room.members:
            return
        data = text_frame(payload)
        for conn in tuple(room.members):
            if skip is None or conn.user != skip:
                conn.send(data)

    def forget(self, conn: Conn) -> None:
        """The connection is gone (or going): out of every room, out of the counts."""
        if conn.fd != -1:
            fd, conn.fd = (conn.fd if conn.fd >= 0 else -conn.fd - 2), -1
            self.touch(conn)
            self.by_fd.pop(fd, None)
            with contextlib.suppress(OSError):
                os.close(fd)
        if conn not in self.conns:
            conn.alive = False
            return
        conn.alive = False
        self.leave(conn, conn.session.rooms)
        self.conns.discard(conn)
        self._dec(self.by_address, conn.address)
        self._dec(self.websockets_by_address, conn.address)
        if conn.user is not None:
            self._dec(self.by_user, conn.user)

    def count(self, user: str | None, address: str) -> None:
        """A long-poll or SSE stream in flight counts as a connection of its user and address (see forget)."""
        self.by_address[address] = self.by_address.get(address, 0) + 1
        if user is not None:
            self.by_user[user] = self.by_user.get(user, 0) + 1

    def uncount(self, user: str | None, address: str) -> None:
        self._dec(self.by_address, address)
        if user is not None:
            self._dec(self.by_user, user)

    @staticmethod
    def _dec(counts: dict[str, int], key: str) -> None:
        n = counts.get(key, 0) - 1
        if n > 0:
            counts[key] = n
        else:
            counts.pop(key, None)

    # -- closing ---------------------------------------------------------------------------------------
    def slow(self, conn: Conn) -> None:
        """Past its bounds: out of every room now; a close frame goes behind what is queued, and the
        connection is cut if it still has not drained after the close timeout."""
        self.forget(conn)
        self.metrics.slow.inc()
        self.metrics.closes.inc(reason="slow")
        code = CLOSE_CODES["slow"]
        t = conn.transport
        with contextlib.suppress(Exception):
            t.write(close_frame(code.code, code.name))
            t.close()
        asyncio.get_running_loop().call_later(self.close_timeout, self._abort, t)

    def abort_later(self, t: asyncio.Transport) -> None:
        """``t`` is closing: cut it if it has not sent what it holds within the close timeout."""
        asyncio.get_running_loop().call_later(self.close_timeout, self._abort, t)

    @staticmethod
    def _abort(t: asyncio.Transport) -> None:
        if t.is_closing() and t.get_write_buffer_size() == 0:
            return
        with contextlib.suppress(Exception):
            sock = t.get_extra_info("socket")
            if sock is not None:  # RST: the kernel drops what it still holds for this client
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            t.abort()

    # -- fan-out ---------------------------------------------------------------------------------------
    def on_entries(self, entries: list[tuple[bytes, list[bytes]]]) -> None:
        """A batch of the global stream (one read): each event to the local subscribers of its rooms.

        The events of a read (between two resets) are written together: a connection gets all of its frames of
        the batch in one write, in id order, so that a server behind the stream catches up with fewer, larger
        writes instead of staying behind at one write per event and connection. Resets are handed over in their
        place among the events.

        Two stages of latency are observed here: from each entry's append to Redis (its field ``w``, Redis's
        clock in microseconds) to this batch's read, and from this batch's read to the moment an event's frame
        was written to the last of a room's subscribers (once per event and room, not per delivery: the time
        taken twice per delivery would be a few per cent of the fan-out's cost)."""
        metrics = self.metrics
        now, read = time.time(), time.monotonic()
        from_redis = metrics.from_redis
        delivered = 0
        run: list[tuple[tuple[int, int], list[str], list[tuple[Room, str, bytes]]]] = []
        for entry_id, fields in entries:
            try:
                raw = fields[1] if fields[0] == b"e" else dict(zip(fields[::2], fields[1::2], strict=False))[b"e"]
                envelope = orjson.loads(raw)
                kind = envelope["type"]
                rooms = envelope["rooms"]
            except Exception:
                log.warning("skipping malformed stream entry %r", entry_id)
                continue
            stamp = fields[5] if len(fields) > 5 and fields[4] == b"w" else b""
            if stamp.isdigit():
                from_redis.observe(now - int(stamp) / 1_000_000)
            metrics.lag.set(max(now - envelope.get("ts", 0) / 1000, 0.0))
            if kind == ev.RESET:
                delivered += self._fan_out(run, read)
                run = []
                self.reset_all(envelope, entry_id)
                continue
            key = _id_key(entry_id)
            targets = []
            for name in rooms:
                room = self.rooms.get(name)
                if room is None:
                    continue
                payload = orjson.dumps({"op": "event", "id": envelope["id"], "type": kind, "room": name,
                                        "data": envelope.get("data"), "ts": envelope.get("ts")})
                if room.listeners:
                    for listener in tuple(room.listeners):
                        listener.feed(key, name, payload)
                targets.append((room, name, text_frame(payload)))
            if targets:
                run.append((key, rooms, targets))
        delivered += self._fan_out(run, read)
        metrics.events.inc(len(entries))
        metrics.deliveries.inc(delivered)

    def _fan_out(self, run: list[tuple[tuple[int, int], list[str], list[tuple[Room, str, bytes]]]],
                 read: float) -> int:
        """Write a run of events (id order, each with its rooms here and its frame for each) to the rooms' WebSocket
        members; the number of event frames written.

        Each room's frames of the run, joined, go to the descriptors of its members in no other room, one
        write each (when the run concerns a single room here, to every member written directly). Every other
        member gets its frames of the run, each event once (labelled with the first of its rooms the member is
        in), in id order, in one write; while held by a replay or catching up, they are kept one by one."""
        if not run:
            return 0
        by_room: dict[Room, list[bytes]] = {}
        for _, _, targets in run:
            for room, _, data in targets:
                frames = by_room.get(room)
                if frames is None:
                    by_room[room] = [data]
                else:
                    frames.append(data)
        single = len(by_room) == 1  # then no member can get an event of the run through another room
        # Who is written how, as it stands before the first write: a connection whose write falls short moves to
        # its transport (queued) meanwhile, and must not get the same frames again as one of the others.
        ways: dict[Room, tuple[Conn, ...]] = {}
        delivered = 0
        for room in by_room:
            if room.snap is None:
                room.split()
            ways[room] = room.rest if single else room.others
        for room, frames in by_room.items():
            fds = room.fds if single else room.solo
            if fds:
                blob = frames[0] if len(frames) == 1 else b"".join(frames)
                delivered += self._write_all(fds, blob) * len(frames)
        batched: dict[Conn, list[bytes]] = {}
        for key, rooms, targets in run:
            seen: set[Conn] | None = set() if len(targets) > 1 else None
            for room, name, data in targets:
                for conn in ways[room]:
                    if seen is not None:
                        if conn in seen:
                            continue
                        seen.add(conn)
                    if conn.pending is not None or conn.catch is not None:
                        self.keep(conn, (key, name, data, rooms))
                        continue
                    frames = batched.get(conn)
                    if frames is None:
                        batched[conn] = [data]
                    else:
                        frames.append(data)
        for conn, frames in batched.items():
            if conn.send(frames[0] if len(frames) == 1 else b"".join(frames), len(frames)):
                delivered += len(frames)
        taken = time.monotonic() - read
        self.metrics.to_socket.observe(taken, sum(len(targets) for _, _, targets in run))
        return delivered

    def _write_all(self, fds: tuple[int, ...], data: bytes) -> int:
        """``data`` to each descriptor, in one tight loop; how many took it (the rest of a short write goes
        through the connection's transport, which then pauses: queued mode)."""
        n = len(data)
        oswrite = os.write
        short = None
        for fd in fds:
            try:
                k = oswrite(fd, data)
            except BlockingIOError:
                k = 0
            except OSError:
                k = -1
            if k != n:
                if short is None:
                    short = []
                short.append((fd, k))
        delivered = len(fds)
        for fd, k in short or ():
            conn = self.by_fd.get(fd)
            if conn is None:
                continue
            if k < 0:  # the peer is gone; the transport will notice and close
                self.forget(conn)
                delivered -= 1
            else:
                conn.transport.write(data[k:])
        return delivered

    def reset_all(self, envelope: dict[str, Any], entry_id: bytes) -> None:
        reason = str((envelope.get("data") or {}).get("reason", "history_reset"))
        for listener in tuple(self.listeners):
            listener.reset(_id_key(entry_id), reason)
        for conn in list(self.conns):
            if not conn.session.rooms:
                continue
            data = text_frame(frame("reset", rooms=sorted(conn.session.rooms), reason=reason,
                                    id=entry_id.decode()))
            if conn.pending is not None or conn.catch is not None:
                self.keep(conn, (_id_key(entry_id), "*", data, ("*",)))
            else:
                conn.send(data)
            self.metrics.resets.inc(reason=reason)

    async def close_all(self, code: int, reason: str, grace: float) -> None:
        """Close every connection (shutdown), waiting at most ``grace`` seconds for the close handshakes."""
        conns = list(self.conns)
        for conn in conns:
            self.forget(conn)
            # The close frame now, before the first await: nothing the server does meanwhile can close the
            # connection with another code first.
            with contextlib.suppress(Exception):
                proto = conn.ws.ws_proto
                if proto.state is OPEN:
                    proto.send_close(code, reason)
                    for data in proto.data_to_send():
                        conn.transport.write(data)

        async def one(conn: Conn) -> None:
            with contextlib.suppress(Exception):
                await conn.ws.close(code, reason)

        if conns:
            closing = [asyncio.ensure_future(one(c)) for c in conns]
            _, late = await asyncio.wait(closing, timeout=max(grace, 0.01))
            await cancel_all(late)  # past the grace: their sockets are closed with the server
