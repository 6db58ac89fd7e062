"""realtime.dev's pure parts: when a child that died starts again, and how a taken port is handled."""

from __future__ import annotations

import socket

import pytest

from realtime import dev
from realtime.dev import Restarts, free_port


def test_a_child_that_keeps_dying_waits_longer_each_time_up_to_the_cap() -> None:
    r = Restarts(base=1, cap=8, stable=30)
    r.start("server", 0)
    assert r.died("server", 5) == 1
    r.start("server", 6)
    assert [r.died("server", 7), r.died("server", 8), r.died("server", 9), r.died("server", 10)] == [2, 4, 8, 8]


def test_a_child_that_ran_a_while_starts_again_at_once() -> None:
    r = Restarts(base=1, cap=8, stable=30)
    r.start("watcher", 0)
    r.died("watcher", 1)
    r.died("watcher", 2)
    r.start("watcher", 10)
    assert r.died("watcher", 100) == 1  # it ran 90 s: not a crash loop
    assert r.died("server", 100) == 1  # each child on its own


def test_a_taken_port_is_waited_for_then_left_loudly(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A quick restart of ``realtime dev`` moved to other ports without a word."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        moved = free_port(taken, 0.3, "the server")
    assert moved != taken
    err = capsys.readouterr().err
    assert f"port {taken} is taken" in err and f"the server listens on {moved} instead" in err

    # a port that frees while waiting is taken
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        calls = []
        real = dev._bind

        def bind(p: int) -> int | None:
            calls.append(p)
            if len(calls) == 3:
                held.close()
            return real(p)

        monkeypatch.setattr(dev, "_bind", bind)
        assert free_port(port, 10, "the server") == port
    assert capsys.readouterr().err == ""


def test_a_port_left_in_time_wait_by_a_process_that_ended_is_free() -> None:
    """Its connections in TIME_WAIT do not keep the servers (which set SO_REUSEADDR) from binding it."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: its end goes to TIME_WAIT
        client.close()
    assert free_port(port, 0) == port


def test_a_child_is_not_started_again_on_a_port_another_program_took(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that died while another program took its port: it is not started (it would die on the bind while
    the other program answered its readiness check as if it were the server, "started again"), and why is said."""
    monkeypatch.setattr(dev, "PORT_WAIT", 0.2)
    spawned: list[str] = []
    d = dev.Dev()
    monkeypatch.setattr(d, "spawn", lambda name, *args, **kwargs: spawned.append(name))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        d.commands["server"] = (["realtime", "serve"], {}, taken)
        with pytest.raises(dev.DevError, match=f"port {taken} is taken by another program"):
            d.respawn("server")
    assert spawned == []


def test_a_watcher_whose_health_port_was_taken_starts_again_on_another(monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A watcher that died while another program took its health endpoint's port starts again on a free port
    (nothing is pointed at it), and says so; before, it died again on the bind at every restart."""
    monkeypatch.setattr(dev, "PORT_WAIT", 0.2)
    spawned: list[dict[str, str]] = []
    d = dev.Dev()
    monkeypatch.setattr(d, "spawn", lambda name, argv, env, port=None: spawned.append(env))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        d.commands["watcher"] = (["watchers"], {"REALTIME_WATCHER_HTTP": f"127.0.0.1:{taken}", "X": "1"}, None)
        d.respawn("watcher")
    assert len(spawned) == 1 and spawned[0]["X"] == "1"
    host, _, port = spawned[0]["REALTIME_WATCHER_HTTP"].rpartition(":")
    assert host == "127.0.0.1" and int(port) != taken
    assert f"port {taken} is taken" in capsys.readouterr().err
    # free again: it keeps its port
    d.commands["watcher"] = (["watchers"], {"REALTIME_WATCHER_HTTP": f"127.0.0.1:{port}"}, None)
    d.respawn("watcher")
    assert spawned[1]["REALTIME_WATCHER_HTTP"] == f"127.0.0.1:{port}"
