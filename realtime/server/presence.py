"""Presence and typing: ephemeral, per room, across every server instance, through Redis pub/sub.

Neither is stored in the event streams nor replayed.

* **Presence.** Each instance keeps, per room, a sorted set ``{rt}:presence:<room>`` of
  ``<user>|<instance>`` members scored by an expiry time, refreshed every ``ttl / 3`` seconds while the
  user has a connection in the room on that instance. ``presence`` answers with the users whose entry has
  not expired. The first connection of a user in a room (on any instance) announces ``user:online``; the
  last one to leave announces ``user:offline``. When an instance dies its entries stop being refreshed;
  any instance's sweep removes them after ``ttl`` and announces ``user:offline``: everyone sees the users
  of a dead instance leave within ``ttl + sweep`` seconds.
* **Typing.** ``typing`` from a client (at most one per ``typing_interval`` per connection) announces
  ``user:typing`` to the room on every instance; each instance shows ``user:stopped_typing`` on its own when
  no new ``typing`` came for ``typing_ttl`` seconds: it expires even when the typist's instance dies.

Both are best effort, and never hold up a client's request: joins and leaves change this instance's counts at
once, and a task of their own writes them to Redis (a subscription does not wait for Redis, even a Redis that
hangs). When Redis fails, the write is counted (``realtime_presence_errors_total``), logged, and tried again
by the next refresh; an entry that could not be removed expires after ``ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from realtime import events as ev
from realtime.tasks import cancel_all

log = logging.getLogger("realtime.server")

# (room, frame payload, a user whose connections do not get it) to the local members of a room
Deliver = Callable[[str, bytes, str | None], None]

STOP_BUDGET = 1.0  # seconds a stopping server spends taking its entries out of Redis

SWEEP_LUA = """
local gone = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
end
for _, member in ipairs(expired) do
  local user = string.match(member, '^(.*)|[^|]*$')
  local still = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
  local present = false
  for _, m in ipairs(still) do
    if string.match(m, '^(.*)|[^|]*$') == user then present = true break end
  end
  if not present then table.insert(gone, user) end
end
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return gone
"""


def ephemeral(kind: str, room: str, user: str) -> bytes:
    """An ephemeral event as clients get it: a ``presence`` frame with a type, and no id (never replayed)."""
    return orjson.dumps({"op": "presence", "type": kind, "room": room, "data": {"userId": user},
                         "ts": int(time.time() * 1000)})


class Presence:
    def __init__(self, redis: Redis, prefix: str, deliver: Deliver, *, ttl: float = 30.0,
                 typing_ttl: float = 5.0, typing_interval: float = 1.0, instance: str | None = None,
                 listener: Redis | None = None, on_error: Callable[[str], None] | None = None) -> None:
        self.redis = redis
        # The pub/sub connection waits for messages without a deadline: a client of its own, without the
        # commands' socket timeout (which would end every quiet wait).
        self.listener = listener or redis
        self.on_error = on_error or (lambda what: None)
        self.tag = "{" + prefix + "}"
        self.channel = f"{self.tag}:ephemeral"
        self.rooms_key = f"{self.tag}:presence:rooms"
        self.deliver = deliver
        self.ttl = ttl
        self.typing_ttl = typing_ttl
        self.typing_interval = typing_interval
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.local: dict[tuple[str, str], int] = {}  # (room, user) -> local connections
        self.announced: set[tuple[str, str]] = set()  # written to Redis (the entry, and user:online if first)
        self.dirty: set[tuple[str, str]] = set()  # whose local count and Redis differ: for the writer
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self.typing: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._sweep = redis.register_script(SWEEP_LUA)
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = False

    def key(self, room: str) -> str:
        return f"{self.tag}:presence:{room}"

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._refresh()),
                       loop.create_task(self._write())]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        for handle in self.typing.values():
            handle.cancel()
        # Leave at once rather than after the ttl, but not at any cost: with Redis hung, the entries expire.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(STOP_BUDGET):
                for room, user in list(self.announced):
                    await self._remove(room, user)

    # -- presence ----------------------------------------------------------------------------------------
    def joined(self, user: str, rooms: tuple[str, ...] | list[str]) -> None:
        """A connection of ``user`` joined ``rooms`` here (written to Redis in the background)."""
        for room in rooms:
            n = self.local.get((room, user), 0)
            self.local[(room, user)] = n + 1
            if n == 0:
                self._changed(room, user)

    def left(self, user: str, rooms: tuple[str, ...] | list[str] | set[str]) -> None:
        """A connection of ``user`` left ``rooms`` here (written to Redis in the background)."""
        for room in list(rooms):
            n = self.local.get((room, user), 0) - 1
            if n > 0:
                self.local[(room, user)] = n
                continue
            self.local.pop((room, user), None)
            self._changed(room, user)

    def _changed(self, room: str, user: str) -> None:
        self.dirty.add((room, user))
        self._wake.set()

    async def _write(self) -> None:
        """Bring Redis to this instance's counts: an entry (and ``user:online``) for each (room, user) present
        here, none for one that left. What fails stays to do: the next change or refresh tries it again."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._reconcile()

    def writing_idle(self) -> bool:
        """Nothing is on its way to Redis now."""
        return not self._writing.locked()

    async def _reconcile(self) -> None:
        # One writer at a time (the writer task and the refresh both call this), and a pair is taken off
        # ``dirty`` before its write: a join or leave that comes while the write awaits Redis marks it again.
        async with self._writing:
            while self.dirty:
                pair = self.dirty.pop()
                room, user = pair
                present = pair in self.local
                try:
                    if present and pair not in self.announced:
                        await self._add(room, user)
                        self.announced.add(pair)
                    elif not present and pair in self.announced:
                        await self._remove(room, user)
                        self.announced.discard(pair)
                except (RedisError, OSError) as exc:
                    self.dirty.add(pair)
                    self._failed("join" if present else "leave", exc)
                    return  # Redis is failing: the refresh tries again

    def _failed(self, what: str, exc: BaseException) -> None:
        self.on_error(what)
        log.warning("presence %s not written to Redis (%s: %s); it is retried by the refresh", what,
                    type(exc).__name__, exc)

    async def _add(self, room: str, user: str) -> None:
        key = self.key(room)
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrangebyscore(key, now, "+inf")
            pipe.zadd(key, {f"{user}|{self.instance}": now + self.ttl})
            pipe.sadd(self.rooms_key, room)
            before, _, _ = await pipe.execute()
        # This instance's own entry does not make the user present already: it may be there from an earlier
        # try whose answer was lost (Redis ran it, the timeout came first), and that try announced nothing.
        mine = f"{user}|{self.instance}"
        if not any(_user(m) == user and _text(m) != mine for m in before):
            await self._publish(ev.USER_ONLINE, room, user)

    async def _remove(self, room: str, user: str) -> None:
        key = self.key(room)
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(key, f"{user}|{self.instance}")
            pipe.zrangebyscore(key, now, "+inf")
            _, after = await pipe.execute()
        if not any(_user(m) == user for m in after):
            await self._publish(ev.USER_OFFLINE, room, user)

    async def query(self, room: str) -> list[str]:
        members = await self.redis.zrangebyscore(self.key(room), time.time(), "+inf")
        return sorted({_user(m) for m in members})

    async def _refresh(self) -> None:
        """Keep this instance's entries alive, and sweep the rooms' expired ones (from dead instances)."""
        while True:
            try:
                await self._reconcile()
                expires = time.time() + self.ttl
                written = [pair for pair in self.announced if pair in self.local]  # (the others: the writer's)
                if written:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for room, user in written:
                            pipe.zadd(self.key(room), {f"{user}|{self.instance}": expires})
                        # the rooms' list too: the sweep walks it, and Redis may have lost it (a restart)
                        pipe.sadd(self.rooms_key, *{room for room, _ in written})
                        await pipe.execute()
                for raw in await self.redis.smembers(self.rooms_key):
                    room = raw.decode() if isinstance(raw, bytes) else str(raw)
                    gone = await self._sweep(keys=[self.key(room), self.rooms_key], args=[time.time(), room])
                    for user in gone:
                        await self._publish(ev.USER_OFFLINE, room, user.decode() if isinstance(user, bytes) else user)
            except (RedisError, OSError) as exc:
                log.warning("presence refresh failed: %s", exc)
            await asyncio.sleep(self.ttl / 3)

    # -- typing ------------------------------------------------------------------------------------------
    async def typed(self, user: str, room: str) -> bool:
        """Announce ``user`` typing in ``room`` on every instance; False when Redis did not take it."""
        return await self._publish(ev.USER_TYPING, room, user)

    def _typing(self, room: str, user: str) -> None:
        handle = self.typing.pop((room, user), None)
        if handle is not None:
            handle.cancel()
        else:
            self.deliver(room, ephemeral(ev.USER_TYPING, room, user), user)  # not to the typist
        self.typing[(room, user)] = asyncio.get_running_loop().call_later(self.typing_ttl, self._stopped, room, user)

    def _stopped(self, room: str, user: str) -> None:
        if self.typing.pop((room, user), None) is not None:
            self.deliver(room, ephemeral(ev.USER_STOPPED_TYPING, room, user), user)

    # -- the channel -------------------------------------------------------------------------------------
    async def _publish(self, kind: str, room: str, user: str) -> bool:
        try:
            await self.redis.publish(self.channel, orjson.dumps({"type": kind, "room": room, "user": user}))
        except (RedisError, OSError) as exc:
            self._failed(kind, exc)
            return False
        return True

    async def _listen(self) -> None:
        while True:
            pubsub = self.listener.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self.ready = True
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    self._on_message(message.get("data"))
            except (RedisError, OSError) as exc:
                self.ready = False
                log.warning("presence channel lost (%s); resubscribing", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await _aclose(pubsub)

    def _on_message(self, data: Any) -> None:
        try:
            msg = orjson.loads(data)
            kind, room, user = msg["type"], msg["room"], msg["user"]
        except Exception:
            return
        if not ev.valid_room(room) or not isinstance(user, str):
            return
        if kind == ev.USER_TYPING:
            self._typing(room, user)
        elif kind in (ev.USER_ONLINE, ev.USER_OFFLINE):
            if kind == ev.USER_OFFLINE:
                self._stopped(room, user)
            self.deliver(room, ephemeral(kind, room, user), None)


def _text(member: Any) -> str:
    return member.decode() if isinstance(member, bytes) else str(member)


def _user(member: Any) -> str:
    return _text(member).rsplit("|", 1)[0]


async def _aclose(pubsub: Any) -> None:
    """Close a redis-py PubSub. Typed here, at the boundary, so that the type check does not depend on whether
    the installed redis-py annotates ``aclose``."""
    close: Callable[[], Awaitable[None]] = pubsub.aclose
    await close()
