"""The chaos sweep: seeded schedules of network and process faults against the whole system, checked against
the independent model (tests/chaos/run.py says how a run goes, docs/chaos.md what it injects and checks).

CI runs the seeds of :data:`CI_SEEDS` for :data:`CI_SECONDS` each (``.ci/run``: ``pytest -m chaos
tests/chaos``); ``CHAOS_SEEDS`` (a comma-separated list) and ``CHAOS_SECONDS`` choose others, and
``scripts/chaos`` draws random ones for a soak. A failure prints the schedule and the command that replays it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.chaos.run import run

# Chosen so that together they draw every kind of fault at least once (tests/chaos/test_schedule.py holds
# them to it), in CI_SECONDS of faults each.
CI_SEEDS = (3, 30, 36, 42)
CI_SECONDS = 30.0


def _seeds() -> list[int]:
    text = os.environ.get("CHAOS_SEEDS", "")
    return [int(s) for s in text.split(",") if s.strip()] or list(CI_SEEDS)


SECONDS = float(os.environ.get("CHAOS_SECONDS", CI_SECONDS))
FULL = os.environ.get("CHAOS_FULL", "") not in ("", "0")  # run to the end even after a violation


def _workdir(seed: int) -> Path:
    """Where a run keeps its processes' data and logs: not pytest's tmp_path, which other sessions on the machine
    rotate away; kept when the run fails (its report names it), removed when it passes."""
    base = Path(os.environ.get("CHAOS_DIR", Path(tempfile.gettempdir()) / "realtime-chaos"))
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"seed{seed}-{time.strftime('%H%M%S')}-", dir=base))


@pytest.mark.chaos
@pytest.mark.parametrize("seed", _seeds())
async def test_chaos(seed: int) -> None:
    workdir = _workdir(seed)
    result = await run(seed, SECONDS, workdir, stop_at_first=not FULL)
    print(result.report())
    assert not result.violations, "\n" + result.report()
    shutil.rmtree(workdir, ignore_errors=True)
