"""Fixtures of the watcher's integration tests: a stand-in of the test's own, and a client with the watched
collections made."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient

from realtime.standin import StandIn
from tests.integration.watcherkit import setup_collections


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
