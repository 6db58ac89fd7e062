"""The image's HEALTHCHECK: GET /healthz of the realtime process running in this container.

``realtime serve`` answers on ``REALTIME_LISTEN`` and ``realtime watch`` on ``REALTIME_WATCHER_HTTP``; the
image runs one of them, so the first of the two that answers 200 makes the container healthy. A URL given
as an argument is checked instead. Exit 0 when healthy, 1 otherwise. Standard library only.
"""

from __future__ import annotations

import os
import sys
import urllib.request

WILDCARDS = {"", "0.0.0.0", "::", "[::]", "*"}


def url_of(listen: str) -> str | None:
    """``http://host:port/healthz`` for a ``host:port`` listen address; None when it is off or malformed."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit():
        return None
    if host in WILDCARDS:
        host = "127.0.0.1"
    return f"http://{host}:{port}/healthz"


def candidates(environ: dict[str, str]) -> list[str]:
    urls = [url_of(environ.get("REALTIME_LISTEN", "127.0.0.1:8000")),
            url_of(environ.get("REALTIME_WATCHER_HTTP", "127.0.0.1:9100"))]
    return [url for url in urls if url is not None]


def healthy(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):  # refused, timed out, HTTP 503 (HTTPError), a malformed URL
        return False


def main(argv: list[str]) -> int:
    urls = argv[1:] or candidates(dict(os.environ))
    return 0 if any(healthy(url) for url in urls) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
