"""Running a watcher process: configuration, connections, the health endpoint, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping
from typing import Any

import orjson
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from realtime import httpd
from realtime.config import ConfigError
from watchers import config as config_module
from watchers.config import WatcherConfig
from watchers.watcher import Watcher

log = logging.getLogger("realtime.watcher")


async def run(cfg: WatcherConfig, stop: asyncio.Event) -> int:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(cfg.mongodb_uri, serverSelectionTimeoutMS=10_000,
                                                               appname=f"realtime-watcher {cfg.name}")
    redis = Redis.from_url(cfg.redis_url)
    watcher = Watcher(cfg, mongo, redis)
    server = None
    try:
        if cfg.http is not None:
            server = await httpd.serve(cfg.http[0], cfg.http[1], _routes(watcher))
            log.info("health and metrics on http://%s:%d/ (healthz, readyz, metrics)", *cfg.http)
        trimmer = asyncio.create_task(_trim_forever(watcher))
        try:
            await watcher.run(stop)
        finally:
            trimmer.cancel()
            await asyncio.gather(trimmer, return_exceptions=True)
    finally:
        if server is not None:
            server.close()
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
            log.warning("trimming history by age failed: %s", exc)


def _routes(watcher: Watcher) -> dict[str, httpd.Route]:
    async def healthz() -> tuple[int, str, bytes]:
        ok, why = watcher.health()
        return (200 if ok else 503), "application/json", orjson.dumps({"ok": ok, "state": why})

    async def readyz() -> tuple[int, str, bytes]:
        problems = []
        try:
            await watcher.redis.ping()
        except RedisError as exc:
            problems.append(f"redis: {exc}")
        try:
            await watcher.mongo.admin.command("ping")
        except PyMongoError as exc:
            problems.append(f"mongodb: {exc}")
        ok, why = watcher.health()
        if not ok:
            problems.append(why)
        if watcher.lease_value is not None and not watcher.streaming:
            problems.append("the change stream is not open yet")
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
