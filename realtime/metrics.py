"""Prometheus metrics in the text exposition format, without a client library. Pure."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metric:
    def __init__(self, name: str, help_: str, kind: str) -> None:
        self.name, self.help, self.kind = name, help_, kind
        self.values: dict[tuple[tuple[str, str], ...], float] = {}

    def _key(self, labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(labels.items()))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        if not self.values:
            lines.append(f"{self.name} 0")
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(dict(key))} {_number(value)}")
        return lines


class Counter(Metric):
    def __init__(self, name: str, help_: str) -> None:
        super().__init__(name, help_, "counter")

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)


class Gauge(Metric):
    def __init__(self, name: str, help_: str, read: Callable[[], float] | None = None) -> None:
        super().__init__(name, help_, "gauge")
        self.read = read

    def set(self, value: float, **labels: str) -> None:
        self.values[self._key(labels)] = value

    def value(self, **labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        if self.read is not None:
            self.values[()] = self.read()
        return super().render()


# The family of the per-stage latencies of a change's way to clients: the watcher and the servers each observe
# their stages in it (label ``stage``), so that one query covers them all (docs/metrics.md).
STAGE_LATENCY = "realtime_stage_latency_seconds"

# Latency buckets in seconds, 100 µs to 30 s in steps of 1-2-5: fine enough below 10 ms (a fan-out's floor) for
# histogram_quantile to tell 1 ms from 2 ms, wide enough for a backlog of seconds.
LATENCY_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                   10.0, 30.0)


class Series:
    """One labelled series of a histogram: a count per bucket and the sum of what was observed.

    :meth:`observe` is made for hot paths: one bisection over the bounds, an increment and an addition, no
    lookup by label and nothing allocated but the numbers themselves (about 0.2 µs). A negative value (a stage
    measured across two hosts' clocks, one behind the other) counts as 0, so that the sum never decreases."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        """Count ``value`` (``times`` times: as many observations of the same value)."""
        if value < 0.0:
            value = 0.0
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times

    @property
    def count(self) -> int:
        return sum(self.counts)


class Histogram(Metric):
    """A histogram family: one :class:`Series` per set of labels, taken once with :meth:`labels` and kept by the
    code that observes (the lookup is not on the hot path). Buckets are cumulative only when rendered."""

    def __init__(self, name: str, help_: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_, "histogram")
        if not buckets or list(buckets) != sorted(set(buckets)) or math.isinf(buckets[-1]):
            raise ValueError(f"{name}: buckets must be finite, distinct and increasing: {buckets}")
        self.bounds = tuple(float(b) for b in buckets)
        self.series: dict[tuple[tuple[str, str], ...], Series] = {}

    def labels(self, **labels: str) -> Series:
        key = self._key(labels)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series(self.bounds)
        return series

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, series in sorted(self.series.items()):
            labels = dict(key)
            cumulative = 0
            for bound, n in zip((*self.bounds, math.inf), series.counts, strict=True):
                cumulative += n
                lines.append(f"{self.name}_bucket{_labels({**labels, 'le': _number(bound)})} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(labels)} {_number(series.sum)}")
            lines.append(f"{self.name}_count{_labels(labels)} {cumulative}")
        return lines


class Registry:
    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def counter(self, name: str, help_: str) -> Counter:
        metric = Counter(name, help_)
        self.metrics.append(metric)
        return metric

    def gauge(self, name: str, help_: str, read: Callable[[], float] | None = None) -> Gauge:
        metric = Gauge(name, help_, read)
        self.metrics.append(metric)
        return metric

    def histogram(self, name: str, help_: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        metric = Histogram(name, help_, buckets)
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for m in self.metrics for line in m.render()) + "\n"
