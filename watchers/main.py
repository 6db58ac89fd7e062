"""Running a watcher process: configuration, connections, the health endpoint, signals."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Mapping
from typing import Any

import orjson
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from redis.exceptions import RedisError

from realtime import httpd
from realtime.collector import freeze_start_up
from realtime.config import ConfigError
from watchers import config as config_module
from watchers.config import WatcherConfig
from watchers.outage import REDIS
from watchers.watcher import Watcher, redis_timeout

log = logging.getLogger("realtime.watcher")
SHUTDOWN_TIMEOUT = 2.0  # seconds the MongoDB client may take to close (it ends its sessions on the server)
# A batch of changes allocates many small objects, few of them in cycles: collect the youngest generation
# every 20,000 allocations rather than 700, and leave what start-up made (modules, configuration) out of every
# collection (gc.freeze).
GC_THRESHOLDS = (20_000, 20, 20)


async def run(cfg: WatcherConfig, stop: asyncio.Event) -> int:
    # Every call is bounded, so that a hung server (a frozen process, a partition) is an outage the watcher
    # retries, never a wait without end: MongoDB's reads may take the stream's await time and then some.
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        cfg.mongodb_uri, serverSelectionTimeoutMS=10_000, connectTimeoutMS=10_000,
        socketTimeoutMS=cfg.max_await_ms + 10_000, appname=f"realtime-watcher {cfg.name}")
    timeout = redis_timeout(cfg.lease_seconds)
    redis = Redis.from_url(cfg.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    watcher = Watcher(cfg, mongo, redis)
    server = None
    try:
        if cfg.http is not None:
            server = await httpd.serve(cfg.http[0], cfg.http[1], _routes(watcher))
            log.info("health and metrics on http://%s:%d/ (healthz, readyz, metrics)", *cfg.http)
        trimmer = asyncio.create_task(_trim_forever(watcher))
        trimmer.add_done_callback(_report)
        try:
            await watcher.run(stop)
        finally:
            trimmer.cancel()
            await asyncio.gather(trimmer, return_exceptions=True)
    finally:
        if server is not None:
            server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_TIMEOUT):  # a hung MongoDB must not hold the exit
                await mongo.close()
        await redis.aclose()
    return 0


async def _trim_forever(watcher: Watcher) -> None:
    while True:
        await asyncio.sleep(60)
        if watcher.lease_value is None:
            continue
        try:
            await watcher.trim_by_age()
        except RedisError as exc:
            watcher.failed(exc, "trimming history by age")  # tried again in a minute
        else:
            watcher.reachable(REDIS)


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("trimming history by age stopped", exc_info=task.exception())


def _routes(watcher: Watcher) -> dict[str, httpd.Route]:
    async def healthz() -> tuple[int, str, bytes]:
        ok, why = watcher.health()
        return (200 if ok else 503), "application/json", orjson.dumps({"ok": ok, "state": why})

    async def readyz() -> tuple[int, str, bytes]:
        # Redis is in use all the time (the lease is renewed or sought every few seconds), and so is MongoDB
        # while the stream answers: their outages are known. Otherwise MongoDB is asked now.
        await watcher.check_mongodb()
        problems = watcher.problems()
        body = {"ready": not problems, "leader": watcher.lease_value is not None, "streaming": watcher.streaming,
                "problems": problems}
        return (200 if not problems else 503), "application/json", orjson.dumps(body)

    async def metrics() -> tuple[int, str, bytes]:
        watcher.health()
        with contextlib.suppress(RedisError):
            watcher.metrics.stream_length.set(await watcher.redis.xlen(watcher.keys.events))
        return 200, "text/plain; version=0.0.4", watcher.metrics.registry.render().encode()

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}


def main(environ: Mapping[str, str] | None = None) -> int:
    try:
        cfg = config_module.load(environ)
    except ConfigError as exc:
        print(f"realtime watch: configuration error: {exc}", file=sys.stderr)
        return 2

    freeze_start_up()
    gc.set_threshold(*GC_THRESHOLDS)

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await run(cfg, stop)
        except OSError as exc:
            print(f"realtime watch: {exc}", file=sys.stderr)
            return 1

    return asyncio.run(go())


async def setup_collections(cfg: WatcherConfig) -> list[str]:
    """Enable pre- and post-images on the watched collections (creating them if needed), and index the
    post id of likes and comments (the watcher counts a post's likes by it once per post)."""
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(cfg.mongodb_uri, serverSelectionTimeoutMS=10_000)
    done = []
    try:
        db = mongo[cfg.database]
        existing = set(await db.list_collection_names())
        for name in cfg.collections:
            if name in existing:
                await db.command("collMod", name, changeStreamPreAndPostImages={"enabled": True})
            else:
                await db.create_collection(name, changeStreamPreAndPostImages={"enabled": True})
            done.append(f"pre- and post-images enabled on {cfg.database}.{name}")
        field = cfg.mapping.fields.post_id
        for name in (cfg.mapping.likes, cfg.mapping.comments):
            index = await db[name].create_index(field)
            done.append(f"index {index} on {cfg.database}.{name}")
    finally:
        await mongo.close()
    return done
