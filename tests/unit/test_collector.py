"""realtime.collector: the garbage collector kept off long-lived data, and the cycles it leaves freed in time.

The collector's state is the process's: each case runs in a Python of its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any


def run(script: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


DATA = """
    import gc, json
    from realtime import collector

    def grow(freezer):
        data = []
        for i in range(200_000):  # long-lived data, as the stand-in's documents
            data.append({"_id": i, "tags": [i]})
        for i in range(50_000):  # and the short-lived objects of the commands that follow
            {"x": [i]}
        return data
"""


def test_what_lives_through_young_collections_is_left_out_of_full_ones() -> None:
    got = run(DATA + """
    freezer = collector.freeze_survivors()
    data = grow(freezer)
    print(json.dumps({"frozen": gc.get_freeze_count(), "oldest": len(gc.get_objects(2)),
                      "installed": gc.callbacks.count(freezer), "again": collector.freeze_survivors() is freezer}))
    """)
    assert got["frozen"] >= 300_000  # most of the 200,000 documents and their lists (some are young still)
    assert got["oldest"] < 40_000  # what a full collection would go through
    assert got["installed"] == 1 and got["again"]


def test_without_it_full_collections_go_through_all_the_data() -> None:
    got = run(DATA + """
    before = gc.get_freeze_count()  # (Python 3.12 starts with a few hundred objects frozen)
    data = grow(None)
    print(json.dumps({"frozen": gc.get_freeze_count() - before, "oldest": len(gc.get_objects(2))}))
    """)
    assert got["frozen"] == 0
    assert got["oldest"] >= 400_000


LEAK = """
    import gc, itertools, json
    from realtime import collector

    now = itertools.count(0, 60)  # a clock that moves a minute each time it is read
    freezer = collector.freeze_survivors()
    freezer.interval = INTERVAL
    freezer.clock = lambda: float(next(now))
    freezer.kept_at = freezer.checked_at = 0.0
    held = []
    for round in range(40):
        for i in range(10_000):  # cycles alive through collections, then dropped: garbage among frozen objects
            a = {"round": round}
            b = [a]
            a["b"] = b
            held.append(a)
        for i in range(30_000):
            {"x": [i]}
        held.clear()
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    print(json.dumps({"passes": freezer.full_passes, "frozen": frozen, "left": gc.collect()}))
"""


def test_cycles_among_frozen_objects_are_freed_once_what_is_frozen_has_doubled() -> None:
    got = run(LEAK.replace("INTERVAL", "600.0"))
    # 40 rounds of 20,000 objects in cycles (800,000): without a pass through everything, most would stay
    assert got["passes"] >= 1
    assert got["left"] <= 200_000


def test_no_pass_through_everything_before_the_interval() -> None:
    got = run(LEAK.replace("INTERVAL", "1e12"))
    assert got["passes"] == 0
    assert got["left"] >= 300_000  # what the passes free (the test above, <= 200,000 left): kept until the interval
