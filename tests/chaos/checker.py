"""The invariants, checked on what each connection recorded against what the model says its rooms carry.

Per connection, and per room it was subscribed to (from the ``since`` of that subscription on):

- **no phantom**: every event is one the model computed (same id), with the same type, payload and time;
  ``likes`` may differ only in events replayed from the oplog (``replayed: true``), as the docs allow;
- **no foreign event**: every event belongs to a room the connection was subscribed to, and is labelled
  with one of them; an event about a post that was private at that change reaching anything but its
  author's own room is reported as a **privacy** violation;
- **no duplicate**: each id at most once per connection; **ids increase** per room, and per connection
  while it has made one subscription (a later ``subscribe`` with ``since`` may replay ids below the live
  ones already received: the docs promise order within a replay, not across two);
- **no gap without a reset**: per room, the events arrive exactly in the model's order from the
  subscription's ``since``, but for those the connection had already received through another of its rooms
  (they must not come twice); the only skip allowed is right after a ``reset`` naming that room;
- at the end (``final`` connections, open when the run ended): **nothing missing**, and the **canary** of each
  room arrived (after the faults healed, a connection that is open is not silently frozen);
- **answered**: a WebSocket request is answered within a bound unless the path to its server was faulty
  meanwhile (a server that never answers a ``subscribe`` froze the client).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.model import Event, key_of
from tests.chaos.record import Record

ANSWER_WITHIN = 20.0  # seconds: REALTIME_RETRY_SECONDS (2) + deep replay (5) + a loaded machine's slack


@dataclass(frozen=True)
class Violation:
    kind: str
    session: str
    connection: int
    at: float  # monotonic time of the frame that showed it (or of the check)
    detail: str

    def line(self, t0: float) -> str:
        return f"[{self.at - t0:7.2f}s] {self.kind}: {self.session}#{self.connection}: {self.detail}"


@dataclass
class RoomState:
    since: str
    expected: list[Event]
    ptr: int = 0
    reset: bool = False
    positions: dict[str, int] | None = None

    def index(self, event_id: str) -> int | None:
        if self.positions is None:
            self.positions = {e.id: i for i, e in enumerate(self.expected)}
        return self.positions.get(event_id)


# excused(server, start, end): whether the path to that server was faulty at some time in [start, end]
Excuse = Callable[[str, float, float], bool]


def _data_matches(got: Any, want: dict[str, Any]) -> bool:
    if not isinstance(got, dict):
        return False
    if got.get("replayed") is True and "likes" in want:
        likes = got.get("likes")
        rest = {k: v for k, v in got.items() if k not in ("likes", "replayed")}
        return isinstance(likes, int) and likes >= 0 and rest == {k: v for k, v in want.items() if k != "likes"}
    return bool(got == want)


@dataclass
class Checker:
    index: dict[str, list[Event]]  # room -> its events, in order
    by_id: dict[str, Event]
    horizon: tuple[int, int] | None = None  # partial check: the model may not know events after this yet
    excused: Excuse = lambda server, start, end: False
    violations: list[Violation] = field(default_factory=list)

    def _v(self, kind: str, rec: Record, at: float, detail: str) -> None:
        self.violations.append(Violation(kind, rec.session, rec.index, at, detail))

    def record(self, rec: Record, now: float) -> None:
        rooms: dict[str, RoomState] = {}
        seen: set[str] = set()
        last: tuple[int, int] = (-1, -1)
        subscriptions: set[tuple[tuple[str, ...], str]] = set()
        asked: dict[Any, dict[str, Any]] = {}  # subscribe requests by ref, until the server answers them
        for t, direction, f in rec.log:
            op = f.get("op")
            if direction == "out":
                if op == "subscribe":
                    subscriptions.add((tuple(f.get("rooms") or ()), str(f.get("since"))))  # (a retry is no new one)
                    asked[f.get("ref")] = f
                continue
            if op == "subscribed" and f.get("ref") in asked:
                # Subscribed from the server's answer on (it comes before the replay): a request the server never
                # took (the connection died first) subscribed nothing, and an event of another of the
                # connection's rooms that is also about this one is no gap of it.
                request = asked.pop(f.get("ref"))
                since = str(request.get("since") or "0-0")
                for r in request.get("rooms") or []:
                    rooms[r] = RoomState(since, [e for e in self.index.get(r, []) if e.key > key_of(since)])
            elif op == "event":
                last = self._event(rec, t, f, rooms, seen, last, strict=len(subscriptions) <= 1)
            elif op == "reset":
                for r in f.get("rooms") or list(rooms):
                    if r in rooms:
                        rooms[r].reset = True
            elif op == "unsubscribed":
                for r in f.get("rooms") or []:
                    rooms.pop(r, None)
            elif op == "error" and (f.get("rooms") or f.get("ref") in ("sse", "poll")):
                for r in f.get("rooms") or list(rooms):
                    rooms.pop(r, None)
        self._unanswered(rec, now)
        if rec.final:
            self._complete(rec, rooms, seen, now)

    def _event(self, rec: Record, t: float, f: dict[str, Any], rooms: dict[str, RoomState], seen: set[str],
               last: tuple[int, int], *, strict: bool) -> tuple[int, int]:
        event_id = str(f.get("id"))
        try:
            key = key_of(event_id)
        except ValueError:
            self._v("malformed", rec, t, f"an event id that is not an id: {f}")
            return last
        if event_id in seen:
            self._v("duplicate", rec, t, f"{event_id} ({f.get('type')} in {f.get('room')}) arrived twice")
            return last
        seen.add(event_id)
        if strict and key <= last:
            self._v("order", rec, t, f"{event_id} arrived after {last[0]}-{last[1]}: ids went back")
        last = max(last, key)
        if self.horizon is not None and key > self.horizon:
            return last  # the model has not read that far yet
        e = self.by_id.get(event_id)
        if e is None:
            self._v("phantom", rec, t, f"{event_id} is no event the model computed: {f}")
            return last
        if f.get("type") != e.type or not _data_matches(f.get("data"), e.data) or f.get("ts") != e.ts:
            self._v("payload", rec, t, f"{event_id} {f.get('type')} {f.get('data')} ts={f.get('ts')}; the model: "
                    f"{e.type} {e.data} ts={e.ts}")
        label = f.get("room")
        if e.private_of is not None and (label != f"user:{e.private_of}" or rec.user != e.private_of):
            self._v("privacy", rec, t, f"{event_id} ({e.type}) is about a private post of {e.private_of}, and "
                    f"reached {rec.user}'s connection labelled {label!r}: {f.get('data')}")
        mine = [r for r in e.rooms if r in rooms]
        if not mine:
            self._v("foreign", rec, t, f"{event_id} ({e.type}, rooms {list(e.rooms)}) reached a connection of "
                    f"rooms {sorted(rooms)}")
            return last
        if label not in mine:
            self._v("label", rec, t, f"{event_id} labelled {label!r}, not one of {mine}")
        placed = [(r, rooms[r], rooms[r].index(event_id)) for r in mine]
        if all(at is None for _, _, at in placed):
            self._v("since", rec, t, f"{event_id} of {mine} is not after the subscription's since "
                    f"{[rooms[r].since for r in mine]}")
        for r, state, at in placed:
            if at is None:
                continue  # it came for another of its rooms, subscribed from an earlier since
            if at < state.ptr:
                self._v("order", rec, t, f"{event_id} of {r} arrived after later events of the room")
                continue
            # (what the connection received before, through another of its rooms, it has: it does not come twice)
            missing = [m for m in state.expected[state.ptr:at] if m.id not in seen]
            if missing and not state.reset:
                self._v("gap", rec, t, f"{len(missing)} events of {r} never arrived before {event_id}, and no "
                        f"reset said so: {', '.join(f'{m.id} {m.type}' for m in missing[:4])}")
            state.ptr = at + 1
            state.reset = False
        return last

    def _complete(self, rec: Record, rooms: dict[str, RoomState], seen: set[str], now: float) -> None:
        for r, state in sorted(rooms.items()):
            missing = [e for e in state.expected[state.ptr:] if e.id not in seen]
            canaries = [e for e in state.expected if e.canary]
            if canaries and not any(e.id in seen for e in canaries):
                self._v("liveness", rec, now, f"open at the end, it never received the canary of {r} "
                        f"({canaries[-1].id}); it last heard from the server at "
                        f"{_last_in(rec):.1f}s of its life, {len(missing)} events of {r} missing")
            elif missing and not state.reset:
                self._v("missing", rec, now, f"open at the end, {len(missing)} events of {r} never arrived: "
                        f"{', '.join(f'{m.id} {m.type}' for m in missing[:4])}")

    def _unanswered(self, rec: Record, now: float) -> None:
        if rec.transport != "ws":
            return
        end = rec.closed if rec.closed is not None else now
        for sent, f in rec.pending():
            if end - sent > ANSWER_WITHIN and not self.excused(rec.server, sent, end):
                self._v("unanswered", rec, sent + ANSWER_WITHIN, f"{f.get('op')} {f.get('rooms')} since "
                        f"{f.get('since')}, sent {sent - rec.opened:.1f}s into the connection, got no answer within "
                        f"{ANSWER_WITHIN:.0f}s though the path to {rec.server} was sound")


def _last_in(rec: Record) -> float:
    times = [t for t, d, _ in rec.log if d == "in"]
    return (times[-1] - rec.opened) if times else 0.0


def check(records: list[Record], events: list[Event], *, now: float, horizon: tuple[int, int] | None = None,
          excused: Excuse | None = None) -> list[Violation]:
    index: dict[str, list[Event]] = {}
    for e in events:
        for r in e.rooms:
            index.setdefault(r, []).append(e)
    checker = Checker(index, {e.id: e for e in events}, horizon, excused or (lambda s, a, b: False))
    for rec in records:
        checker.record(rec, now)
    return checker.violations
