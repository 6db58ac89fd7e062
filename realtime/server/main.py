"""``realtime serve``: configuration, then Sanic with one or more worker processes."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from sanic import Sanic
from sanic.worker.loader import AppLoader

from realtime.config import ConfigError
from realtime.server import config as config_module
from realtime.server import lean
from realtime.server.app import create_app
from realtime.server.door import GuardedProtocol
from realtime.server.lean import FastProtocol

log = logging.getLogger("realtime.server")


def factory() -> Sanic[Any, Any]:
    """Builds the app in each worker process, from the same environment."""
    return create_app(config_module.load())


def serve(host: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    if host is not None or port is not None:
        current = os.environ.get("REALTIME_LISTEN", "127.0.0.1:8000")
        old_host, _, old_port = current.rpartition(":")
        os.environ["REALTIME_LISTEN"] = f"{host or old_host}:{port if port is not None else old_port}"
    if workers is not None:
        os.environ["REALTIME_WORKERS"] = str(workers)
    try:
        cfg = config_module.load()
    except ConfigError as exc:
        print(f"realtime serve: configuration error: {exc}", file=sys.stderr)
        return 2
    loader = AppLoader(factory=factory)
    app = loader.load()
    try:
        protocol = FastProtocol if cfg.fast_path and lean.supported() else GuardedProtocol
        if cfg.fast_path and not lean.supported():
            log.warning("WebSocket fast path off: it was written for %s", lean.WRITTEN_FOR)
        app.prepare(host=cfg.host, port=cfg.port, workers=cfg.workers, access_log=False, motd=False,
                    single_process=cfg.workers == 1, protocol=protocol)
    except OSError as exc:
        print(f"realtime serve: cannot listen on {cfg.host}:{cfg.port}: {exc}", file=sys.stderr)
        return 1
    if cfg.workers == 1:
        Sanic.serve_single(primary=app)
    else:
        Sanic.serve(primary=app, app_loader=loader)
    return 0
