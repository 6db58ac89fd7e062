"""The metrics registry's histogram: buckets, the exposition format, and what an observation costs in memory."""

from __future__ import annotations

import gc
import math
import sys

import pytest

from realtime.metrics import LATENCY_BUCKETS, Histogram, Registry


def samples(text: str) -> dict[str, float]:
    """The sample lines of an exposition, by name with labels."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_a_value_counts_in_the_first_bucket_whose_bound_is_at_least_it() -> None:
    h = Histogram("h", "help", (0.001, 0.01, 0.1))
    s = h.labels(stage="a")
    for value in (0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.2, 7.0):
        s.observe(value)
    assert s.counts == [2, 2, 2, 2]
    assert s.count == 8
    assert s.sum == pytest.approx(0.0005 + 0.001 + 0.0011 + 0.01 + 0.05 + 0.1 + 0.2 + 7.0)


def test_render_gives_cumulative_buckets_an_inf_bucket_the_sum_and_the_count_per_series() -> None:
    r = Registry()
    h = r.histogram("realtime_stage_latency_seconds", "latency per stage", (0.001, 0.5, 2.0))
    a, b = h.labels(stage="a"), h.labels(stage="b")
    for value in (0.0002, 0.3, 0.4, 3.0):
        a.observe(value)
    b.observe(1.0)
    text = r.render()
    assert "# TYPE realtime_stage_latency_seconds histogram" in text.splitlines()
    got = samples(text)
    assert got == {
        'realtime_stage_latency_seconds_bucket{le="0.001",stage="a"}': 1,
        'realtime_stage_latency_seconds_bucket{le="0.5",stage="a"}': 3,
        'realtime_stage_latency_seconds_bucket{le="2",stage="a"}': 3,
        'realtime_stage_latency_seconds_bucket{le="+Inf",stage="a"}': 4,
        'realtime_stage_latency_seconds_sum{stage="a"}': pytest.approx(3.7002),
        'realtime_stage_latency_seconds_count{stage="a"}': 4,
        'realtime_stage_latency_seconds_bucket{le="0.001",stage="b"}': 0,
        'realtime_stage_latency_seconds_bucket{le="0.5",stage="b"}': 0,
        'realtime_stage_latency_seconds_bucket{le="2",stage="b"}': 1,
        'realtime_stage_latency_seconds_bucket{le="+Inf",stage="b"}': 1,
        'realtime_stage_latency_seconds_sum{stage="b"}': 1.0,
        'realtime_stage_latency_seconds_count{stage="b"}': 1,
    }


def test_a_series_taken_before_any_observation_renders_as_zeros() -> None:
    r = Registry()
    r.histogram("h", "help", (1.0,)).labels(stage="idle")
    assert samples(r.render()) == {'h_bucket{le="1",stage="idle"}': 0, 'h_bucket{le="+Inf",stage="idle"}': 0,
                                   'h_sum{stage="idle"}': 0, 'h_count{stage="idle"}': 0}


def test_labels_returns_the_same_series_each_time() -> None:
    h = Histogram("h", "help")
    assert h.labels(stage="a") is h.labels(stage="a")
    assert h.labels(stage="a") is not h.labels(stage="b")


def test_a_negative_value_clock_skew_counts_as_zero_so_the_sum_never_decreases() -> None:
    s = Histogram("h", "help", (0.001, 1.0)).labels()
    s.observe(0.5)
    s.observe(-0.25)
    assert s.counts == [1, 1, 0]
    assert s.sum == 0.5


@pytest.mark.parametrize("buckets", [(), (0.1, 0.01), (0.1, 0.1), (0.1, math.inf)])
def test_buckets_must_be_finite_distinct_and_increasing(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="buckets"):
        Histogram("h", "help", buckets)


def test_the_latency_buckets_reach_from_a_tenth_of_a_millisecond_to_half_a_minute() -> None:
    assert LATENCY_BUCKETS[0] == 0.0001 and LATENCY_BUCKETS[-1] == 30.0
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))


def test_observing_keeps_no_memory_per_observation() -> None:
    s = Histogram("h", "help").labels(stage="a")
    for i in range(1000):  # every count past the small ints once
        s.observe(i / 1000)
    gc.collect()
    before = sys.getallocatedblocks()
    for i in range(100_000):
        s.observe((i % 1000) / 1000)
    gc.collect()
    assert sys.getallocatedblocks() - before < 100
    assert s.count == 101_000
