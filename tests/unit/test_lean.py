"""The WebSocket fast path depends on how Sanic and websockets work inside: it is written for exact versions.

When either changes, this test fails on purpose: read realtime/server/lean.py against the new versions, run
the end-to-end tests and the fan-out benchmark, then update WRITTEN_FOR. Until then the server falls back to
Sanic's standard path (and says so in its log).
"""

from __future__ import annotations

from realtime.server import lean


def test_installed_versions_are_the_ones_the_fast_path_was_written_for() -> None:
    assert lean.installed() == lean.WRITTEN_FOR
    assert lean.supported()


def test_heartbeat_frame_is_an_unmasked_empty_ping() -> None:
    from websockets.frames import Frame, Opcode

    frame = Frame(Opcode.PING, b"")
    assert bytes([0x80 | frame.opcode.value, 0]) == lean.PING
