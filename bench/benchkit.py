"""What the benchmark scripts share: logging, ports, the machine and code measured, and docs/benchmarks.md.

Each script in ``bench/`` owns one ``## <Name>`` section of ``docs/benchmarks.md`` and rewrites only that one.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
DOCS_INTRO = ("# Benchmarks\n\nNumbers measured on a development machine by the scripts in `bench/`. They are for\n"
              "comparing changes to the code on the same machine, not a capacity plan: everything (the MongoDB\n"
              "stand-in, Redis, the processes measured and the load generator) shares the machine's CPUs.\n")


def log(msg: str, *, stderr: bool = False) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr if stderr else sys.stdout, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tail(path: Path, lines: int) -> str:
    """The last lines of a process's log ("" when there is none yet)."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def git(*argv: str) -> str:
    """A git command's output in this repository ("" when git is missing or fails)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    return ""


def machine() -> dict[str, Any]:
    """CPUs, CPU model, Python and redis-server versions: what the numbers were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    redis_version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=5).stdout
        found = re.search(r"v=(\S+)", out)
        redis_version = found.group(1) if found else out.strip()
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "redis_server": redis_version}


def replace_section(heading: str, section: str) -> None:
    """Put ``section`` (which starts with ``heading``, a ``## `` line) in docs/benchmarks.md in place of the
    section of that heading, or at the end; the other sections are kept."""
    text = DOCS.read_text() if DOCS.exists() else DOCS_INTRO
    pattern = re.compile(r"^" + re.escape(heading) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text.rstrip("\n") + "\n")
