"""The memory that replays in flight may hold in one server process: a budget of bytes
(``REALTIME_REPLAY_MEMORY``) that every replay draws on while it reads history, until it has handed what it
read to its connection.

A replay holds a :class:`Hold` (``async with memory.hold() as hold``), grows it before each read by what the
read may bring, and shrinks it to what it keeps; leaving the block gives everything back, whatever happened.

Who waits, so that replays never wait on each other in a circle ("wait-die"):

* a replay that holds nothing yet waits for room, first come first served, at most ``wait`` seconds;
* the oldest replay that holds something waits for more (ahead of those not yet started), at most ``wait``
  seconds: the younger ones never wait while they hold, so they finish or fail and give room back;
* a younger replay that holds something and needs more than is left fails at once.

A replay that fails this way raises :class:`ReplayBusy` (the client gets the transient ``unavailable``: retry
with backoff). One that alone would need more than the whole budget raises :class:`ReplayTooBig` (the client
gets a ``reset``, as past ``REALTIME_REPLAY_LIMIT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator

from realtime.metrics import Counter, Registry


class ReplayBusy(Exception):
    """Other replays hold the budget: retry later."""


class ReplayTooBig(Exception):
    """This replay alone needs more than the whole budget."""


class ReplayMemory:
    """The budget of one process: ``held`` is what the holds hold now, ``peak`` the most they held at once."""

    def __init__(self, limit: int, wait: float, registry: Registry | None = None) -> None:
        if limit < 1:
            raise ValueError("the replay memory budget must be at least one byte")
        self.limit = limit
        self.wait = wait
        self.held = 0
        self.peak = 0
        self.holders: dict[int, Hold] = {}  # the holds holding something, by age (their number)
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._oldest: asyncio.Future[None] | None = None  # the oldest holder's wait for more, while it waits
        self._numbers = itertools.count()
        self.busy: Counter | None = None
        if registry is not None:
            registry.gauge("realtime_replay_memory_bytes", "bytes held by replays in flight",
                           read=lambda: float(self.held))
            registry.gauge("realtime_replay_memory_peak_bytes", "the most bytes replays in flight held at once",
                           read=lambda: float(self.peak))
            self.busy = registry.counter("realtime_replay_busy_total",
                                         "replays refused because others held the replay memory budget")

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[Hold]:
        """A replay's share of the budget, empty at first, given back on the way out."""
        hold = Hold(self, next(self._numbers))
        try:
            yield hold
        finally:
            hold.shrink(0)

    def _wake(self) -> None:
        """Grant the waiters at the head of the line what now fits, in order."""
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():  # given up
                self._waiters.popleft()
                continue
            if self.held + n > self.limit:
                return
            self._waiters.popleft()
            self.held += n
            self.peak = max(self.peak, self.held)
            fut.set_result(None)

    def _refuse(self) -> ReplayBusy:
        if self.busy is not None:
            self.busy.inc()
        return ReplayBusy("the replay memory budget is in use by other replays")


class Hold:
    """What one replay holds of the budget: ``size`` bytes."""

    __slots__ = ("memory", "number", "size")

    def __init__(self, memory: ReplayMemory, number: int) -> None:
        self.memory = memory
        self.number = number
        self.size = 0

    async def grow(self, n: int) -> None:
        """Hold ``n`` more bytes; or raise :class:`ReplayTooBig` or :class:`ReplayBusy`, holding what it held."""
        m = self.memory
        if n <= 0:
            return
        if self.size + n > m.limit:
            raise ReplayTooBig(f"a replay of more than {m.limit} bytes")
        fits = m.held + n <= m.limit
        if fits and (not m._waiters if not self.size else m._oldest is None or m._oldest.done()):
            m.held += n
            m.peak = max(m.peak, m.held)
        elif not self.size:
            await self._wait(n, first=False)
        elif self.number == min(m.holders):
            await self._wait(n, first=True)
        else:
            raise m._refuse()
        self.size += n
        m.holders[self.number] = self

    async def _wait(self, n: int, *, first: bool) -> None:
        m = self.memory
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if first:
            m._waiters.appendleft((n, fut))
            m._oldest = fut
        else:
            m._waiters.append((n, fut))
        m._wake()  # (those ahead may have given up)
        try:
            async with asyncio.timeout(m.wait):
                await fut
        except TimeoutError:
            self._abandon(n, fut)
            raise m._refuse() from None
        except BaseException:
            self._abandon(n, fut)
            raise

    def _abandon(self, n: int, fut: asyncio.Future[None]) -> None:
        """A wait that ended without the bytes: if they were granted just then, they go back."""
        if fut.done() and not fut.cancelled():
            self.memory.held -= n
        fut.cancel()
        self.memory._wake()  # those behind this one may fit now

    def shrink(self, to: int) -> None:
        """Hold only ``to`` bytes (if that is less than now); the rest goes back to the budget."""
        to = max(to, 0)
        if to >= self.size:
            return
        m = self.memory
        m.held -= self.size - to
        self.size = to
        if not to:
            m.holders.pop(self.number, None)
        m._wake()
