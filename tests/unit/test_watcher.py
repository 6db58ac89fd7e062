"""watchers.watcher, the parts that need no MongoDB nor Redis: a change's wall time and the stage it measures."""

from __future__ import annotations

import datetime as dt

from watchers.watcher import WatcherMetrics, wall_seconds


def test_a_naive_wall_time_is_utc_as_pymongo_decodes_it() -> None:
    """PyMongo decodes BSON dates as naive UTC datetimes (unless tz_aware): never as local time."""
    aware = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    assert wall_seconds({"wallTime": aware}) == aware.timestamp()
    assert wall_seconds({"wallTime": aware.replace(tzinfo=None)}) == aware.timestamp()
    assert wall_seconds({"wallTime": aware.astimezone(dt.timezone(dt.timedelta(hours=5)))}) == aware.timestamp()


def test_a_change_without_a_wall_time_has_none() -> None:
    """Before MongoDB 6.0 change events carry no wallTime."""
    assert wall_seconds({}) is None
    assert wall_seconds({"wallTime": "2026-01-02"}) is None


def test_reading_a_change_observes_its_age_since_its_wall_time() -> None:
    metrics = WatcherMetrics(lambda: True, lambda: 0.0)
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    metrics.read({"wallTime": hour_ago.replace(tzinfo=None)})
    metrics.read({"operationType": "insert"})  # no wallTime: nothing to observe
    assert metrics.from_mongodb.count == 1
    assert 3600 <= metrics.from_mongodb.sum < 3600 + 60
    assert metrics.to_redis.count == 0
    text = metrics.registry.render().splitlines()
    assert 'realtime_stage_latency_seconds_count{stage="mongodb_to_watcher"} 1' in text
    assert 'realtime_stage_latency_seconds_count{stage="watcher_to_redis"} 0' in text
