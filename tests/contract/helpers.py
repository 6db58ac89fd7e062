"""Small helpers for change-stream tests."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import TIMEOUT


async def take(stream: Any, n: int, within: float = TIMEOUT) -> list[dict[str, Any]]:
    """The next ``n`` events of a stream; fails if they do not all arrive within ``within`` seconds."""
    events: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(events) < n:
        if loop.time() > deadline:
            raise AssertionError(f"expected {n} events, got {len(events)}: {[e['operationType'] for e in events]}")
        event = await stream.try_next()
        if event is not None:
            events.append(event)
    return events


async def quiet(stream: Any, rounds: int = 2) -> list[dict[str, Any]]:
    """Whatever a stream yields over a few empty polls (should be nothing)."""
    events = []
    for _ in range(rounds):
        event = await stream.try_next()
        if event is not None:
            events.append(event)
    return events


def ops(events: list[dict[str, Any]]) -> list[str]:
    return [e["operationType"] for e in events]
