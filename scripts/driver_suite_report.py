"""A pytest plugin for scripts/driver-suite: one JSON line per test of PyMongo's own suites, with its outcome.

Loaded with ``-p driver_suite_report`` into PyMongo's harness, unchanged; it only listens. The file it writes is
named by the ``DRIVER_SUITE_REPORT`` environment variable. Outcomes: passed, failed (the test's call failed),
error (its setup or teardown failed), skipped (xfailed counts as skipped: the harness expects the failure).
"""

from __future__ import annotations

import json
import os
from typing import Any

_outcomes: dict[str, tuple[str, str]] = {}


def _reason(report: Any) -> str:
    """The first line that says why: the exception line of a failure, the reason of a skip."""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message).splitlines()[0] if crash.message else ""
    return str(report.longrepr or "").strip().splitlines()[-1:][0] if report.longrepr else ""


def pytest_runtest_logreport(report: Any) -> None:
    nodeid = report.nodeid
    before = _outcomes.get(nodeid)
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            outcome = "skipped" if report.skipped else "failed"
        else:
            outcome = report.outcome
        _outcomes[nodeid] = (outcome, _reason(report) if outcome != "passed" else "")
    elif report.failed:  # setup or teardown
        if before is None or before[0] != "failed":
            _outcomes[nodeid] = ("error", f"{report.when}: {_reason(report)}")
    elif report.skipped and before is None:
        _outcomes[nodeid] = ("skipped", _reason(report))


def pytest_sessionfinish(session: Any) -> None:
    path = os.environ.get("DRIVER_SUITE_REPORT")
    if not path:
        return
    with open(path, "w") as out:
        for nodeid, (outcome, reason) in _outcomes.items():
            out.write(json.dumps({"test": nodeid, "outcome": outcome, "reason": reason[:300]}) + "\n")
