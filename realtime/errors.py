"""The client-facing error tree: error codes (in ``error`` frames and HTTP bodies) and close codes.

One table says, for every code, what a client should do: ``transient`` (reconnect with backoff and
resume from the last event id) or ``terminal`` (stop; reconnecting the same way fails again). Internal
exception text never reaches a client: each error carries its own short message.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CloseCode:
    code: int
    name: str
    transient: bool
    meaning: str


CLOSE_CODES: dict[str, CloseCode] = {c.name: c for c in (
    CloseCode(1000, "normal", False, "the client or the server ended the session"),
    CloseCode(1001, "going_away", True, "the server is shutting down; resume on another instance"),
    CloseCode(1009, "too_big", True, "a frame was larger than the maximum frame size"),
    CloseCode(1011, "internal", True, "an unexpected error in the server, or no answer to heartbeats"),
    CloseCode(4001, "unauthorized", False, "no valid token: missing, malformed, forged or for another audience"),
    CloseCode(4002, "auth_timeout", False, "no auth frame within the allowed time after connecting"),
    CloseCode(4003, "token_expired", True, "the token expired without a refresh; get a new one, then reconnect"),
    CloseCode(4008, "slow", True, "the client read too slowly and its queue passed its bound; resume"),
    CloseCode(4009, "flood", True, "too many messages too fast; reconnect after a backoff"),
    CloseCode(4010, "too_many_connections", True, "too many connections for this user or address"),
    CloseCode(4011, "idle", True, "no subscription and no message for too long"),
)}


@dataclass(frozen=True)
class ErrorCode:
    name: str
    http: int
    meaning: str


ERROR_CODES: dict[str, ErrorCode] = {e.name: e for e in (
    ErrorCode("bad_json", 400, "the frame is not a JSON object"),
    ErrorCode("bad_frame", 400, "a field is missing or of the wrong type"),
    ErrorCode("unknown_op", 400, "the op is not one the server knows"),
    ErrorCode("bad_room", 400, "a room name does not follow the room grammar"),
    ErrorCode("bad_since", 400, "since is not an event id ('<number>-<number>')"),
    ErrorCode("bad_wait", 400, "wait is not a number of seconds in the allowed range"),
    ErrorCode("forbidden_room", 403, "the room is not readable with this token (another user's room, or a "
                                     "private room without a token)"),
    ErrorCode("too_many_rooms", 400, "the subscription would pass the per-connection bound"),
    ErrorCode("not_subscribed", 400, "sync on a connection that has no subscription"),
    ErrorCode("rate_limited", 429, "too many messages; this one was dropped"),
    ErrorCode("unauthorized", 401, "a token is needed, or the one given is not valid"),
    ErrorCode("token_expired", 401, "the token has expired"),
    ErrorCode("token_mismatch", 403, "a refreshed token must be for the same user"),
    ErrorCode("too_many_connections", 429, "too many connections for this user or address"),
    ErrorCode("unsupported", 501, "the op is known but this server does not serve it"),
    ErrorCode("unavailable", 503, "the server cannot serve this now (history store unreachable, or too many "
                                  "replays at once); retry"),
)}


class ClientError(Exception):
    """A request the server refuses; becomes an ``error`` frame or an HTTP error body."""

    def __init__(self, code: str, message: str) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return ERROR_CODES[self.code].http
