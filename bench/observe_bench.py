#!/usr/bin/env python
"""What measuring the ``server_to_socket`` stage costs the fan-out: once per event and room, or once per delivery.

Not a test: it measures. The server's fan-out writes an event's frame to each subscriber's socket in a tight
loop of ``os.write()`` (``realtime/server/hub.py``). This script times that loop over ``-c`` connected Unix
socket pairs (read back between rounds, so no write blocks), three ways:

* ``bare``: the writes alone;
* ``per event and room``: the writes, then one ``time.monotonic()`` and one histogram observation (what the
  server does);
* ``per delivery``: one ``time.monotonic()`` and one observation after each write.

Each way runs ``--rounds`` rounds of ``-c`` writes of a ``-s``-byte frame, interleaved, ``--repeat`` times; the
least time per write of each repeat is kept (the machine's noise only adds), and the median of those is shown,
with the cost of each way over ``bare``. A Unix socket write is cheaper than a TCP one, so the difference is
what matters, not the total: compare it with the floor of ``bench/fanout_bench.py`` (its ``floor µs/write``).

Results: a table on stdout and the ``## Stage latency cost`` section of ``docs/benchmarks.md``.

    python bench/observe_bench.py [-c 1000] [-s 330] [--rounds 20] [--repeat 9]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable

import benchkit
from benchkit import git, replace_section

from realtime.metrics import Histogram

SECTION = "## Stage latency cost"


def drain(readers: list[socket.socket]) -> None:
    for r in readers:
        try:
            while r.recv(1 << 16):
                pass
        except BlockingIOError:
            pass


def ways(fds: tuple[int, ...], data: bytes) -> dict[str, Callable[[], None]]:
    series = Histogram("h", "the stage's histogram").labels(stage="server_to_socket")
    observe, monotonic, write = series.observe, time.monotonic, os.write

    def bare() -> None:
        for fd in fds:
            write(fd, data)

    def per_room() -> None:
        read = monotonic()
        for fd in fds:
            write(fd, data)
        observe(monotonic() - read)

    def per_delivery() -> None:
        read = monotonic()
        for fd in fds:
            write(fd, data)
            observe(monotonic() - read)

    return {"bare": bare, "per event and room": per_room, "per delivery": per_delivery}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-c", "--connections", type=int, default=1000, help="socket pairs (1000)")
    parser.add_argument("-s", "--size", type=int, default=330, help="bytes per frame (330)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds per timing (20)")
    parser.add_argument("--repeat", type=int, default=9, help="timings per way (9)")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args(argv)
    pairs = [socket.socketpair() for _ in range(args.connections)]
    try:
        for a, b in pairs:
            a.setblocking(False)
            b.setblocking(False)
        readers = [b for _, b in pairs]
        loops = ways(tuple(a.fileno() for a, _ in pairs), b"x" * args.size)
        ns: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(args.repeat):
            for name, loop in loops.items():  # interleaved: a slow moment of the machine hits each way alike
                best = float("inf")
                for _ in range(args.rounds):
                    drain(readers)
                    t = time.perf_counter_ns()
                    loop()
                    best = min(best, time.perf_counter_ns() - t)
                ns[name].append(best / args.connections)
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    bare = statistics.median(ns["bare"])
    rows = [(name, statistics.median(v), statistics.median(v) - bare) for name, v in ns.items()]
    m = benchkit.machine()
    lines = [f"| {name} | {per:.0f} | {extra:+.0f} |" for name, per, extra in rows]
    section = f"""{SECTION}

`python bench/observe_bench.py` (`bench/observe_bench.py`): the fan-out's loop of `os.write()` over
{args.connections} Unix socket pairs, {args.size}-byte frames, bare, with one `time.monotonic()` and one histogram
observation per event and room (what the server does for `server_to_socket`), and with one per delivery; the
median over {args.repeat} repeats of the least time per write of {args.rounds} rounds. The extra cost per
delivery is to be compared with a delivery's whole cost (the fan-out benchmark's floor, a TCP write, is
several times a Unix socket write).

Measured {dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")} on {m['cpus']} CPUs ({m['cpu'] or 'unknown CPU'}), \
Python {m['python']}, commit {git("rev-parse", "--short", "HEAD") or "?"}.

| way | ns per write | over bare (ns per write) |
|---|---:|---:|
{chr(10).join(lines)}
"""
    print(section)
    if not args.no_write:
        replace_section(SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
