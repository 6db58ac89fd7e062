"""scripts/driver-suite's inputs: its lock runs the PyMongo the product runs, and its baseline is well formed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.unit.test_dependencies import LOCKS, read_lock

ROOT = Path(__file__).resolve().parents[2]


def _runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("driver_suite", ROOT / "scripts" / "driver_suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["driver_suite"] = module
    spec.loader.exec_module(module)
    return module


def test_the_harness_lock_shares_the_product_locks_versions() -> None:
    """The suites test the PyMongo the product runs, with the pytest its tests run."""
    harness, test = read_lock(LOCKS / "driver-suite.txt"), read_lock(LOCKS / "test.txt")
    assert "pymongo" in harness
    for name, pin in harness.items():
        assert pin.hashes, f"{name} has no hashes in driver-suite.txt"
        if name in test:
            assert pin.version == test[name].version, name


def test_the_baseline_names_known_suites_and_outcomes() -> None:
    runner = _runner()
    baseline = runner.read_baseline(runner.BASELINE)
    assert baseline, "tests/driver-suite-baseline.txt is empty: run scripts/driver-suite --write"
    assert {suite for suite, _ in baseline} <= set(runner.BY_NAME)
    assert set(baseline.values()) <= set(runner.OUTCOMES)


def test_a_test_that_passed_in_the_baseline_and_fails_now_is_a_regression(tmp_path: Path) -> None:
    runner = _runner()
    path = tmp_path / "baseline.txt"
    before = {"cursor": [runner.Result("cursor", "t::a", "passed"), runner.Result("cursor", "t::b", "failed")]}
    runner.write_baseline(path, before, "0")
    assert runner.read_baseline(path) == {("cursor", "t::a"): "passed", ("cursor", "t::b"): "failed"}
    now = {"cursor": [runner.Result("cursor", "t::a", "failed"), runner.Result("cursor", "t::b", "passed")]}
    lost, gained = runner.compare(runner.read_baseline(path), now)
    assert [key for key, _ in lost] == [("cursor", "t::a")]
    assert gained == [("cursor", "t::b")]
