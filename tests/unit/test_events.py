"""realtime.events: the event model the watchers publish (its ids are tested in test_ids.py)."""

from __future__ import annotations

import dataclasses

import pytest

from realtime.events import Counter, Event


def test_an_event_is_frozen_and_compares_without_its_counter() -> None:
    """Event sets its slots itself (cheaper than a frozen dataclass's __init__): still frozen, still compared,
    copied and shown as a dataclass."""
    liked = Event("5-0", "post:liked", ("post:p1",), {"likes": 0}, 7, Counter("p1", 1))
    assert liked == Event(id="5-0", type="post:liked", rooms=("post:p1",), data={"likes": 0}, ts=7)
    assert liked != Event("5-0", "post:liked", ("post:p1",), {"likes": 0}, 8, Counter("p1", 1))
    assert liked.counter == Counter("p1", 1) and Event("5-1", "x", (), {}, 0).counter is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        liked.ts = 8  # type: ignore[misc]
    assert dataclasses.replace(liked, ts=8).ts == 8 and dataclasses.replace(liked, ts=8).counter == liked.counter
    assert [f.name for f in dataclasses.fields(liked)] == ["id", "type", "rooms", "data", "ts", "counter"]
    assert repr(liked).startswith("Event(id='5-0', type='post:liked', rooms=('post:p1',)")
    assert liked.envelope() == {"id": "5-0", "type": "post:liked", "rooms": ["post:p1"], "data": {"likes": 0},
                                "ts": 7}


def test_a_counter_is_a_named_tuple_counting_likes_by_default() -> None:
    assert Counter("p1", -1) == ("p1", -1, "likes") and Counter("p1", 1, "n").field == "n"


def test_the_id_before_an_id() -> None:
    """The id just before another: a read of a stream after it begins with that id."""
    from realtime.events import id_before

    assert id_before((5, 3)) == (5, 2)
    assert id_before((5, 0)) == (4, (1 << 64) - 1)
    assert id_before((0, 0)) == (0, 0)
