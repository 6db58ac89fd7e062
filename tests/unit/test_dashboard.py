"""deploy/grafana-stages.json: every query names metrics and stages that the watcher and the server expose."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from realtime.server.hub import Hub
from watchers.watcher import WatcherMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-stages.json"
SUFFIXES = ("_bucket", "_sum", "_count")


def exposed() -> tuple[set[str], set[str]]:
    """The metric names (histograms with their series' suffixes) and the stages the two processes render."""
    text = WatcherMetrics(lambda: True, lambda: 0.0).registry.render() + \
        Hub(queue_bytes=1, queue_messages=1).metrics.registry.render()
    names = {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}
    return names, set(re.findall(r'stage="(\w+)"', text))


def targets() -> list[dict[str, Any]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t for p in panels for t in p.get("targets", [])]


def test_every_query_names_metrics_the_processes_expose() -> None:
    names, _ = exposed()
    used = {m for t in targets() for m in re.findall(r"\brealtime_\w+", t["expr"])}
    assert used and used <= names, used - names
    assert {"realtime_stage_latency_seconds" + s for s in SUFFIXES} <= used


def test_every_stage_is_shown_and_every_stage_shown_exists() -> None:
    _, stages = exposed()
    shown = {s for t in targets() for s in re.findall(r'stage="(\w+)"', t["expr"])}
    assert shown == stages == {"mongodb_to_watcher", "watcher_to_redis", "redis_to_server", "server_to_socket"}


def test_the_panels_query_a_prometheus_data_source_chosen_at_import() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    [variable] = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    assert any("histogram_quantile(0.99," in t["expr"] for t in targets())
    assert any("histogram_quantile(0.5," in t["expr"] for t in targets())
