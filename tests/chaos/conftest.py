"""The chaos suite runs only when asked for (``-m chaos``, or ``CHAOS_SEEDS`` set): it takes minutes, and CI
runs it as a step of its own (``.ci/run``); ``scripts/chaos`` runs it longer. Its fast unit tests (the proxy,
the model, the schedules, the checker) run with everything else."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = "chaos" in (config.getoption("markexpr", "") or "") or bool(os.environ.get("CHAOS_SEEDS"))
    if wanted:
        return
    chaos = [item for item in items if item.get_closest_marker("chaos") is not None]
    if chaos:
        config.hook.pytest_deselected(items=chaos)
        items[:] = [item for item in items if item.get_closest_marker("chaos") is None]
