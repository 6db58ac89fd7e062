"""Read a failed run's records: ``python -m tests.chaos.postmortem DIR [SESSION#CONNECTION ...]``.

Without connections, lists every connection of the run (``records.jsonl``); with some, prints what each sent and
received, in order, each event with the rooms the model gives it (``model.jsonl``). Times are seconds from the
start of the faults, as in the run's report.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson


def load(run: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    for line in (run / "records.jsonl").read_bytes().splitlines():
        item = orjson.loads(line)
        if "session" in item:
            item["log"] = []
            records.append(item)
        else:
            records[-1]["log"].append(item)
    model = {}
    for line in (run / "model.jsonl").read_bytes().splitlines():
        event = orjson.loads(line)
        model[event["id"]] = event
    return records, model


def show(record: dict[str, Any], model: dict[str, dict[str, Any]]) -> list[str]:
    head = {k: v for k, v in record.items() if k != "log"}
    lines = [str(head)]
    for item in record["log"]:
        f = item["f"]
        if f.get("op") == "event":
            rooms = model.get(f["id"], {}).get("rooms", "not in the model")
            lines.append(f"{item['t']:8.3f} {item['d']:<3} event {f['id']} {f['type']} in {f['room']} (model: {rooms})")
        else:
            lines.append(f"{item['t']:8.3f} {item['d']:<3} {orjson.dumps(f).decode()}")
    return lines


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    records, model = load(Path(argv[0]))
    if len(argv) == 1:
        for r in records:
            print(f"{r['session']}#{r['connection']}  {r['transport']} {r['server']}  opened {r['opened']}s  "
                  f"closed {r['closed']}  {r['why']}{'  (open at the end)' if r['final'] else ''}")
        return 0
    for name in argv[1:]:
        session, _, index = name.partition("#")
        found = [r for r in records if r["session"] == session and r["connection"] == int(index or 0)]
        for r in found:
            print("\n".join(show(r, model)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
