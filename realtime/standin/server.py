"""The stand-in's TCP server, and :class:`StandIn`, which runs it on a thread of its own.

One asyncio loop serves every connection; commands on a connection run one after another, as drivers
expect. A malformed message closes only the connection that sent it; the server logs it and carries on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from realtime.standin import changestream, limits, wire
from realtime.standin.commands import TTL_MONITOR_INTERVAL, Engine, HangUp
from realtime.standin.oplog import Oplog
from realtime.standin.store import Store
from realtime.tasks import cancel_all

log = logging.getLogger("realtime.standin")
T = TypeVar("T")

DEFAULT_NOOP_INTERVAL = 10.0  # seconds; a replica set's periodicNoopIntervalSecs


class Server:
    """The asyncio side: a listening socket, the engine, and the background chores."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, oplog_max_entries: int = 1_000_000,
                 oplog_max_bytes: int = 1 << 30, noop_interval: float = DEFAULT_NOOP_INTERVAL) -> None:
        self.bind_host, self.bind_port = host, port
        self.oplog = Oplog(oplog_max_entries, oplog_max_bytes, encode=changestream.encode_plain)
        self.store = Store(self.oplog)
        self.engine: Engine | None = None
        self.noop_interval = noop_interval
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._request_ids = itertools.count(1)
        self.address = ""

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, self.bind_host, self.bind_port)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = f"{host}:{port}"
        self.engine = Engine(self.oplog, self.store, self.address)
        self.engine.hang_up_all = self.hang_up_all
        self._spawn(self._chores())
        return self.address

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _chores(self) -> None:
        """Write a no-op to the oplog when it has been quiet (so idle streams' tokens advance), abort
        transactions that outlived their limit, and delete documents their TTL index says have expired."""
        assert self.engine is not None
        last_ttl_pass = time.monotonic()
        while True:
            await asyncio.sleep(min(self.noop_interval, 1.0))
            if time.time() - self.oplog.latest_ts.time >= self.noop_interval:
                self.oplog.append_noop()
            self.engine.reap_transactions()
            if time.monotonic() - last_ttl_pass >= TTL_MONITOR_INTERVAL:
                last_ttl_pass = time.monotonic()
                try:
                    self.engine.expire_documents()
                except Exception:  # the next pass tries again; the other chores go on
                    log.exception("the TTL monitor's pass failed")

    def hang_up_all(self) -> None:
        """Close every client connection now (fault injection: a network failure)."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.hang_up_all()
        tasks = list(self._tasks)
        await cancel_all(tasks)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.engine is not None
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        app_name: str | None = None
        try:
            while True:
                try:
                    raw = await reader.readexactly(wire.HEADER.size)
                except asyncio.IncompleteReadError:
                    return
                header = wire.parse_header(raw)
                body = await reader.readexactly(header.length - wire.HEADER.size)
                request = wire.parse(header, body)
                app_name = _app_name(request.command, app_name)
                try:
                    if request.error is not None:
                        reply = self.engine.stamp(request.error.reply())
                    else:
                        reply = await self.engine.run(request.command, app_name)
                except HangUp:
                    writer.transport.abort()
                    return
                if request.more_to_come:
                    continue
                writer.write(self._encode(reply, request))
                await writer.drain()
        except wire.ProtocolError as exc:
            log.warning("closing connection from %s: malformed message: %s", peer, exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only stop() cancels a connection's handler. End it as a plain return: on Python 3.11 and early
            # 3.12, asyncio.streams calls task.exception() on a finished handler and logs a traceback for a
            # cancelled one (3.13 checks task.cancelled() first).
            return
        except Exception:
            log.exception("closing connection from %s after an unexpected error", peer)
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.transport.abort()


    def _encode(self, reply: dict[str, Any], request: wire.Request) -> bytes:
        """The reply as a message; one too big for a client to accept becomes ``BSONObjectTooLarge`` (batches are
        cut well below that, so this is a last line of defence, logged as the stand-in's own fault)."""
        assert self.engine is not None
        data = wire.encode(reply, request, next(self._request_ids) & 0x7FFFFFFF)
        if len(data) <= wire.MAX_MESSAGE_SIZE:
            return data
        log.error("a reply of %d bytes is over the %d-byte message limit; answering BSONObjectTooLarge",
                  len(data), wire.MAX_MESSAGE_SIZE)
        error = limits.too_large(limits.bson_size(reply), reply)
        return wire.encode(self.engine.stamp(error.reply()), request, next(self._request_ids) & 0x7FFFFFFF)


def _app_name(command: dict[str, Any], current: str | None) -> str | None:
    """The application name a handshake's client metadata gives (``client.application.name``), if any."""
    client = command.get("client")
    application = client.get("application") if isinstance(client, dict) else None
    name = application.get("name") if isinstance(application, dict) else None
    return name if isinstance(name, str) else current


class StandIn:
    """A stand-in running on its own thread and event loop; usable from sync and async code alike.

    >>> mongo = StandIn()
    >>> uri = mongo.start()        # mongodb://127.0.0.1:<port>/?replicaSet=rs0
    >>> mongo.truncate_oplog()     # fault injection, from any thread
    >>> mongo.stop()
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, oplog_max_entries: int = 1_000_000,
                 oplog_max_bytes: int = 1 << 30, noop_interval: float = DEFAULT_NOOP_INTERVAL) -> None:
        self._args = (host, port)
        self._kwargs: dict[str, Any] = {"oplog_max_entries": oplog_max_entries, "oplog_max_bytes": oplog_max_bytes,
                                        "noop_interval": noop_interval}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.server: Server | None = None
        self.address = ""

    @property
    def uri(self) -> str:
        return f"mongodb://{self.address}/?replicaSet=rs0"

    def start(self) -> str:
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self.server = Server(*self._args, **self._kwargs)
                ready.set_result(loop.run_until_complete(self.server.start()))
            except BaseException as exc:
                ready.set_exception(exc)
                return
            loop.run_forever()
            loop.run_until_complete(self.server.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="mongo-standin", daemon=True)
        self._thread.start()
        self.address = ready.result(timeout=10)
        return self.uri

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop = self._thread = None

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the stand-in's loop (where its state lives) and return its result."""
        assert self._loop is not None

        async def wrapper() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout=10)

    # -- fault injection ----------------------------------------------------------------------------
    def truncate_oplog(self, keep_last: int = 0) -> None:
        """The oplog rolls over: all but the newest ``keep_last`` entries are gone."""
        assert self.server is not None
        server = self.server
        self.call(lambda: server.oplog.truncate(keep_last))

    def expire_documents(self) -> int:
        """Run the TTL monitor's pass now (it runs every 60 s): delete what TTL indexes say has expired."""
        assert self.server is not None and self.server.engine is not None
        return self.call(self.server.engine.expire_documents)

    def hang_up(self) -> None:
        """Close every client connection, as a network failure would."""
        assert self.server is not None
        self.call(self.server.hang_up_all)

    def fail_command(self, commands: list[str], *, times: int | None = 1, error_code: int | None = None,
                     error_labels: list[str] | None = None, close_connection: bool = False,
                     block_ms: int = 0) -> None:
        """Configure the ``failCommand`` fail point, as ``configureFailPoint`` over the wire does."""
        assert self.server is not None and self.server.engine is not None
        data: dict[str, Any] = {"failCommands": commands, "closeConnection": close_connection}
        if error_code is not None:
            data["errorCode"] = error_code
        if error_labels is not None:
            data["errorLabels"] = error_labels
        if block_ms:
            data.update(blockConnection=True, blockTimeMS=block_ms)
        mode: Any = "alwaysOn" if times is None else {"times": times}
        engine = self.server.engine
        self.call(lambda: engine.failpoints.configure({"configureFailPoint": "failCommand", "mode": mode,
                                                       "data": data}))

    def pause(self, seconds: float) -> None:
        """Answer no command for ``seconds`` (a stall, not a failure)."""
        assert self.server is not None and self.server.engine is not None
        engine = self.server.engine

        def set_pause() -> None:
            engine.paused_until = time.monotonic() + seconds

        self.call(set_pause)

    @property
    def oplog(self) -> Oplog:
        assert self.server is not None
        return self.server.oplog
