"""PyMongo's own test suites against the stand-in: run them, record each test's outcome, compare with the baseline.

Run by ``scripts/driver-suite`` (which makes the virtual environments and fetches PyMongo's source distribution)
with the project's Python (.venv, where ``realtime mongo`` is installed); the suites run with
.venv-driver-suite's, where PyMongo's harness has what it needs (requirements/driver-suite.txt). Nothing of the
harness is changed: each suite gets a fresh ``realtime mongo`` on a free port, named to the harness by its own
``DB_IP`` and ``DB_PORT`` variables, and a listening plugin (driver_suite_report.py) writes the outcomes.

Some suites need a fresh server per test where isolation needs it (``isolate``): there a test that failed is run
again, alone, on a stand-in of its own, and its outcome is that run's. A test that hangs fails after ``--timeout``
seconds (pytest-timeout), alone, and is not run again.

The baseline (tests/driver-suite-baseline.txt) holds every test's outcome. The run fails when a test that passed
in the baseline does not pass now; a test that passes now and did not before is reported, for ``--write``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "tests" / "driver-suite-baseline.txt"


@dataclass(frozen=True)
class Suite:
    name: str
    paths: tuple[str, ...]  # inside PyMongo's source tree
    title: str  # as docs/standin.md's table names it
    isolate: bool = False  # a failed test is run again alone, on a fresh stand-in


SUITES = (
    Suite("change_stream", ("test/test_change_stream.py",),
          "PyMongo `test/test_change_stream.py` (own tests + unified spec), sync"),
    Suite("change_stream_async", ("test/asynchronous/test_change_stream.py",),
          "PyMongo `test/asynchronous/test_change_stream.py`"),
    Suite("crud_unified", ("test/test_crud_unified.py",), "PyMongo CRUD unified spec (`test/crud/unified`)"),
    Suite("transactions_unified", ("test/test_transactions_unified.py",),
          "PyMongo transactions unified spec", isolate=True),
    Suite("collection", ("test/test_collection.py",), "PyMongo `test_collection.py`"),
    Suite("cursor", ("test/test_cursor.py",), "PyMongo `test_cursor.py`"),
)
BY_NAME = {s.name: s for s in SUITES}
OUTCOMES = ("passed", "failed", "error", "skipped")


@dataclass
class Result:
    suite: str
    test: str
    outcome: str
    reason: str = ""


class StandInProcess:
    """``realtime mongo --port 0`` in a process of its own; the port it prints; stopped for sure on exit."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> StandInProcess:
        realtime = Path(sys.executable).parent / "realtime"
        self.proc = subprocess.Popen([str(realtime), "mongo", "--port", "0"], stdout=subprocess.PIPE,
                                     stderr=self.log.open("a"), text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "MongoDB stand-in listening: mongodb://127.0.0.1:PORT/?replicaSet=rs0"
        if "listening" not in line:
            self.__exit__()
            raise RuntimeError(f"realtime mongo did not start: {line!r}; see {self.log}")
        self.port = int(line.split("mongodb://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def run_pytest(suite: Suite, targets: list[str], source: Path, python: Path, work: Path, timeout: int,
               tag: str) -> list[Result]:
    """Run ``targets`` (paths or test ids) of PyMongo's harness against a fresh stand-in; their outcomes."""
    report = work / f"{suite.name}.{tag}.jsonl"
    report.unlink(missing_ok=True)
    log = work / f"{suite.name}.{tag}.log"
    with StandInProcess(work / f"{suite.name}.{tag}.standin.log") as standin, log.open("w") as out:
        env = {**os.environ, "DB_IP": "127.0.0.1", "DB_PORT": str(standin.port), "DRIVER_SUITE_REPORT": str(report),
               "PYTHONPATH": str(ROOT / "scripts"), "PYTHONDONTWRITEBYTECODE": "1"}
        argv = [str(python), "-m", "pytest", *targets, "-p", "driver_suite_report", "-p", "no:cacheprovider",
                "--timeout", str(timeout), "--timeout-method", "signal", "-q", "-o", "log_cli=false",
                f"--junitxml={work / f'{suite.name}.{tag}.xml'}"]
        subprocess.run(argv, cwd=source, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if not report.exists():
        return [Result(suite.name, t, "error", f"the harness did not run; see {log}") for t in targets]
    results = []
    for line in report.read_text().splitlines():
        row = json.loads(line)
        results.append(Result(suite.name, row["test"], row["outcome"], row["reason"]))
    return results


def run_suites(suites: list[Suite], source: Path, python: Path, work: Path, jobs: int, timeout: int
               ) -> dict[str, list[Result]]:
    results: dict[str, list[Result]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        first = {pool.submit(run_pytest, s, list(s.paths), source, python, work, timeout, "all"): s for s in suites}
        reruns: dict[concurrent.futures.Future[list[Result]], tuple[Suite, int]] = {}
        for future in concurrent.futures.as_completed(first):
            suite = first[future]
            results[suite.name] = future.result()
            print(f"  {suite.name}: {summary_line(results[suite.name])}", flush=True)
            if suite.isolate:
                for i, r in enumerate(results[suite.name]):
                    # A test that hung (no server selectable, say) hangs alone too: it is not run again.
                    if r.outcome in ("failed", "error") and "Timeout" not in r.reason:
                        reruns[pool.submit(run_pytest, suite, [r.test], source, python, work, timeout,
                                           f"alone{i}")] = (suite, i)
        for future in concurrent.futures.as_completed(reruns):
            suite, i = reruns[future]
            alone = [r for r in future.result() if r.test == results[suite.name][i].test]
            if alone:
                results[suite.name][i] = alone[0]
    for suite in suites:
        if suite.isolate:
            print(f"  {suite.name} (failures run again, each on a fresh stand-in): "
                  f"{summary_line(results[suite.name])}", flush=True)
    return results


def _run_again(lost: list[tuple[tuple[str, str], Result | None]], source: Path, python: Path, work: Path,
               timeout: int) -> dict[tuple[str, str], Result]:
    """The tests given, run again, each suite's together on a stand-in of their own."""
    by_suite: dict[str, list[str]] = {}
    for (suite, test), _ in lost:
        by_suite.setdefault(suite, []).append(test)
    out: dict[tuple[str, str], Result] = {}
    for suite, tests in by_suite.items():
        for r in run_pytest(BY_NAME[suite], tests, source, python, work, timeout, "again"):
            out[(r.suite, r.test)] = r
    return out


def counts(results: list[Result]) -> dict[str, int]:
    out = dict.fromkeys(OUTCOMES, 0)
    for r in results:
        out[r.outcome] += 1
    return out


def summary_line(results: list[Result]) -> str:
    c = counts(results)
    return f"{c['passed']} passed, {c['failed'] + c['error']} failed, {c['skipped']} skipped"


def read_baseline(path: Path) -> dict[tuple[str, str], str]:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                outcome, suite, test = line.split("\t")
                out[(suite, test)] = outcome
    return out


def write_baseline(path: Path, results: dict[str, list[Result]], version: str) -> None:
    kept = {k: v for k, v in read_baseline(path).items() if k[0] not in results}  # suites not run this time
    for rows in results.values():
        for r in rows:
            kept[(r.suite, r.test)] = r.outcome
    lines = [f"# PyMongo {version}'s own tests against the stand-in, written by scripts/driver-suite --write.",
             "# One line per test: outcome, suite, test. CI fails when a test that passed here does not pass.",
             *[f"{outcome}\t{suite}\t{test}" for (suite, test), outcome in sorted(kept.items())]]
    path.write_text("\n".join(lines) + "\n")


def compare(baseline: dict[tuple[str, str], str], results: dict[str, list[Result]]
            ) -> tuple[list[tuple[tuple[str, str], Result | None]], list[tuple[str, str]]]:
    """The tests of the suites run that passed in the baseline and do not pass now (with their result, None when
    they did not run), and those that pass now and did not."""
    now = {(r.suite, r.test): r for rows in results.values() for r in rows}
    lost = [(k, now.get(k)) for k, outcome in sorted(baseline.items())
            if k[0] in results and outcome == "passed" and (k not in now or now[k].outcome != "passed")]
    gained = sorted(k for k, r in now.items() if r.outcome == "passed" and baseline.get(k) != "passed")
    return lost, gained


UNSUPPORTED = "not supported by the realtime MongoDB stand-in"  # what docs/standin.md lists answers this


def table(results: dict[str, list[Result]]) -> str:
    """The outcomes per suite, as docs/standin.md shows them. The last column leaves out the tests that failed on a
    feature the stand-in says it does not support (its "not supported by the realtime MongoDB stand-in" error)."""
    rows = ["| suite (against `realtime mongo`) | passed | failed | skipped | passed of those not skipped "
            "| failed on a feature listed as not supported | passed, not counting those |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for suite in SUITES:
        if suite.name not in results:
            continue
        c = counts(results[suite.name])
        ran = c["passed"] + c["failed"] + c["error"]
        unsupported = sum(1 for r in results[suite.name]
                          if r.outcome in ("failed", "error") and UNSUPPORTED in r.reason)
        share = f"{100 * c['passed'] / ran:.0f}%" if ran else "-"
        counted = ran - unsupported
        share_counted = f"{100 * c['passed'] / counted:.0f}%" if counted else "-"
        title = suite.title + (" (each failed test run again on a fresh stand-in)" if suite.isolate else "")
        rows.append(f"| {title} | {c['passed']} | {c['failed'] + c['error']} | {c['skipped']} | {share} "
                    f"| {unsupported} | {share_counted} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="PyMongo's source tree (its test/ folder)")
    parser.add_argument("--python", type=Path, required=True, help="the interpreter of .venv-driver-suite")
    parser.add_argument("--version", required=True, help="PyMongo's version, for the baseline's header")
    parser.add_argument("--suite", action="append", choices=list(BY_NAME), help="only this suite (repeatable)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="suites run at once")
    parser.add_argument("--timeout", type=int, default=30, help="seconds after which one test fails as hung")
    parser.add_argument("--write", action="store_true", help="write the outcomes to the baseline")
    parser.add_argument("--work", type=Path, help="where logs and reports go (default: a temporary folder)")
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    args = parser.parse_args()

    suites = [BY_NAME[n] for n in args.suite] if args.suite else list(SUITES)
    source, python = args.source.absolute(), args.python.absolute()  # (not resolved: a venv's python is a link)
    work = (args.work or Path(tempfile.mkdtemp(prefix="driver-suite-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"PyMongo {args.version}'s suites against the stand-in ({len(suites)} suites, {args.jobs} at once; "
          f"logs in {work})", flush=True)
    results = run_suites(suites, source, python, work, max(args.jobs, 1), args.timeout)
    with (work / "results.jsonl").open("w") as out:
        for rows in results.values():
            for r in rows:
                out.write(json.dumps(r.__dict__) + "\n")
    print(table(results))
    print(f"took {time.monotonic() - started:.0f} s")

    if args.write:
        write_baseline(args.baseline, results, args.version)
        print(f"wrote {args.baseline.relative_to(ROOT)}")
        return 0
    baseline = read_baseline(args.baseline)
    lost, gained = compare(baseline, results)
    if lost:  # once more, each suite's on a fresh stand-in: a test that fails only under load is a flake, told
        print(f"{len(lost)} tests that passed in the baseline did not; running them again on fresh stand-ins")
        again = _run_again(lost, source, python, work, args.timeout)
        for (suite, test), result in again.items():
            if result.outcome == "passed":
                print(f"  passed when run again (flaky under load?): {suite}: {test}")
        for rows in results.values():
            for i, r in enumerate(rows):
                rows[i] = again.get((r.suite, r.test), r)
        lost, gained = compare(baseline, results)
    if gained:
        print(f"{len(gained)} tests pass that did not in the baseline (scripts/driver-suite --write records them):")
        for suite, test in gained[:20]:
            print(f"  {suite}: {test}")
        if len(gained) > 20:
            print(f"  ... and {len(gained) - 20} more (all in {work / 'results.jsonl'})")
    if lost:
        print(f"{len(lost)} tests that passed in the baseline do not pass now:", file=sys.stderr)
        for (suite, test), r in lost:
            why = "not run" if r is None else f"{r.outcome}: {r.reason}"
            print(f"  {suite}: {test}: {why}", file=sys.stderr)
        return 1
    print("no test that passed in the baseline fails")
    return 0


if __name__ == "__main__":
    sys.exit(main())
