"""Ending background tasks for sure."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_all(tasks: Iterable[asyncio.Task[Any]], *, every: float = 0.1) -> None:
    """Cancel ``tasks`` and return once each has ended, its outcome retrieved.

    One ``cancel()`` is not always enough: a library may turn a cancellation that races its own timeout into an
    error (Python 3.11's ``asyncio.timeout`` can), which a retrying loop catches and goes on. So the cancel is
    repeated every ``every`` seconds until the task ends."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: an error on the way out is not "never retrieved"
