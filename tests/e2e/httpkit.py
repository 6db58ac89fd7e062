"""HTTP clients of ``realtime serve``'s long-polling (``GET /poll``) and Server-Sent Events (``GET /sse``), for the
end-to-end tests: a GET on a thread, the raw events of a poll answer, and an SSE stream read by hand."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
import orjson

from realtime.errors import ERROR_CODES
from tests.conftest import TIMEOUT
from tests.e2e.serverkit import SECRET, ServerProcess, token, until

# -- HTTP -------------------------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lowercase
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def _get(port: int, path: str, headers: dict[str, str], timeout: float) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        reply = conn.getresponse()
        got = {k.lower(): v for k, v in reply.getheaders()}
        if got.get("content-type", "").startswith("text/event-stream"):
            return Reply(reply.status, got, b"")  # a stream: its head is the answer
        return Reply(reply.status, got, reply.read())
    finally:
        conn.close()


async def get(server: ServerProcess, path: str, headers: dict[str, str] | None = None,
              within: float = TIMEOUT) -> Reply:
    """A GET on a thread; the whole answer (but for an event stream, only its head), within a time bound."""
    return await asyncio.to_thread(_get, server.port, path, headers or {}, within)


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def query(path: str, **params: str | float | None) -> str:
    return path + "?" + urlencode({k: str(v) for k, v in params.items() if v is not None}, safe=",:")


async def poll(server: ServerProcess, user: str, rooms: list[str], since: str | None = None, wait: float = 0,
               within: float = TIMEOUT, headers: dict[str, str] | None = None) -> Reply:
    """A poll that must succeed (200 and JSON)."""
    reply = await get(server, query("/poll", rooms=",".join(rooms), since=since, wait=wait),
                      {**bearer(user), **(headers or {})}, within=within)
    assert reply.status == 200, (reply.status, reply.body[:300])
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    return reply


def split_events(body: bytes) -> tuple[list[bytes], bytes]:
    """The raw bytes of each item of a poll body's ``events`` array, as they stand in the body, and the rest
    of the body after the array. A scanner of JSON strings and nesting, so that commas and brackets inside
    strings are not taken for separators."""
    head = b'{"events":['
    assert body.startswith(head), body[:80]
    items: list[bytes] = []
    i = start = len(head)
    if body[i:i + 1] == b"]":
        return items, body[i + 1:]
    depth, in_string, escaped = 0, False, False
    while i < len(body):
        c = body[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in b"{[":
            depth += 1
        elif c in b"}]":
            if depth == 0:  # the array's own closing bracket
                items.append(body[start:i])
                return items, body[i + 1:]
            depth -= 1
        elif c == 0x2C and depth == 0:
            items.append(body[start:i])
            start = i + 1
        i += 1
    raise AssertionError(f"unterminated events array: {body[-80:]!r}")


def poll_events(reply: Reply) -> tuple[list[bytes], dict[str, Any]]:
    """The raw events of a poll answer, checked against the parsed body; and the parsed body."""
    parsed = reply.json()
    assert set(parsed) == {"events", "resets", "next"}, parsed.keys()
    items, rest = split_events(reply.body)
    assert [orjson.loads(item) for item in items] == parsed["events"], "the scanner cut the array wrongly"
    assert reply.body == b'{"events":[' + b",".join(items) + b"]" + rest
    return items, parsed


# -- SSE --------------------------------------------------------------------------------------------------------

@dataclass
class Message:
    """One dispatched SSE event: its fields as sent (``data`` undecoded, a single line)."""

    data: bytes
    id: str | None = None
    event: str | None = None


@dataclass
class SSE:
    """An SSE response read by hand over a socket (chunked transfer coding undone), parsed as the HTML
    standard says: fields up to ``:``, one leading space dropped, a blank line dispatches."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    headers: dict[str, str]
    messages: list[Message] = field(default_factory=list)
    comments: list[bytes] = field(default_factory=list)
    retry: int | None = None
    retries: list[int] = field(default_factory=list)  # every retry field, in order
    ended: bool = False
    error: str | None = None
    task: asyncio.Task[None] | None = None
    terminated: bool = False  # the chunked body's last chunk came: the server ended the response
    status: int = 0
    body: bytes = b""  # the body of an answer that is not a stream
    last_event_id: str | None = None  # what EventSource would send as Last-Event-ID (an id field sets it)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _chunks(self) -> AsyncIterator[bytes]:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    self.terminated = True
                    return
                data = await self.reader.readexactly(size + 2)
                assert data.endswith(b"\r\n"), "bad chunk"
                yield data[:-2]
        else:
            while chunk := await self.reader.read(65536):
                yield chunk

    async def _read(self) -> None:
        buffer = b""
        try:
            async for chunk in self._chunks():
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self._block(block)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.error = repr(exc)
        except Exception as exc:  # a malformed stream: recorded, and the tests fail on it
            self.error = repr(exc)
        finally:
            self.ended = True

    def _block(self, block: bytes) -> None:
        if b"\r" in block:
            self.error = f"a carriage return in the stream: {block[:100]!r}"
        data: list[bytes] = []
        msg = Message(b"")
        for line in block.split(b"\n"):
            if line.startswith(b":"):
                self.comments.append(line)
                continue
            name, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if name == b"data":
                data.append(value)
            elif name == b"id":
                msg.id = self.last_event_id = value.decode()
            elif name == b"event":
                msg.event = value.decode()
            elif name == b"retry":
                self.retry = int(value)
                self.retries.append(self.retry)
            else:
                self.error = f"unknown field {line[:100]!r}"
        if data:
            msg.data = b"\n".join(data)
            self.messages.append(msg)

    def events(self) -> list[Message]:
        """The messages of the default type (events), in order."""
        return [m for m in self.messages if m.event is None]

    def of_type(self, event: str) -> list[Message]:
        return [m for m in self.messages if m.event == event]

    async def ended_by_server(self, what: str, within: float = TIMEOUT) -> None:
        await until(lambda: self.ended, what, within)

    def raw_events(self) -> list[bytes]:
        return [m.data for m in self.events()]

    async def got(self, n: int, what: str, within: float = TIMEOUT * 3) -> None:
        def enough() -> bool:
            assert self.error is None, self.error
            if self.ended and len(self.events()) < n:
                raise AssertionError(f"the stream ended while waiting for {what}")
            return len(self.events()) >= n
        await until(enough, what, within)

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


SSEOpener = Callable[..., Awaitable[SSE]]


async def open_sse(server: ServerProcess, user: str | None, rooms: list[str], *, since: str | None = None,
                   last_event_id: str | None = None, token_in_query: bool = False, bearer: str | None = None,
                   headers: dict[str, str] | None = None, status: int = 200) -> SSE:
    """``GET /sse`` over a socket of its own, read by a task from then on (the stream's ``retry`` field has come
    when this returns, so the server listens). ``bearer`` is the token (``user``'s for 10 minutes by
    default). With a ``status`` other than 200, the answer is read whole and the stream is not started."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), TIMEOUT)
    params: dict[str, str | float | None] = {"rooms": ",".join(rooms), "since": since}
    lines = [f"Host: 127.0.0.1:{server.port}", "Accept: text/event-stream"]
    jwt_text = bearer if bearer is not None else token(user) if user is not None else None
    if jwt_text is not None:
        if token_in_query:
            params["access_token"] = jwt_text
        else:
            lines.append(f"Authorization: Bearer {jwt_text}")
    if last_event_id is not None:
        lines.append(f"Last-Event-ID: {last_event_id}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write((f"GET {query('/sse', **params)} HTTP/1.1\r\n" + "".join(f"{x}\r\n" for x in lines)
                  + "\r\n").encode())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    except BaseException:
        writer.close()
        raise
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    got = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
    stream = SSE(reader, writer, got)
    stream.status = int(status_line.split()[1])
    if status != 200:
        assert stream.status == status, head
        length = int(got.get("content-length", "0"))
        stream.body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
        writer.close()
        return stream
    assert stream.status == 200, head
    assert got["content-type"].startswith("text/event-stream"), got
    stream.start()
    await until(lambda: stream.retry is not None or stream.ended, "the stream's retry field")  # listening
    return stream


def expired_token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")


def check_error(reply: Reply, code: str, what: str) -> None:
    assert reply.status == ERROR_CODES[code].http, (what, reply.status, reply.body)
    assert reply.headers.get("content-type", "").startswith("application/json"), (what, reply.headers)
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, (what, body)
    assert body["error"]["code"] == code, (what, body)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], (what, body)
    assert "Traceback" not in body["error"]["message"]
