"""Fixtures of the watcher's integration tests: a stand-in of the test's own, a client with the watched
collections made, the session's Redis emptied, and a watcher process (not started)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pymongo import MongoClient

from realtime.standin import StandIn
from tests.conftest import RedisServer
from tests.integration.watcherkit import WatcherProcess, setup_collections


@pytest.fixture
def standin() -> Iterator[StandIn]:
    mongo = StandIn(noop_interval=0.5)
    mongo.start()
    yield mongo
    mongo.stop()


@pytest.fixture
def mongo_client(standin: StandIn) -> Iterator[MongoClient[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(standin.uri)
    setup_collections(client, "app")
    yield client
    client.close()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def watcher(standin: StandIn, redis_server: RedisServer, tmp_path: Path) -> Iterator[WatcherProcess]:
    w = WatcherProcess(standin.uri, redis_server.url, tmp_path, "w")
    yield w
    w.stop()
