"""What a client saw: one connection's frames, in order, with times (shared by the clients and the checker)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Record:
    """One connection (for long-polling, the whole chain of polls) and what went over it."""

    session: str
    transport: str
    user: str
    index: int
    server: str
    opened: float
    log: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)  # (time, "out"/"in", frame)
    closed: float | None = None
    why: str = ""  # how it ended
    by_client: bool = False  # the client ended it on purpose
    final: bool = False  # open when the run ended: everything up to the canaries must have arrived

    def out(self, frame: dict[str, Any]) -> None:
        self.log.append((time.monotonic(), "out", frame))

    def got(self, frame: dict[str, Any]) -> None:
        self.log.append((time.monotonic(), "in", frame))

    def end(self, why: str, *, by_client: bool = False) -> None:
        if self.closed is None:
            self.closed = time.monotonic()
            self.why = why
            self.by_client = by_client

    def pending(self) -> list[tuple[float, dict[str, Any]]]:
        """Requests sent and not answered yet: (when, frame)."""
        answered = {f.get("ref") for _, d, f in self.log if d == "in" and f.get("ref") is not None}
        return [(t, f) for t, d, f in self.log if d == "out" and f.get("ref") is not None
                and f.get("ref") not in answered]
