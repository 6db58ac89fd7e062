"""realtime.server.history against a real redis-server: what it reads about the rooms' coverage."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from realtime.resume import RoomHistory
from realtime.server.history import History
from tests.conftest import RedisServer

pytestmark = pytest.mark.integration


async def test_a_room_never_published_to_has_an_empty_history_and_an_error_is_not_one(
        redis_server: RedisServer) -> None:
    """Regression: any error reading a room's stream (not only "no such key") was taken for a room with no
    history, which a replay then reported as covered: a silent gap."""
    tag = "{" + uuid.uuid4().hex[:8] + "}"
    redis = Redis.from_url(redis_server.url)
    try:
        history = History(redis, f"{tag}:events", f"{tag}:resets", f"{tag}:room:")
        assert await history.room_info(["post:never"]) == {"post:never": RoomHistory()}
        await redis.set(f"{tag}:room:post:broken", "not a stream")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await history.room_info(["post:never", "post:broken"])
    finally:
        await redis.aclose()
