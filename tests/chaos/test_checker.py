"""The checker on recorded connections made up by hand: what it must let pass, and each violation it must see."""

from __future__ import annotations

from typing import Any

from tests.chaos.checker import ANSWER_WITHIN, check
from tests.chaos.model import Event
from tests.chaos.record import Record

PUB = [Event(f"100-{i}", "post:created", ("public", "author:u1"), {"id": f"p{i}"}, 7) for i in range(1, 6)]
SECRET = Event("100-9", "post:created", ("user:u2",), {"id": "s"}, 7, private_of="u2")
CANARY = Event("200-0", "post:created", ("public",), {"id": "c"}, 7, canary=True)
EVENTS = [*PUB, SECRET, CANARY]


def frame(e: Event, room: str = "public", **changes: Any) -> dict[str, Any]:
    return {"op": "event", "id": e.id, "type": e.type, "room": room, "data": e.data, "ts": e.ts, **changes}


def conn(*frames: tuple[str, dict[str, Any]], user: str = "u1", final: bool = False, t0: float = 0.0) -> Record:
    rec = Record("s", "ws", user, 0, "s0", t0, final=final)
    for i, (direction, f) in enumerate(frames):
        rec.log.append((t0 + i * 0.01, direction, f))
    return rec


SUB = ("out", {"op": "subscribe", "rooms": ["public"], "since": "100-1", "ref": "r1"})
OK = ("in", {"op": "subscribed", "rooms": ["public"], "ref": "r1"})


def kinds(rec: Record, now: float = 1.0, **kw: Any) -> list[str]:
    return [v.kind for v in check([rec], EVENTS, now=now, **kw)]


def test_the_model_s_sequence_from_since_passes() -> None:
    assert kinds(conn(SUB, OK, *[("in", frame(e)) for e in PUB[1:]])) == []


def test_a_gap_is_seen_unless_a_reset_named_the_room() -> None:
    assert kinds(conn(SUB, OK, ("in", frame(PUB[1])), ("in", frame(PUB[3])))) == ["gap"]
    reset = ("in", {"op": "reset", "rooms": ["public"], "reason": "history_trimmed"})
    assert kinds(conn(SUB, OK, ("in", frame(PUB[1])), reset, ("in", frame(PUB[3])))) == []


def test_what_another_room_delivered_before_a_subscription_is_no_gap_of_it() -> None:
    """A subscribe with an older since than the events its connection already received through another room: the
    replay leaves those out (they would come twice), which is no gap; one never received is."""
    later = ("out", {"op": "subscribe", "rooms": ["author:u1"], "since": "100-1", "ref": "r2"})
    later_ok = ("in", {"op": "subscribed", "rooms": ["author:u1"], "ref": "r2"})
    live = [("in", frame(e)) for e in PUB[1:3]]
    assert kinds(conn(SUB, OK, *live, later, later_ok, ("in", frame(PUB[3])))) == []
    sub = ("out", {"op": "subscribe", "rooms": ["public"], "since": "100-3", "ref": "r1"})
    assert kinds(conn(sub, OK, later, later_ok, ("in", frame(PUB[3])))) == ["gap"]


def test_duplicates_order_and_events_from_before_since_are_seen() -> None:
    assert kinds(conn(SUB, OK, ("in", frame(PUB[1])), ("in", frame(PUB[1])))) == ["duplicate"]
    assert "order" in kinds(conn(SUB, OK, ("in", frame(PUB[2])), ("in", frame(PUB[1]))))
    assert kinds(conn(SUB, OK, ("in", frame(PUB[0])))) == ["since"]


def test_payloads_are_the_model_s_but_replayed_like_counts() -> None:
    assert kinds(conn(SUB, OK, ("in", frame(PUB[1], data={"id": "p2", "internal": "x"})))) == ["payload"]
    like = Event("100-1", "post:liked", ("public",), {"likes": 3, "id": "l", "postId": "p", "userId": "u"}, 7)
    replayed = {"likes": 5, "id": "l", "postId": "p", "userId": "u", "replayed": True}
    got = check([conn(("out", {"op": "subscribe", "rooms": ["public"], "since": "0-0", "ref": "r1"}), OK,
                      ("in", frame(like, data=replayed)))], [like], now=1.0)
    assert got == []


def test_a_private_post_outside_its_author_s_room_is_a_privacy_violation() -> None:
    sub = ("out", {"op": "subscribe", "rooms": ["public", "user:u2"], "since": "100-1", "ref": "r1"})
    leak = conn(sub, OK, ("in", frame(SECRET, room="public")), user="u2")
    assert set(kinds(leak)) == {"privacy", "label"}
    mine = conn(sub, OK, ("in", frame(SECRET, room="user:u2")), user="u2")
    assert kinds(mine) == []
    foreign = conn(SUB, OK, ("in", frame(SECRET, room="user:u2")))
    assert set(kinds(foreign)) == {"privacy", "foreign"}


def test_after_unsubscribed_the_room_s_events_are_foreign() -> None:
    unsub = ("out", {"op": "unsubscribe", "rooms": ["public"], "ref": "r2"})
    done = ("in", {"op": "unsubscribed", "rooms": ["public"], "ref": "r2"})
    assert kinds(conn(SUB, OK, ("in", frame(PUB[1])), unsub, done, ("in", frame(PUB[2])))) == ["foreign"]


def test_an_open_connection_at_the_end_must_have_the_canary_and_everything_before_it() -> None:
    everything = [("in", frame(e)) for e in (*PUB[1:], CANARY)]
    assert kinds(conn(SUB, OK, *everything, final=True)) == []
    assert kinds(conn(SUB, OK, *everything[:-1], final=True)) == ["liveness"]
    assert kinds(conn(SUB, OK, *everything[:-1])) == []  # a connection that ended before: a prefix is enough
    assert kinds(conn(SUB, OK, *everything[1:], final=True)) == ["gap"]


def test_a_request_left_unanswered_on_a_sound_path_is_a_freeze() -> None:
    rec = conn(SUB)
    assert kinds(rec, now=ANSWER_WITHIN + 5) == ["unanswered"]
    assert kinds(rec, now=ANSWER_WITHIN - 5) == []
    assert kinds(rec, now=ANSWER_WITHIN + 5, excused=lambda server, start, end: server == "s0") == []


def test_a_subscribe_the_server_never_took_subscribes_nothing() -> None:
    """Regression (seed 42): a subscribe sent into a partition, whose connection then died unanswered, is no
    subscription: events of the connection's other rooms that are also about its room are no gap of it."""
    more = ("out", {"op": "subscribe", "rooms": ["author:u1"], "since": "100-0", "ref": "r2"})
    assert kinds(conn(SUB, OK, more, ("in", frame(PUB[1])), ("in", frame(PUB[2]))), now=0.1) == []
    # answered, it is one from its since on: the events it missed before the ones that came are a gap
    took = ("in", {"op": "subscribed", "rooms": ["author:u1"], "ref": "r2"})
    assert kinds(conn(SUB, OK, more, took, ("in", frame(PUB[1]))), now=0.1) == ["gap"]
