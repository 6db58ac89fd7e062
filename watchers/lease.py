"""The leader lease: one watcher publishes, the others wait and take over when it stops renewing.

The lease is a Redis key holding ``<name>:<fence>``, set with ``NX`` and a time to live; ``fence`` comes
from a counter, so every holder's value is unique. The publish script checks that value (fencing): a
deposed leader that wakes up late cannot publish.
"""

from __future__ import annotations

from typing import Protocol

from redis.asyncio import Redis

from watchers.keys import Keys

RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease(Protocol):
    async def acquire(self) -> str | None:
        """Try to become leader; the lease value on success."""

    async def renew(self, value: str) -> bool:
        """Extend the lease; False when it is no longer ours."""

    async def release(self, value: str) -> None: ...

    async def holder(self) -> str | None: ...


class RedisLease:
    def __init__(self, redis: Redis, keys: Keys, name: str, seconds: float) -> None:
        self.redis = redis
        self.keys = keys
        self.name = name
        self.ms = max(int(seconds * 1000), 100)
        self._renew = redis.register_script(RENEW_LUA)
        self._release = redis.register_script(RELEASE_LUA)

    async def acquire(self) -> str | None:
        if await self.redis.exists(self.keys.leader):
            return None
        fence = await self.redis.incr(self.keys.fence)
        value = f"{self.name}:{fence}"
        if await self.redis.set(self.keys.leader, value, nx=True, px=self.ms):
            return value
        return None

    async def renew(self, value: str) -> bool:
        return bool(await self._renew(keys=[self.keys.leader], args=[value, self.ms]))

    async def release(self, value: str) -> None:
        await self._release(keys=[self.keys.leader], args=[value])

    async def holder(self) -> str | None:
        raw = await self.redis.get(self.keys.leader)
        return raw.decode() if isinstance(raw, bytes) else raw
