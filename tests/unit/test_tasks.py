"""cancel_all ends tasks for sure, even one whose first cancellation a library turned into an error it retries."""

from __future__ import annotations

import asyncio

import pytest

from realtime.tasks import cancel_all


async def _retrying_loop(wake: asyncio.Event, cancels_seen: list[int]) -> None:
    """A background loop that takes one cancellation for an error and waits again, as a retrying loop does when a
    client library turned the cancel into a timeout or a connection error."""
    while True:
        try:
            await wake.wait()
        except asyncio.CancelledError:
            cancels_seen.append(1)
            if len(cancels_seen) > 1:
                raise
            # the error path: counted, logged, tried again at the next wake


async def test_a_task_that_takes_one_cancel_for_an_error_still_ends() -> None:
    seen: list[int] = []
    task = asyncio.get_running_loop().create_task(_retrying_loop(asyncio.Event(), seen))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all([task]), timeout=5)
    assert task.cancelled() and len(seen) == 2


async def test_one_cancel_and_gather_would_hang_on_it() -> None:
    """What the servers did before: the same task outlives a single cancel (the case cancel_all exists for)."""
    seen: list[int] = []
    task = asyncio.get_running_loop().create_task(_retrying_loop(asyncio.Event(), seen))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(asyncio.gather(task, return_exceptions=True)), timeout=0.5)
    assert not task.done()
    await cancel_all([task])
    assert task.done()


async def test_an_error_on_the_way_out_is_retrieved_not_raised() -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    done = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    failing = asyncio.get_running_loop().create_task(fails_when_cancelled())
    await asyncio.sleep(0.01)
    await cancel_all([done, failing])
    assert done.done() and isinstance(failing.exception(), RuntimeError)
