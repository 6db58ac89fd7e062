"""The WebSocket fast path depends on how Sanic and websockets work inside: it is written for exact versions.

When either changes, this test fails on purpose: read realtime/server/lean.py against the new versions, run
the end-to-end tests and the fan-out benchmark, then update WRITTEN_FOR. Until then the server falls back to
Sanic's standard path (and says so in its log).
"""

from __future__ import annotations

from types import SimpleNamespace

from realtime.server import lean


def test_installed_versions_are_the_ones_the_fast_path_was_written_for() -> None:
    assert lean.installed() == lean.WRITTEN_FOR
    assert lean.supported()


def test_heartbeat_frame_is_an_unmasked_empty_ping() -> None:
    from websockets.frames import Frame, Opcode

    frame = Frame(Opcode.PING, b"")
    assert bytes([0x80 | frame.opcode.value, 0]) == lean.PING


# -- heartbeats ----------------------------------------------------------------------------------------------------

class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class FakeConn:
    """What Heartbeats reads of a hub connection: alive, proto.state, transport, ws.io_proto.last_in/pinged."""

    def __init__(self, now: float = 0.0) -> None:
        from websockets.protocol import State

        self.alive = True
        self.proto = SimpleNamespace(state=State.OPEN)
        self.transport = FakeTransport()
        self.ws = SimpleNamespace(io_proto=SimpleNamespace(last_in=now, pinged=0.0))

    @property
    def pings(self) -> int:
        assert all(data == lean.PING for data in self.transport.written)
        return len(self.transport.written)

    def answer(self, now: float) -> None:
        self.ws.io_proto.last_in = now


def run_beats(beats: lean.Heartbeats, conns: list[FakeConn], start: float, end: float, tick: float = 0.25,
              answer: bool = True) -> tuple[list[int], list[tuple[float, FakeConn]]]:
    """Steps from start to end; every pinged connection answers at once (if answer). Returns the pings per
    step and the connections reported silent, with when."""
    per_step, silent = [], []
    now = start
    while now <= end + 1e-9:
        before = sum(c.pings for c in conns)
        silent += [(now, c) for c in beats.step(conns, now)]
        per_step.append(sum(c.pings for c in conns) - before)
        if answer:
            for c in conns:
                if c.ws.io_proto.pinged == now:
                    c.answer(now + 0.01)
        now = round(now + tick, 6)
    return per_step, silent


def test_heartbeats_ping_each_connection_once_per_interval_spread_over_it() -> None:
    conns = [FakeConn() for _ in range(100)]
    beats = lean.Heartbeats(interval=2.0, timeout=1.0, tick=0.25)
    per_step, silent = run_beats(beats, conns, 0.25, 2.0)  # one round: 8 steps
    assert [c.pings for c in conns] == [1] * 100
    assert max(per_step) <= 13 and sum(1 for n in per_step if n) >= 8, per_step
    per_step, silent = run_beats(beats, conns, 2.25, 6.0)  # two more rounds
    assert [c.pings for c in conns] == [3] * 100
    assert not silent


def test_few_connections_are_not_pinged_more_often_than_the_interval() -> None:
    conns = [FakeConn() for _ in range(3)]
    beats = lean.Heartbeats(interval=5.0, timeout=1.0, tick=0.25)
    run_beats(beats, conns, 0.25, 10.0)  # 10 s: two rounds
    assert [c.pings for c in conns] == [2, 2, 2]


def test_a_connection_silent_after_a_ping_is_reported_once_at_the_timeout() -> None:
    talker, mute = FakeConn(), FakeConn()
    beats = lean.Heartbeats(interval=1.0, timeout=1.5, tick=0.25)
    silent = []
    now = 0.25
    while now <= 6.0:
        silent += [(now, c) for c in beats.step([talker, mute], now)]
        if talker.ws.io_proto.pinged == now:
            talker.answer(now + 0.01)
        now += 0.25
    assert [c for _, c in silent] == [mute]
    assert 0.25 <= mute.ws.io_proto.pinged <= 1.0  # in the first round
    assert silent[0][0] == mute.ws.io_proto.pinged + 1.5  # at the first step past its timeout
    assert mute.pings == 1  # an unanswered ping is not repeated
    assert talker.pings >= 5


def test_gone_and_closing_connections_are_skipped() -> None:
    from websockets.protocol import State

    gone, closing, fine = FakeConn(), FakeConn(), FakeConn()
    gone.alive = False
    closing.proto.state = State.CLOSING
    beats = lean.Heartbeats(interval=1.0, timeout=0.5, tick=0.25)
    _, silent = run_beats(beats, [gone, closing, fine], 0.25, 3.0, answer=False)
    assert (gone.pings, closing.pings) == (0, 0)
    assert fine.pings == 1 and [c for _, c in silent] == [fine]
