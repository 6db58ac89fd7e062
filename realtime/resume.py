"""Whether a room's history still covers a client's ``since``, and whether a connection already has an event:
pure decisions.

History covers ``since`` when nothing after it was lost: no reset marker after it, no entry of the room
trimmed after it, and ``since`` not beyond what this Redis has ever held (which happens when Redis lost
its data). Otherwise the client gets an explicit ``reset`` for that room, never a silent gap.
"""

from __future__ import annotations

from dataclasses import dataclass

from realtime.events import parse_id

NEVER = (0, 0)
# What a connection has been sent of some of its rooms: per room, the span of ids (after, upto] of which it has
# every event of the room.
Spans = dict[str, tuple[tuple[int, int], tuple[int, int]]]


@dataclass(frozen=True)
class RoomHistory:
    max_deleted: tuple[int, int] = NEVER  # the highest id ever trimmed from the room's stream


@dataclass(frozen=True)
class StreamState:
    last: tuple[int, int] | None  # the global stream's newest id (None: empty or missing)
    last_reset: tuple[int, int] | None  # the newest reset marker's id


def covered(since: str, room: RoomHistory, stream: StreamState) -> tuple[bool, str]:
    """``(True, "")`` when the room's history after ``since`` is complete, else ``(False, reason)``."""
    point = parse_id(since)
    if stream.last_reset is not None and stream.last_reset > point:
        return False, "history_reset"
    if stream.last is None:  # an empty (or missing) stream covers only the very beginning
        return (True, "") if point == NEVER else (False, "unknown_position")
    if point > stream.last:
        return False, "unknown_position"
    if room.max_deleted > point:
        return False, "history_trimmed"
    return True, ""


def already_had(key: tuple[int, int], rooms: object, spans: Spans) -> bool:
    """Whether an event (its id and its rooms, as its envelope lists them) is one a connection has been sent:
    one of its rooms is among ``spans`` with the id in that room's span."""
    if not spans or not isinstance(rooms, (list, tuple)):
        return False
    for room in rooms:
        span = spans.get(room) if isinstance(room, str) else None
        if span is not None and span[0] < key <= span[1]:
            return True
    return False
