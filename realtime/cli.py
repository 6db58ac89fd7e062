"""The ``realtime`` command: one entry point, one subcommand per process the product runs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realtime", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mongo = sub.add_parser(
        "mongo",
        help="run the MongoDB stand-in (an in-memory replica-set primary for development and tests)",
        description="Run the MongoDB stand-in: an in-memory replica-set primary with change streams that "
        "PyMongo, the Node.js driver and mongosh talk to. Prints its URI, then serves until "
        "interrupted. Data lives in memory only.",
    )
    mongo.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    mongo.add_argument("--port", type=int, default=27017, help="port to listen on, 0 for any free one "
                       "(default: 27017)")
    mongo.add_argument("--oplog-max-entries", type=_positive_int, default=1_000_000,
                       help="oldest oplog entries are dropped past this many (default: 1000000)")
    mongo.add_argument("--oplog-max-bytes", type=_positive_int, default=1 << 30,
                       help="oldest oplog entries are dropped past this many bytes (default: 1 GiB)")
    mongo.add_argument("--noop-interval", type=_positive_float, default=10.0,
                       help="seconds of quiet after which a no-op is written to the oplog, so idle change "
                       "streams' resume tokens advance (default: 10, as a replica set)")
    sub.add_parser(
        "watch",
        help="run a watcher: MongoDB change stream to typed events in Redis Streams",
        description="Run a watcher. Configured from the environment (MONGODB_URI, REDIS_URL, MONGODB_DB, "
        "REALTIME_*; see docs/configuration.md). Any number may run: one leads, the others stand by.",
    )
    serve = sub.add_parser(
        "serve",
        help="run the push server (WebSocket, long-polling, SSE)",
        description="Run the push server. Configured from the environment (REDIS_URL, REALTIME_JWT_SECRET or "
        "REALTIME_JWKS_FILE/URL, REALTIME_*; see docs/configuration.md); the options override it.",
    )
    serve.add_argument("--host", help="address to listen on (REALTIME_LISTEN's host; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (REALTIME_LISTEN's port; default 8000)")
    serve.add_argument("--workers", type=_positive_int, help="worker processes (REALTIME_WORKERS; default 1)")
    dev = sub.add_parser(
        "dev",
        help="run everything on this machine with a simulated app: stand-in, Redis, watcher, server, producer",
        description="Start the MongoDB stand-in, a private redis-server (or use REDIS_URL), a watcher, a server and "
        "a demo producer that simulates users posting, liking and commenting. Ctrl-C stops everything.",
    )
    dev.add_argument("--port", type=int, default=8000, help="the server's port (default 8000, or a free one)")
    dev.add_argument("--mongo-port", type=int, default=27017,
                     help="the stand-in's port (default 27017, or a free one)")
    dev.add_argument("--rate", type=float, default=2.0,
                     help="changes per second written by the demo producer; 0 for none (default 2)")
    sub.add_parser(
        "mongo-setup",
        help="enable change-stream pre- and post-images on the watched collections",
        description="Enable changeStreamPreAndPostImages on the posts, likes and comments collections "
        "(creating them if needed), so deletes of likes and comments reach their post's room, and index "
        "the post id of likes and comments. "
        "Configured from the same environment as 'realtime watch'.",
    )
    tail = sub.add_parser(
        "tail",
        help="print the events of rooms as JSON lines (a client of 'realtime serve')",
        description="Connect to a server, subscribe to rooms and print each event frame (and resets and presence) "
        "as one JSON object per line; reconnects and resumes by itself. Ctrl-C stops it.",
    )
    tail.add_argument("--url", required=True, help="the server's WebSocket URL, e.g. ws://127.0.0.1:8000/ws")
    tail.add_argument("--room", action="append", required=True, help="a room to follow (repeatable)")
    token = tail.add_mutually_exclusive_group()
    token.add_argument("--token", help="the JWT to connect with")
    token.add_argument("--token-env", metavar="VAR", help="the environment variable holding the JWT")
    tail.add_argument("--since", metavar="ID", help="start after this event id (default: from now)")
    mint = sub.add_parser(
        "token",
        help="print a token for a user, signed with REALTIME_JWT_SECRET (for trying the server out)",
        description="Print an HS256 JWT whose sub is the user, signed with REALTIME_JWT_SECRET (at least 32 "
        "characters, as the server requires), with REALTIME_JWT_AUDIENCE and REALTIME_JWT_ISSUER as aud and "
        "iss when they are set, valid for --ttl "
        "seconds. For development and tests: in production your application issues the tokens.",
    )
    mint.add_argument("--user", required=True,
                      help="the text of the user's id, as events write it (the token's sub; docs/events.md#ids)")
    mint.add_argument("--ttl", type=_positive_float, default=3600.0,
                      help="seconds until the token expires (default: 3600)")
    return parser


def _token(args: argparse.Namespace) -> int:
    import os
    import time

    import jwt

    from realtime.auth import MIN_SECRET_LENGTH

    secret = os.environ.get("REALTIME_JWT_SECRET")
    if not secret:
        print("realtime token: REALTIME_JWT_SECRET is not set: set it to the server's secret", file=sys.stderr)
        return 2
    if len(secret) < MIN_SECRET_LENGTH:  # as the server, which refuses to start with it
        print(f"realtime token: REALTIME_JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters (HS256 with a "
              "short secret can be guessed offline from a single token)", file=sys.stderr)
        return 2
    if not args.user.strip():
        print("realtime token: --user must not be empty", file=sys.stderr)
        return 2
    claims: dict[str, object] = {"sub": args.user, "exp": int(time.time() + args.ttl), "iat": int(time.time())}
    for claim, variable in (("aud", "REALTIME_JWT_AUDIENCE"), ("iss", "REALTIME_JWT_ISSUER")):
        if os.environ.get(variable):
            claims[claim] = os.environ[variable]
    print(jwt.encode(claims, secret, algorithm="HS256"))
    return 0


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    """uvloop's runner where uvloop is installed (it is, with Sanic, except on Windows): the stand-in spends a
    third less on each command's socket reads and writes; asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    run: Callable[[Coroutine[Any, Any, int]], int] = uvloop.run
    return run


async def _run_mongo(args: argparse.Namespace) -> int:
    from realtime.collector import freeze_survivors
    from realtime.standin.server import Server

    freeze_survivors()
    server = Server(args.host, args.port, oplog_max_entries=args.oplog_max_entries,
                    oplog_max_bytes=args.oplog_max_bytes, noop_interval=args.noop_interval)
    try:
        address = await server.start()
    except OSError as exc:
        print(f"realtime mongo: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    # Handlers first, then the ready line: a supervisor may signal as soon as it has read that line.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"MongoDB stand-in listening: mongodb://{address}/?replicaSet=rs0", flush=True)
    await stop.wait()
    await server.stop()
    return 0


def _mongo_setup() -> int:
    from pymongo.errors import PyMongoError

    from realtime.config import ConfigError
    from watchers import config
    from watchers.main import setup_collections

    try:
        cfg = config.load()
    except ConfigError as exc:
        print(f"realtime mongo-setup: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        done = asyncio.run(setup_collections(cfg))
    except PyMongoError as exc:
        print(f"realtime mongo-setup: {exc}", file=sys.stderr)
        return 1
    for line in done:
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "mongo":
        return _event_loop_runner()(_run_mongo(args))
    if args.command == "watch":
        from watchers.main import main as watch_main

        return watch_main()
    if args.command == "dev":
        from realtime.dev import main as dev_main

        return dev_main(args.port, args.mongo_port, args.rate)
    if args.command == "serve":
        from realtime.server.main import serve as serve_main

        return serve_main(args.host, args.port, args.workers)
    if args.command == "mongo-setup":
        return _mongo_setup()
    if args.command == "token":
        return _token(args)
    if args.command == "tail":
        from realtime.client import tail_command

        return tail_command(args)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
