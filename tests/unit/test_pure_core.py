"""The pure core imports no I/O library; realtime.metrics renders the Prometheus text format."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from realtime.metrics import Counter, Gauge, Registry

ROOT = Path(__file__).resolve().parents[2]
PURE_MODULES = ["realtime.events", "realtime.ids", "watchers.mapping", "watchers.payload", "watchers.config",
                "realtime.config", "realtime.backoff", "watchers.outage",
                "realtime.metrics", "realtime.server.addresses"]
IO_LIBRARIES = ["pymongo", "redis", "sanic", "motor", "websockets"]


def test_pure_modules_import_no_io_library() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {PURE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {IO_LIBRARIES!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_the_import_check_can_fail() -> None:
    """The same check, on a module that does import an I/O library, sees it."""
    code = "import sys, json, redis\nprint(json.dumps('redis' in sys.modules))\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) is True


# -- metrics -----------------------------------------------------------------------------------------------

def test_metric_without_values_renders_zero() -> None:
    registry = Registry()
    registry.counter("rt_published_total", "Events published.")
    registry.gauge("rt_lag_seconds", "Watcher lag.")
    assert registry.render() == (
        "# HELP rt_published_total Events published.\n"
        "# TYPE rt_published_total counter\n"
        "rt_published_total 0\n"
        "# HELP rt_lag_seconds Watcher lag.\n"
        "# TYPE rt_lag_seconds gauge\n"
        "rt_lag_seconds 0\n"
    )


def test_counter_labels_are_sorted_and_series_ordered() -> None:
    registry = Registry()
    published = registry.counter("rt_events_total", "Events by type.")
    published.inc(type="post:liked", room="public")
    published.inc(2, room="public", type="post:liked")  # the same series, labels in another order
    published.inc(type="comment:added", room="post:p1")
    published.inc(0.5)
    assert published.value(room="public", type="post:liked") == 3.0
    assert published.value(type="post:liked", room="public") == 3.0
    assert published.value(type="nothing") == 0.0
    assert published.value() == 0.5
    assert registry.render().splitlines() == [
        "# HELP rt_events_total Events by type.",
        "# TYPE rt_events_total counter",
        "rt_events_total 0.5",
        'rt_events_total{room="post:p1",type="comment:added"} 1',
        'rt_events_total{room="public",type="post:liked"} 3',
    ]


def test_label_values_are_escaped() -> None:
    counter = Counter("rt_errors_total", "Errors.")
    counter.inc(reason='say "hi"\\now\nnext line')
    assert counter.render()[2] == 'rt_errors_total{reason="say \\"hi\\"\\\\now\\nnext line"} 1'


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (3, "3"), (2.0, "2"), (-4.0, "-4"), (1.5, "1.5"), (0.1, "0.1"), (1e-9, "1e-09"),
    (math.nan, "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (2**53, "9007199254740992"),
])
def test_sample_values(value: float, text: str) -> None:
    gauge = Gauge("rt_value", "A value.")
    gauge.set(value)
    assert gauge.render()[2] == f"rt_value {text}"


def test_gauge_set_overwrites_and_read_callback_is_sampled_at_render() -> None:
    gauge = Gauge("rt_connections", "Open connections.")
    gauge.set(5, transport="ws")
    gauge.set(2, transport="ws")
    gauge.set(1, transport="sse")
    assert gauge.value(transport="ws") == 2 and gauge.value(transport="poll") == 0.0
    assert gauge.render() == [
        "# HELP rt_connections Open connections.",
        "# TYPE rt_connections gauge",
        'rt_connections{transport="sse"} 1',
        'rt_connections{transport="ws"} 2',
    ]
    readings = iter([7.0, 8.5])
    registry = Registry()
    registry.gauge("rt_stream_length", "Events in the stream.", read=lambda: next(readings))
    assert registry.render().endswith("rt_stream_length 7\n")
    assert registry.render().endswith("rt_stream_length 8.5\n")


def test_registry_render_keeps_registration_order_and_ends_with_newline() -> None:
    registry = Registry()
    b = registry.counter("b_total", "B.")
    a = registry.counter("a_total", "A.")
    a.inc()
    b.inc(3)
    text = registry.render()
    assert text == "# HELP b_total B.\n# TYPE b_total counter\nb_total 3\n# HELP a_total A.\n# TYPE a_total counter\n" \
                   "a_total 1\n"
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or " " in line
