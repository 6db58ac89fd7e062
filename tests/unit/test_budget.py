"""The replay memory budget (realtime/server/budget.py): what replays in flight may hold together."""

from __future__ import annotations

import asyncio
import random

import pytest

from realtime.metrics import Registry
from realtime.server.budget import ReplayBusy, ReplayMemory, ReplayTooBig

WAIT = 0.2  # seconds a hold may wait in these tests


async def test_holds_add_up_and_are_given_back_on_the_way_out() -> None:
    registry = Registry()
    memory = ReplayMemory(1000, WAIT, registry)
    with pytest.raises(RuntimeError):
        async with memory.hold() as a:
            await a.grow(300)
            async with memory.hold() as b:
                await b.grow(500)
                assert (memory.held, a.size, b.size) == (800, 300, 500)
                b.shrink(100)
                assert memory.held == 400
            assert memory.held == 300
            raise RuntimeError("a replay that fails")
    assert memory.held == 0 and memory.peak == 800 and memory.holders == {}
    text = registry.render()
    assert "realtime_replay_memory_bytes 0" in text and "realtime_replay_memory_peak_bytes 800" in text


async def test_a_replay_larger_than_the_budget_is_too_big() -> None:
    """Pins: a replay could hold any amount of memory (a 30 MB room replayed 20 times at once: +121 MB)."""
    memory = ReplayMemory(1000, WAIT)
    async with memory.hold() as hold:
        await hold.grow(600)
        with pytest.raises(ReplayTooBig):
            await hold.grow(401)
        assert hold.size == 600 and memory.held == 600  # it keeps what it had until it lets go
    with pytest.raises(ReplayTooBig):
        async with memory.hold() as hold:
            await hold.grow(1001)
    assert memory.held == 0


async def test_a_new_replay_waits_its_turn_then_gives_up_busy() -> None:
    registry = Registry()
    memory = ReplayMemory(1000, WAIT, registry)
    order: list[str] = []

    async def replay(name: str, n: int, release: asyncio.Event) -> None:
        async with memory.hold() as hold:
            await hold.grow(n)
            order.append(name)
            await release.wait()

    first_done, second_done, third_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(replay("first", 800, first_done))
    await asyncio.sleep(0)
    second = asyncio.create_task(replay("second", 500, second_done))  # does not fit yet: waits
    await asyncio.sleep(0)
    third = asyncio.create_task(replay("third", 100, third_done))  # would fit, but comes after second
    await asyncio.sleep(0.02)
    assert order == ["first"] and memory.held == 800
    first_done.set()
    await first
    await asyncio.sleep(0.02)
    assert order == ["first", "second", "third"] and memory.held == 600
    # now one that does not fit before its wait ends
    late = asyncio.create_task(replay("late", 500, asyncio.Event()))
    with pytest.raises(ReplayBusy):
        await late
    assert memory.held == 600 and "realtime_replay_busy_total 1" in registry.render()
    second_done.set()
    third_done.set()
    await asyncio.gather(second, third)
    assert memory.held == 0 and memory.peak <= 1000


async def test_younger_replays_fail_at_once_and_the_oldest_waits_for_more() -> None:
    """No replay waits while another that waits holds what it needs: the oldest may wait, the others fail."""
    memory = ReplayMemory(1000, 5.0)
    async with memory.hold() as old, memory.hold() as young:
        await old.grow(400)
        await young.grow(500)
        with pytest.raises(ReplayBusy):
            await young.grow(200)  # younger: fails at once (it would otherwise wait on the oldest, and it on it)
        assert young.size == 500
        growing = asyncio.create_task(old.grow(300))  # the oldest waits for the younger to let go
        newcomer = asyncio.create_task(memory_hold_and_grow(memory, 50))  # behind the oldest, though it fits
        await asyncio.sleep(0.02)
        assert not growing.done() and not newcomer.done() and memory.held == 900
        with pytest.raises(ReplayBusy):
            await young.grow(50)  # while the oldest waits, the younger get nothing more
        young.shrink(0)
        await growing
        assert old.size == 700
        assert await newcomer == 50
    assert memory.held == 0


async def memory_hold_and_grow(memory: ReplayMemory, n: int) -> int:
    async with memory.hold() as hold:
        await hold.grow(n)
        return hold.size


async def test_a_cancelled_wait_gives_back_what_it_was_granted() -> None:
    memory = ReplayMemory(1000, 5.0)
    async with memory.hold() as big:
        await big.grow(1000)
        waiting = asyncio.create_task(memory_hold_and_grow(memory, 600))
        behind = asyncio.create_task(memory_hold_and_grow(memory, 300))
        await asyncio.sleep(0.01)
        big.shrink(0)  # grants the 600, and the 300
        waiting.cancel()  # cancelled before it could run on: the 600 go back
        await asyncio.gather(waiting, return_exceptions=True)
        assert await behind == 300
    assert memory.held == 0


async def test_concurrent_replays_never_hold_more_than_the_budget() -> None:
    """Many replays growing page by page, some failing, some too big: at no moment is more held than the limit,
    and everything goes back."""
    memory = ReplayMemory(10_000, 0.5)
    rng = random.Random(7)
    outcomes: list[str] = []
    over: list[int] = []

    async def replay(pages: list[int]) -> None:
        async with memory.hold() as hold:
            for page in pages:
                await hold.grow(page)
                if memory.held > memory.limit:
                    over.append(memory.held)
                await asyncio.sleep(rng.random() / 500)
                hold.shrink(hold.size - page // 3)  # keeps part of what it read

    async def run(pages: list[int]) -> None:
        try:
            await replay(pages)
            outcomes.append("done")
        except ReplayBusy:
            outcomes.append("busy")
        except ReplayTooBig:
            outcomes.append("too big")

    await asyncio.gather(*(run([rng.randint(200, 2500) for _ in range(rng.randint(1, 8))]) for _ in range(200)))
    assert not over
    assert memory.held == 0 and memory.holders == {}
    assert 0 < memory.peak <= memory.limit
    assert outcomes.count("done") > 0 and len(outcomes) == 200


def test_the_budget_is_at_least_a_byte() -> None:
    with pytest.raises(ValueError):
        ReplayMemory(0, 1.0)
