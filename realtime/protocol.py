"""The client protocol as an object you feed: frames in, actions out. No I/O.

The WebSocket handler, the long-poll and SSE handlers and the tests all drive the same :class:`Session`.
``receive(text)`` returns what to do: send a frame, subscribe (with a replay from ``since``), unsubscribe,
sync, close. ``tick()`` checks the clock (auth deadline, token expiry, idle time). Every refusal is a typed
``error`` frame or a close code from :mod:`realtime.errors`; no input makes a session raise.

Client frames (JSON objects with ``op``; ``ref`` is echoed in the reply):

* ``{"op": "auth", "token": "<jwt>"}``: authenticate, or refresh the token (same user)
* ``{"op": "subscribe", "rooms": [...], "since": "<event id>"?}``
* ``{"op": "unsubscribe", "rooms": [...]}``
* ``{"op": "sync", "since": "<event id>"}``: replay every subscribed room after ``since``
* ``{"op": "typing", "room": "post:<id>"}``, ``{"op": "presence", "room": "<room>"}``
* ``{"op": "ping"}``
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from realtime import events as ev
from realtime.auth import Principal, TokenVerifier
from realtime.errors import CLOSE_CODES, ClientError

log = logging.getLogger("realtime.protocol")
UNHANDLED = "the frame could not be handled"  # the message of the error for a frame no check foresaw
PUBLIC_KINDS = ("public", "post:", "author:", "hashtag:")
SAFE_INTEGER = 2**53  # integers below this are exact in every JSON reader; a frame carries no larger time


@dataclass(frozen=True)
class SessionConfig:
    max_rooms: int = 200  # subscriptions per connection
    max_rooms_per_frame: int = 50
    rate: float = 20.0  # messages per second, sustained
    burst: int = 40  # messages allowed at once
    flood_close_after: int = 50  # consecutive rate-limited messages before the connection is closed
    auth_timeout: float = 10.0  # seconds to authenticate after connecting
    idle_timeout: float = 300.0  # seconds with no subscription and no message
    allow_anonymous: bool = False  # public rooms without a token


# -- actions ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Send:
    frame: bytes


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class Subscribe:
    rooms: tuple[str, ...]
    since: str | None
    ref: Any = None


@dataclass(frozen=True)
class Unsubscribe:
    rooms: tuple[str, ...]


@dataclass(frozen=True)
class Sync:
    rooms: tuple[str, ...]
    since: str
    ref: Any = None


@dataclass(frozen=True)
class Typing:
    room: str


@dataclass(frozen=True)
class PresenceQuery:
    room: str
    ref: Any = None


@dataclass(frozen=True)
class Authenticated:
    principal: Principal


Action = Send | Close | Subscribe | Unsubscribe | Sync | Typing | PresenceQuery | Authenticated


def frame(op: str, **fields: Any) -> bytes:
    return orjson.dumps({"op": op, **{k: v for k, v in fields.items() if v is not None}})


def error_frame(code: str, message: str, ref: Any = None) -> bytes:
    return frame("error", ref=ref, code=code, message=message)


def close(name: str, reason: str | None = None) -> Close:
    c = CLOSE_CODES[name]
    return Close(c.code, reason or c.name)


def readable(room: str, principal: Principal | None) -> bool:
    """Whether a principal (None: anonymous) may read a room. ``user:{id}`` is for that user only."""
    if room.startswith("user:"):
        return principal is not None and room == ev.user_room(principal.user)
    return room == "public" or room.startswith(PUBLIC_KINDS[1:])


def _ref(msg: dict[str, Any]) -> Any:
    ref = msg.get("ref")
    if isinstance(ref, (str, int)) and not isinstance(ref, bool) and len(str(ref)) <= 64:
        return ref
    return None


def parse_rooms(value: Any, limit: int) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ClientError("bad_frame", "rooms must be a non-empty array of room names")
    if len(value) > limit:
        raise ClientError("too_many_rooms", f"at most {limit} rooms per frame")
    for room in value:
        if not ev.valid_room(room):
            shown = room[:40] if isinstance(room, str) else type(room).__name__
            raise ClientError("bad_room", f"invalid room name: {shown!r}")
    return tuple(dict.fromkeys(value))


def parse_since(value: Any) -> str:
    try:
        ev.parse_id(value)
    except ev.BadEventId:
        raise ClientError("bad_since", "since must be an event id '<number>-<number>'") from None
    return str(value)


@dataclass
class Session:
    config: SessionConfig
    verifier: TokenVerifier | None
    now: Callable[[], float]
    principal: Principal | None = None
    rooms: set[str] = field(default_factory=set)
    connected_at: float = 0.0
    last_message: float = 0.0
    _tokens: float = 0.0
    _limited: int = 0
    closed: bool = False

    def __post_init__(self) -> None:
        t = self.now()
        self.connected_at = self.last_message = t
        self._tokens = float(self.config.burst)
        self._refilled = t

    @property
    def authenticated(self) -> bool:
        return self.principal is not None

    def start(self, header_token: str | None = None) -> list[Action]:
        """At the upgrade: a token from ``Authorization: Bearer`` authenticates at once."""
        if header_token is None:
            return []
        if self.verifier is None:
            self.closed = True
            return [close("unauthorized", "token authentication is not configured")]
        try:
            self.principal = self.verifier.verify(header_token)
        except ClientError as exc:
            self.closed = True
            return [close("token_expired" if exc.code == "token_expired" else "unauthorized", exc.message)]
        except Exception:  # a token nobody foresaw: refused, never raised (logged: it is a bug to fix)
            log.exception("a header token could not be checked")
            self.closed = True
            return [close("unauthorized", "invalid token")]
        return [Authenticated(self.principal)]

    def receive(self, data: str | bytes) -> list[Action]:
        if self.closed:
            return []
        now = self.now()
        self.last_message = now
        if not self._take_token(now):
            self._limited += 1
            if self._limited >= self.config.flood_close_after:
                self.closed = True
                return [close("flood")]
            return [Send(error_frame("rate_limited", "too many messages; this one was dropped"))]
        self._limited = 0
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            return [Send(error_frame("bad_json", "the frame is not valid JSON"))]
        if not isinstance(msg, dict):
            return [Send(error_frame("bad_json", "the frame must be a JSON object"))]
        ref = _ref(msg)
        try:
            return self._dispatch(msg, ref)
        except ClientError as exc:
            return [Send(error_frame(exc.code, exc.message, ref))]
        except Exception:  # a frame nobody foresaw: refused, never raised (logged: it is a bug to fix)
            log.exception("a client frame could not be handled")
            return [Send(error_frame("bad_frame", UNHANDLED, ref))]

    def tick(self) -> list[Action]:
        """Time-based checks; call every second or so."""
        if self.closed:
            return []
        now = self.now()
        if self.principal is None and not self.config.allow_anonymous:
            if now - self.connected_at >= self.config.auth_timeout:
                self.closed = True
                return [close("auth_timeout")]
            return []
        if self.principal is not None and self.principal.expires is not None and now >= self.principal.expires:
            self.closed = True
            return [close("token_expired")]
        if not self.rooms and now - self.last_message >= self.config.idle_timeout:
            self.closed = True
            return [close("idle")]
        return []

    def _take_token(self, now: float) -> bool:
        elapsed = max(now - self._refilled, 0.0)
        self._refilled = now
        self._tokens = min(self._tokens + elapsed * self.config.rate, float(self.config.burst))
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _dispatch(self, msg: dict[str, Any], ref: Any) -> list[Action]:
        op = msg.get("op")
        if not isinstance(op, str):
            raise ClientError("bad_frame", "op must be a string naming an operation")
        if op == "auth":
            return self._auth(msg.get("token"), ref)
        if op == "ping":
            return [Send(frame("pong", ref=ref))]
        if op not in ("subscribe", "unsubscribe", "sync", "typing", "presence"):
            raise ClientError("unknown_op", f"unknown op {op[:32]!r}")
        if self.principal is None and not self.config.allow_anonymous:
            raise ClientError("unauthorized", "authenticate first: send {\"op\": \"auth\", \"token\": ...}")
        if op == "subscribe":
            rooms = parse_rooms(msg.get("rooms"), self.config.max_rooms_per_frame)
            since = parse_since(msg["since"]) if msg.get("since") is not None else None
            for room in rooms:
                if not readable(room, self.principal):
                    raise ClientError("forbidden_room", f"not allowed to read {room}")
            new = [r for r in rooms if r not in self.rooms]
            if len(self.rooms) + len(new) > self.config.max_rooms:
                raise ClientError("too_many_rooms", f"at most {self.config.max_rooms} rooms per connection")
            self.rooms.update(rooms)
            return [Subscribe(rooms, since, ref)]
        if op == "unsubscribe":
            rooms = parse_rooms(msg.get("rooms"), self.config.max_rooms_per_frame)
            # Idempotent: every room of the frame is unsubscribed after it, whether or not it was before.
            gone = tuple(r for r in rooms if r in self.rooms)
            self.rooms.difference_update(gone)
            return [Unsubscribe(gone), Send(frame("unsubscribed", ref=ref, rooms=list(rooms)))]
        if op == "sync":
            since = parse_since(msg.get("since"))
            if not self.rooms:
                raise ClientError("not_subscribed", "subscribe to rooms before sync")
            return [Sync(tuple(sorted(self.rooms)), since, ref)]
        target = msg.get("room")
        if not isinstance(target, str) or not ev.valid_room(target):
            raise ClientError("bad_room", "room must be a valid room name")
        room = target
        if not readable(room, self.principal):
            raise ClientError("forbidden_room", f"not allowed to read {room}")
        if op == "typing":
            if self.principal is None or not room.startswith("post:"):
                raise ClientError("forbidden_room", "typing needs a token and a post room")
            return [Typing(room)]
        return [PresenceQuery(room, ref)]

    def _auth(self, token: Any, ref: Any) -> list[Action]:
        if self.verifier is None:
            raise ClientError("unauthorized", "token authentication is not configured")
        try:
            principal = self.verifier.verify(token)
        except ClientError as exc:
            if self.principal is None:
                self.closed = True
                return [Send(error_frame(exc.code, exc.message, ref)),
                        close("token_expired" if exc.code == "token_expired" else "unauthorized")]
            raise
        if self.principal is not None and principal.user != self.principal.user:
            raise ClientError("token_mismatch", "a refreshed token must be for the same user")
        self.principal = principal
        return [Authenticated(principal),
                Send(frame("authenticated", ref=ref, user=principal.user, expires=_shown_expiry(principal.expires)))]


def _shown_expiry(expires: float | None) -> int | None:
    """The ``expires`` of an ``authenticated`` reply: whole seconds (a NumericDate may have a fraction; rounded
    down, a client refreshes a moment early), and only a safe integer, one that every JSON reader (JavaScript's
    included) reads exactly. A later ``exp`` (1e30, 2**64: no deadline a client acts on) is left out."""
    if expires is None or not 0 <= expires < SAFE_INTEGER:  # (NaN and infinities fail the comparison)
        return None
    return math.floor(expires)
