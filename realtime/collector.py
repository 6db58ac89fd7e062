"""Python's garbage collector in the long-running processes: kept from pausing them for long.

CPython's full collection goes through every object it tracks, all of them, however long they have lived: on
the MongoDB stand-in holding some 60,000 posts one took 0.54 s, during which no command was answered.
Objects put in the permanent generation (``gc.freeze``) are left out of every later collection. Reference
counting still frees them when nothing refers to them any more; only garbage in a cycle among them waits for
a collection that goes through them, which ``gc.unfreeze`` lets the next full one do.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

OLDEST = 2  # CPython's generations are 0, 1 and 2; a full collection is one of generation 2
CHECK_EVERY = 30.0  # seconds between two counts of what a Freezer has frozen


def freeze_start_up() -> None:
    """Leaves what start-up made (modules, configuration, the app) out of every later collection."""
    gc.collect()
    gc.freeze()


class Freezer:
    """For a process whose data grows while it runs (the MongoDB stand-in): what lives through a collection
    of the middle generation is frozen, so that no collection goes through the data again. Only garbage in
    cycles that formed among frozen objects stays, until what is frozen has doubled since the last collection
    that went through all of it and ``interval`` seconds have passed since then. Then everything is unfrozen,
    the next full collection goes through it all and frees those cycles (one long pause: about 0.1 s per
    million objects here), and what it leaves is frozen again. The process holds at most about twice what it
    needs, or what it leaks in ``interval``, whichever is more."""

    def __init__(self, interval: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.kept = max(gc.get_freeze_count(), 1)  # what the last collection through everything left
        self.kept_at = self.checked_at = clock()  # ... and when; when what is frozen was last counted
        self.full_due = False
        self.full_passes = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        # Called at the end of every collection, when the generations' lists are consistent again: freezing
        # and unfreezing move them as a whole, at no cost. Counting what is frozen walks through all of it:
        # done at most once a CHECK_EVERY, once ``interval`` has passed.
        if phase != "stop" or info["generation"] == 0:
            return
        if self.full_due:
            if info["generation"] == OLDEST:
                self.full_due = False
                self.full_passes += 1
                gc.freeze()
                self.kept = max(gc.get_freeze_count(), 1)
                self.kept_at = self.checked_at = self.clock()
            return
        now = self.clock()
        if now - self.kept_at >= self.interval and now - self.checked_at >= CHECK_EVERY:
            self.checked_at = now
            if gc.get_freeze_count() > 2 * self.kept:
                gc.unfreeze()  # back into the oldest generation, for the next full collection to go through
                self.full_due = True
                return
        gc.freeze()


def freeze_survivors() -> Freezer:
    """Installs a `Freezer` (once per process) after freezing what start-up made; returns it."""
    for callback in gc.callbacks:
        if isinstance(callback, Freezer):
            return callback
    freeze_start_up()
    freezer = Freezer()
    gc.callbacks.append(freezer)
    return freezer
