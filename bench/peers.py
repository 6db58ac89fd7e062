#!/usr/bin/env python
"""Run realtime through the peers' fan-out harness, side by side with the peers, in the same run.

The harness (a folder with ``run.sh``, ``load.py``, ``publisher.py``, ``targets.conf``; ``--peers``, default
``$PEERS_DIR`` or ``../shared/peers`` next to this repository) measures WebSocket room fan-out servers under
identical parameters with its own load generator and publisher. It is read-only and not ours, so this script
copies it to a temporary folder and adds to the copy what it needs to drive realtime:

* an adapter for ``load.py``: connection ``i`` subscribes to ``hashtag:r<i % R>`` and is ready at
  ``subscribed``; events are realtime's ``event`` frames, whose ``data`` is the harness's event body;
* a publisher mode: XADD to ``{rt}:events`` an envelope like the watcher's (``id``, ``type``, ``rooms``,
  ``data`` = the body, ``ts``), in an entry like the watcher's (with a token ``t`` and the append time ``w``);
* a target line: ``python -m realtime serve`` (this interpreter, anonymous access, one worker).

Everything after ``--`` goes to the harness's ``run.sh`` (``-w fanout``, ``-n 2``, ``--targets "sanic-fast
realtime"``...). Results: the folder ``run.sh`` prints; its tables also go to ``bench/results/peers.md`` and the
``## Side by side with the peers`` section of ``docs/benchmarks.md`` (not with ``--no-write``). Nothing of the
harness is kept in this repository.

    python bench/peers.py                                  # every peer and realtime, both workloads
    python bench/peers.py -- -w fanout --targets "sanic-fast realtime" -n 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit import DOCS, ROOT, replace_section

RESULTS = ROOT / "bench" / "results" / "peers.md"
SECTION = "## Side by side with the peers"
INTRO = """\
`bench/peers.py` runs realtime (row `realtime`) through the peers' own harness, in the same run as the peers
and under the same parameters, with the harness's load generator and publisher (its event body delivered as
an event's `data`): python-socketio with its Redis manager (`socketio`), a Sanic server that awaits
`ws.send()` per socket (`sanic`), a fan-out measurement prototype with no auth, no bounds and no metrics
(`sanic-fast`), and `websockets.broadcast()` in one process with no Redis hop (`websockets`). The harness's
own columns follow; `srv µs/deliv` is the server's CPU per delivery."""

ADAPTER = '''

class RealtimeAdapter(JsonRoomsAdapter):
    """realtime: subscribe to hashtag:<room>; ready at "subscribed"; an event's "data" is the body."""

    name = "realtime"
    default_path = "/ws"

    def on_open(self, conn):
        conn.send_text(dumps({"op": "subscribe", "rooms": ["hashtag:" + conn.room]}))

    def on_message(self, conn, data):
        if data.startswith(b'{"op":"subscribed"'):
            conn.mark_subscribed()
            return None
        return super().on_message(conn, data)


ADAPTERS[RealtimeAdapter.name] = RealtimeAdapter

'''

MODE = '''

async def mode_realtime(a) -> dict:
    """XADD {rt}:events an envelope like the watcher's, ids like its (seconds << 32 | n)-0."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(a.redis)
    await r.ping()
    pad = make_pad(a.size)
    last = [0]

    async def emit(ri, seq):
        room = room_name(ri)
        t = time.time_ns()
        last[0] = max(((t // 1_000_000_000) << 32) | 1, last[0] + 1)
        eid = f"{last[0]}-0"
        body = orjson.dumps({"id": eid, "type": "post:created", "rooms": ["hashtag:" + room],
                             "data": make_event(room, seq, pad), "ts": t // 1_000_000})
        await r.execute_command("XADD", "{rt}:events", "MAXLEN", "~", a.maxlen, eid, "e", body, "t", "bench",
                                "w", t // 1000)

    res = await paced(a.rate, a.duration, a.rooms, emit)
    await r.aclose()
    return res


MODES["realtime"] = mode_realtime

'''


def insert_before_main(path: Path, text: str) -> None:
    source = path.read_text()
    marker = "\ndef main("
    if marker not in source:
        raise SystemExit(f"{path}: no main() to insert before; the harness changed")
    path.write_text(source.replace(marker, text + marker, 1))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, passthrough = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--peers", type=Path,
                        default=Path(os.environ.get("PEERS_DIR") or ROOT.parent / "shared" / "peers"),
                        help="the harness folder (default $PEERS_DIR or ../shared/peers)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results or docs/benchmarks.md")
    args = parser.parse_args(ours)
    if not (args.peers / "run.sh").is_file():
        parser.error(f"{args.peers} does not hold the harness (no run.sh); give --peers")
    with tempfile.TemporaryDirectory(prefix="realtime-peers-") as tmp:
        copy = Path(tmp) / "peers"
        shutil.copytree(args.peers, copy, ignore=shutil.ignore_patterns("__pycache__"))
        for path in copy.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        insert_before_main(copy / "load.py", ADAPTER)
        insert_before_main(copy / "publisher.py", MODE)
        server = " ".join(shlex.quote(part) for part in [
            "env", "REDIS_URL=@REDIS@", "REALTIME_LISTEN=127.0.0.1:@PORT@", "REALTIME_ALLOW_ANONYMOUS=true",
            "REALTIME_MAX_CONNECTIONS_PER_ADDRESS=100000", f"PYTHONPATH={ROOT}", sys.executable, "-m", "realtime",
            "--log-level", "WARNING", "serve"])
        targets = (copy / "targets.conf").read_text().rstrip("\n")
        (copy / "targets.conf").write_text(f"{targets}\nrealtime  realtime  /ws  realtime  {server}\n")
        out = out_dir(passthrough)
        if out is None:
            out = Path("/tmp/peers-results") / time.strftime("%Y%m%d-%H%M%S")
            passthrough = [*passthrough, "-o", str(out)]
        code = subprocess.call(["bash", str(copy / "run.sh"), *passthrough], cwd=copy)
    if code == 0 and not args.no_write:
        write_results(out, passthrough)
    return code


def out_dir(passthrough: list[str]) -> Path | None:
    for i, arg in enumerate(passthrough[:-1]):
        if arg in ("-o", "--out"):
            return Path(passthrough[i + 1])
    return None


def summarise(path: Path) -> str:
    """Per workload and target, the range over the runs of CPU per delivery, p99, RSS per connection and the
    share received: a markdown table (empty without results)."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            rows.setdefault((r["workload"].split(" (")[0], r["label"]), []).append(r)
    if not rows:
        return ""

    def span(values: list[float], digits: int = 1) -> str:
        lo, hi = min(values), max(values)
        return f"{lo:.{digits}f}" if f"{lo:.{digits}f}" == f"{hi:.{digits}f}" else f"{lo:.{digits}f}-{hi:.{digits}f}"

    lines = ["Summary (the range over the runs below):", "",
             "| workload | target | runs | server µs/delivery | p99 ms | RSS/connection KiB | received |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for (workload, label), runs in rows.items():
        received = [100 * r["received"] / r["expected"] for r in runs if r["expected"]]
        lines.append(f"| {workload} | {label} | {len(runs)} | {span([r['server_cpu_us_per_delivery'] for r in runs])} "
                     f"| {span([r['lat_ms']['p99'] for r in runs if r['lat_ms'].get('p99') is not None])} "
                     f"| {span([r['rss_per_conn_kib'] for r in runs])} | {span(received)}% |")
    return "\n".join(lines) + "\n\n"


def write_results(out: Path, passthrough: list[str]) -> None:
    """The harness's tables and versions to bench/results/peers.md and the docs' side-by-side section."""
    table, info = out / "table.md", out / "info.txt"
    if not table.is_file():
        print(f"no {table}: nothing written", file=sys.stderr)
        return
    command = " ".join(["python bench/peers.py", *(["--", *passthrough] if passthrough else [])])
    head = info.read_text().strip() if info.is_file() else ""
    summary = summarise(out / "results.jsonl")
    body = (f"`{command}`\n\n```\n{head}\n```\n\n{summary}{table.read_text().strip()}\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(f"# Side by side with the peers\n\n{body}")
    replace_section(SECTION, f"{SECTION}\n\n{INTRO}\n\n{body}")
    print(f"wrote {RESULTS.relative_to(ROOT)} and {DOCS.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
