"""Prometheus metrics in the text exposition format, without a client library. Pure."""

from __future__ import annotations

import math
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

    def render(self) -> str:
        return "\n".join(line for m in self.metrics for line in m.render()) + "\n"
