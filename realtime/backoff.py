"""Jittered exponential backoff, as a pure generator: the caller sleeps, with whatever sleep it has."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator


def backoff(base: float, cap: float, rng: Callable[[], float] = random.random) -> Iterator[float]:
    """Jittered exponential delays, forever: the n-th is uniform in [d/2, d] with d = min(cap, base * 2**n)."""
    if not 0 < base <= cap:
        raise ValueError("backoff needs 0 < base <= cap")
    ceiling = base
    while True:
        yield ceiling / 2 + rng() * ceiling / 2
        ceiling = min(cap, ceiling * 2)
