"""Static files of ``realtime/web``: the browser client at ``GET /client/realtime.js`` (always served) and the
helpers the demo page (:mod:`realtime.server.demo`) uses to serve its own files."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, raw

WEB = Path(__file__).resolve().parent.parent / "web"

TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


@dataclass
class Asset:
    """A file of realtime/web, read at start and again when it changes on disk (an edit shows on reload)."""

    path: Path
    body: bytes = b""
    etag: str = ""
    mtime: int = -1

    @classmethod
    def load(cls, name: str) -> Asset:
        asset = cls(WEB / name)
        asset.refresh()
        return asset

    @property
    def content_type(self) -> str:
        return TYPES[self.path.suffix]

    def refresh(self) -> None:
        mtime = self.path.stat().st_mtime_ns
        if mtime != self.mtime:
            self.body = self.path.read_bytes()
            self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'
            self.mtime = mtime

    def response(self, request: Request, headers: dict[str, str] | None = None) -> HTTPResponse:
        with contextlib.suppress(OSError):  # gone meanwhile: keep serving what was read
            self.refresh()
        # no-cache: browsers revalidate (a 304 when unchanged), so a new version is picked up at once
        common = {"Cache-Control": "no-cache", "ETag": self.etag, "X-Content-Type-Options": "nosniff",
                  **(headers or {})}
        if self.etag in request.headers.get("if-none-match", ""):
            return raw(b"", status=304, headers=common)
        return raw(self.body, content_type=self.content_type, headers=common)


def register(app: Sanic[Any, Any]) -> None:
    """``GET /client/realtime.js``: the browser client, importable from any origin (module scripts are fetched
    with CORS; the file is public)."""
    client = Asset.load("realtime.js")

    async def realtime_js(request: Request) -> HTTPResponse:
        return client.response(request, {"Access-Control-Allow-Origin": "*"})

    app.add_route(realtime_js, "/client/realtime.js", methods=["GET", "HEAD"], name="client_js")
