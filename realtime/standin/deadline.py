"""``maxTimeMS``: how long an operation may run, as the server bounds it.

A command with ``maxTimeMS`` (0: no limit) has a deadline; the server checks it at its interrupt points and fails
the operation with ``MaxTimeMSExpired`` (50, "operation exceeded time limit") once it has passed. The stand-in
checks it between the steps of a read (once its documents are gathered, before a batch is answered). A cursor
keeps what is left of its command's limit, and each getMore spends from it, as a server's cursor does
(ClientCursor::getLeftoverMaxTimeMicros): the time between getMores does not count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from realtime.standin.errors import CommandError


def exceeded() -> CommandError:
    return CommandError(50, "operation exceeded time limit")


@dataclass(frozen=True)
class Deadline:
    at: float | None  # the time.monotonic() past which the operation has exceeded its limit; None: no limit

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    @classmethod
    def of(cls, max_time_ms: int | None) -> Deadline:
        """The deadline of a command with this ``maxTimeMS`` that starts now."""
        return cls.after(max_time_ms / 1000 if max_time_ms else None)

    @property
    def limited(self) -> bool:
        return self.at is not None

    def check(self) -> None:
        """Fail with MaxTimeMSExpired if the deadline has passed."""
        if self.at is not None and time.monotonic() >= self.at:
            raise exceeded()

    def left(self) -> float | None:
        """The seconds left before the deadline (None: no limit)."""
        return None if self.at is None else max(self.at - time.monotonic(), 0.0)
