"""Outages of the watcher's dependencies (Redis, MongoDB), as state: pure, with an injected clock.

The watcher reports every failed attempt to reach a dependency and every call that got through; this
module says when an outage begins (to be logged once), when it ends (logged once, with its length), and
what ``/readyz``, ``/healthz`` and the metrics show in between. Retrying is the caller's: it sleeps the
delays of :func:`realtime.backoff.backoff`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

REDIS = "redis"
MONGODB = "mongodb"
DEPENDENCIES = (REDIS, MONGODB)

BACKOFF_BASE = 0.1  # seconds before the first retry (jittered down to half of it)
BACKOFF_CAP = 5.0  # the longest wait between two attempts


@dataclass
class Outage:
    dependency: str
    reason: str  # what the latest failed attempt said
    since: float  # clock time of the first failed attempt
    last: float  # clock time of the latest failed attempt
    failures: int = 1  # failed attempts so far


class Outages:
    """The outages under way, one per dependency at most."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.current: dict[str, Outage] = {}

    def failed(self, dependency: str, reason: str) -> Outage | None:
        """A failed attempt: the outage it begins, or None when one is already under way."""
        now = self.clock()
        outage = self.current.get(dependency)
        if outage is None:
            outage = self.current[dependency] = Outage(dependency, reason, now, now)
            return outage
        outage.reason, outage.last, outage.failures = reason, now, outage.failures + 1
        return None

    def succeeded(self, dependency: str) -> Outage | None:
        """A call that got through: the outage it ends, if one was under way."""
        return self.current.pop(dependency, None)

    def retrying(self, within: float) -> bool:
        """Whether some outage is under way and was last retried less than ``within`` seconds ago: the
        watcher is waiting for a dependency, not stuck."""
        now = self.clock()
        return any(now - outage.last < within for outage in self.current.values())

    def problems(self) -> list[str]:
        """One line per outage under way, for ``/readyz``."""
        now = self.clock()
        return [f"{o.dependency}: unavailable for {now - o.since:.0f}s, {o.failures} failed attempts "
                f"(last: {o.reason})" for o in sorted(self.current.values(), key=lambda o: o.dependency)]
