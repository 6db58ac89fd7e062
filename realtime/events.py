"""The shared event model: what watchers publish and servers deliver.

Pure: no I/O, no driver imports. An :class:`Event` has an id (a Redis stream id derived from the change
that caused it), a type, the rooms it goes to, a payload built from an allow-list of document fields, and
the change's wall time in milliseconds.

Event ids (DESIGN invariant 3): the first half is the change's ``clusterTime`` as the 64-bit number
``seconds << 32 | increment``; the second half is ``position * EVENTS_PER_CHANGE + k``, where
``position`` is the change's index among the changes of the stream that share that ``clusterTime`` and
``k`` the event's index among the change's own events. Replaying the same changes gives the same ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Final, NamedTuple

from realtime import ids

EVENTS_PER_CHANGE: Final = 8

# Event types, from the original design.
POST_CREATED: Final = "post:created"
POST_UPDATED: Final = "post:updated"
POST_DELETED: Final = "post:deleted"
POST_LIKED: Final = "post:liked"
POST_UNLIKED: Final = "post:unliked"
COMMENT_ADDED: Final = "comment:added"
COMMENT_UPDATED: Final = "comment:updated"
COMMENT_DELETED: Final = "comment:deleted"
NOTIFICATION_NEW: Final = "notification:new"
# A marker, not an event of the feed: the history of some rooms was lost; clients must refetch.
RESET: Final = "reset"

STORED_TYPES: Final = frozenset({
    POST_CREATED, POST_UPDATED, POST_DELETED, POST_LIKED, POST_UNLIKED, COMMENT_ADDED, COMMENT_UPDATED,
    COMMENT_DELETED, NOTIFICATION_NEW, RESET,
})
# Ephemeral types servers produce (never stored, never replayed).
USER_ONLINE: Final = "user:online"
USER_OFFLINE: Final = "user:offline"
USER_TYPING: Final = "user:typing"
USER_STOPPED_TYPING: Final = "user:stopped_typing"

ALL_ROOMS: Final = "*"  # in a reset marker: every room

MAX_ROOM_LENGTH: Final = 100
_ID_PART = rf"(?:{ids.PATTERN})"  # an id's text (realtime/ids.py)
_TAG = r"[^\W_][\w-]{0,63}"  # Unicode letters and digits, then letters, digits, _ and -
ROOM_PATTERN: Final = re.compile(
    rf"public|post:{_ID_PART}|author:{_ID_PART}|user:{_ID_PART}|hashtag:{_TAG}", re.UNICODE
)
_TAG_PATTERN = re.compile(_TAG, re.UNICODE)


def valid_room(name: object) -> bool:
    return isinstance(name, str) and len(name) <= MAX_ROOM_LENGTH and ROOM_PATTERN.fullmatch(name) is not None


def normalise_tag(tag: object) -> str | None:
    """A hashtag as it appears in a room name (lowercase, without ``#``), or None when invalid."""
    if not isinstance(tag, str):
        return None
    found = _TAGS.get(tag, "")  # "" is no tag's
    if found == "":
        if len(_TAGS) >= 100_000:
            _TAGS.clear()
        text = tag.strip().lstrip("#").lower()
        found = _TAGS[tag] = text if _TAG_PATTERN.fullmatch(text) else None
    return found


_TAGS: dict[str, str | None] = {}  # the last hashtags seen, as they appear in a room name (None: invalid)


PUBLIC: Final = "public"


# The ids in these room names are ids' texts (realtime.ids.id_text): never a value's str().

def post_room(post_id: str) -> str:
    return f"post:{post_id}"


def author_room(user_id: str) -> str:
    return f"author:{user_id}"


def user_room(user_id: str) -> str:
    return f"user:{user_id}"


def hashtag_room(tag: str) -> str:
    return f"hashtag:{tag}"


# -- ids ---------------------------------------------------------------------------------------------------

def time_part(seconds: int, increment: int) -> int:
    return (seconds << 32) | increment


def make_id(seconds: int, increment: int, position: int, k: int) -> str:
    if not 0 <= k < EVENTS_PER_CHANGE:
        raise ValueError(f"a change has at most {EVENTS_PER_CHANGE} events")
    return f"{time_part(seconds, increment)}-{position * EVENTS_PER_CHANGE + k}"


class BadEventId(ValueError):
    pass


def parse_id(event_id: object) -> tuple[int, int]:
    """``"<ms>-<seq>"`` as a pair of integers; raises :class:`BadEventId` for anything else."""
    if not isinstance(event_id, str) or len(event_id) > 41:
        raise BadEventId("an event id is a string '<number>-<number>'")
    head, sep, tail = event_id.partition("-")
    if not sep or not head.isdigit() or not tail.isdigit() or not head.isascii() or not tail.isascii():
        raise BadEventId(f"malformed event id {event_id!r}")
    ms, seq = int(head), int(tail)
    if ms >= 1 << 64 or seq >= 1 << 64:
        raise BadEventId(f"event id {event_id!r} out of range")
    return ms, seq


def id_before(key: tuple[int, int]) -> tuple[int, int]:
    """The id just before ``key`` (``(0, 0)`` for the first): a read of a stream after it begins with ``key``."""
    ms, seq = key
    if seq:
        return ms, seq - 1
    return (ms - 1, (1 << 64) - 1) if ms else (0, 0)


def id_cluster_time(event_id: str) -> tuple[int, int]:
    """The ``(seconds, increment)`` of the change an event id was derived from."""
    ms, _ = parse_id(event_id)
    return ms >> 32, ms & 0xFFFFFFFF


def id_position(event_id: str) -> int:
    """The change's position among those sharing its cluster time."""
    return parse_id(event_id)[1] // EVENTS_PER_CHANGE


# -- events ------------------------------------------------------------------------------------------------

class Counter(NamedTuple):  # a tuple, not a frozen dataclass: one is made for most changes, and that is cheaper
    """A like count the publisher keeps next to the stream: add ``delta`` to ``post_id``'s count and write
    the result into the event's payload as ``field``."""

    post_id: str
    delta: int
    field: str = "likes"


@dataclass(frozen=True, slots=True, init=False)
class Event:
    id: str
    type: str
    rooms: tuple[str, ...]
    data: dict[str, Any]
    ts: int  # the change's wall time, in milliseconds since the epoch
    counter: Counter | None = field(default=None, compare=False)

    def __init__(self, id: str, type: str, rooms: tuple[str, ...], data: dict[str, Any], ts: int,
                 counter: Counter | None = None) -> None:
        # What a frozen dataclass's __init__ does, at half the cost (the watcher makes an event or two per
        # change): each slot set directly, not through object.__setattr__.
        _set_id(self, id)
        _set_type(self, type)
        _set_rooms(self, rooms)
        _set_data(self, data)
        _set_ts(self, ts)
        _set_counter(self, counter)

    def envelope(self) -> dict[str, Any]:
        """The stored form (what the global stream and the room histories hold)."""
        return {"id": self.id, "type": self.type, "rooms": list(self.rooms), "data": self.data, "ts": self.ts}


_set_id, _set_type, _set_rooms, _set_data, _set_ts, _set_counter = (getattr(Event, f.name).__set__
                                                                    for f in fields(Event))
