"""Fixtures of the end-to-end tests of ``realtime serve``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.conftest import TIMEOUT
from tests.e2e.httpkit import SSE, SSEOpener, open_sse
from tests.e2e.serverkit import Client, Opener, ServerProcess, token


@pytest.fixture
async def clients() -> AsyncIterator[Opener]:
    """Open clients (closed at the end of the test): ``await open(server, user, rooms=[...])``."""
    opened: list[Client] = []

    async def open_(server: ServerProcess, user: str | None = None, *, rooms: list[str] | None = None,
                    bearer: str | None = None, headers: dict[str, str] | None = None, **kwargs: Any) -> Client:
        if bearer is None and user is not None:
            bearer = token(user)
        headers = dict(headers or {})
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        ws = await connect(server.url, additional_headers=headers, open_timeout=TIMEOUT, **kwargs)
        client = Client(ws, user)
        opened.append(client)
        if rooms:
            await client.subscribe(rooms)
        return client

    yield open_
    await asyncio.gather(*(c.aclose() for c in opened))



@pytest.fixture
async def streams() -> AsyncIterator[SSEOpener]:
    """Open SSE streams (closed at the end of the test): ``await open(server, user, rooms, since=...)``; the
    arguments of :func:`tests.e2e.httpkit.open_sse`."""
    opened: list[SSE] = []

    async def open_(*args: Any, **kwargs: Any) -> SSE:
        stream = await open_sse(*args, **kwargs)
        opened.append(stream)
        return stream

    yield open_
    await asyncio.gather(*(s.aclose() for s in opened))
