"""The product's own processes, run by tests: started with a test's environment, logged to a file, stopped
for sure, and asked over their HTTP endpoints (health, readiness, metrics)."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import TIMEOUT, free_port

ROOT = Path(__file__).resolve().parents[1]


class Service:
    """One process (``python -m <module> <args>``) with an HTTP port of its own."""

    argv: tuple[str, ...] = ()

    def __init__(self, log_dir: Path, name: str, env: dict[str, str], port: int | None = None) -> None:
        self.name = name
        self.port = port if port is not None else free_port()
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", *self.argv], env=self.env, cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT)
        return self

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited in time; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def get(self, path: str) -> tuple[int, bytes]:
        """An HTTP GET on the process's port: (status, body), or (0, b"") when nothing listens."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=TIMEOUT) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def metric(self, name: str, **labels: str) -> float:
        _, body = self.get("/metrics")
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in body.decode().splitlines():
            if line.startswith(want + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
