"""realtime.resume.covered: whether a room's history still covers a client's ``since`` (DESIGN invariant 4)."""

from __future__ import annotations

from typing import Any

import pytest

from realtime.events import BadEventId
from realtime.resume import NEVER, RoomHistory, StreamState, covered

LAST = (1000, 5)
STREAM = StreamState(last=LAST, last_reset=None)


def test_covered() -> None:
    assert covered("900-0", RoomHistory(), STREAM) == (True, "")
    assert covered("900-0", RoomHistory(max_deleted=(800, 3)), STREAM) == (True, "")


def test_since_equal_to_the_last_id_is_covered() -> None:
    assert covered("1000-5", RoomHistory(), STREAM) == (True, "")


def test_since_zero_on_an_untrimmed_room_is_covered() -> None:
    assert covered("0-0", RoomHistory(), STREAM) == (True, "")


def test_entry_trimmed_at_since_is_still_covered() -> None:
    """The client saw ``since`` itself; only what came after it matters."""
    assert covered("900-0", RoomHistory(max_deleted=(900, 0)), STREAM) == (True, "")


def test_room_trimmed_past_since() -> None:
    assert covered("900-0", RoomHistory(max_deleted=(900, 1)), STREAM) == (False, "history_trimmed")
    assert covered("0-0", RoomHistory(max_deleted=(1, 0)), STREAM) == (False, "history_trimmed")


def test_reset_marker_after_since() -> None:
    stream = StreamState(last=LAST, last_reset=(950, 0))
    assert covered("949-9", RoomHistory(), stream) == (False, "history_reset")
    assert covered("0-0", RoomHistory(), stream) == (False, "history_reset")


def test_reset_marker_at_or_before_since_is_covered() -> None:
    stream = StreamState(last=LAST, last_reset=(950, 0))
    assert covered("950-0", RoomHistory(), stream) == (True, "")
    assert covered("960-0", RoomHistory(), stream) == (True, "")


def test_reset_wins_over_trimmed() -> None:
    stream = StreamState(last=LAST, last_reset=(950, 0))
    assert covered("900-0", RoomHistory(max_deleted=(990, 0)), stream) == (False, "history_reset")


def test_since_beyond_the_streams_last_id() -> None:
    assert covered("1000-6", RoomHistory(), STREAM) == (False, "unknown_position")
    assert covered("1001-0", RoomHistory(), STREAM) == (False, "unknown_position")
    assert covered(f"{2**64 - 1}-{2**64 - 1}", RoomHistory(), STREAM) == (False, "unknown_position")


def test_empty_stream_and_since_zero_is_covered() -> None:
    assert covered("0-0", RoomHistory(), StreamState(last=None, last_reset=None)) == (True, "")
    assert NEVER == (0, 0)


@pytest.mark.parametrize("since", ["0-1", "1-0", "1700000000000-0"])
def test_empty_stream_and_since_past_zero_is_unknown_position(since: str) -> None:
    assert covered(since, RoomHistory(), StreamState(last=None, last_reset=None)) == (False, "unknown_position")


def test_empty_stream_with_a_reset_marker_after_since() -> None:
    assert covered("0-0", RoomHistory(), StreamState(last=None, last_reset=(5, 0))) == (False, "history_reset")


@pytest.mark.parametrize("since", ["", "abc", "1", "1-", "-1", "1-2-3", " 1-2", "1.0-2", "+1-2", "\u0661-\u0662",
                                   f"{2**64}-0", f"0-{2**64}", "1" * 42, None, 5, (1, 2), b"1-2"])
def test_malformed_since_raises_bad_event_id(since: Any) -> None:
    with pytest.raises(BadEventId):
        covered(since, RoomHistory(), STREAM)
