"""Publishing a change's events to Redis: one Lua script per change, atomic and idempotent.

The script refuses a change whose resume token is not newer than the last one published (so a restart,
a replay or a second watcher never publishes a change twice), refuses a deposed leader (fencing: the
caller's lease value must still be the leader key's), refuses to publish on top of a last token other than
the one the caller expects (Redis restarted from older data: what it lost must be published first), keeps
like counts next to the stream, and appends each event to the global stream and to the history stream of
each of its rooms, with the same id. In the same call it updates the indexes routing needs later (likes' and
comments' posts, posts' author and visibility), so they always match the last change published. Each entry
of the global stream also carries, in its field ``w``, Redis's clock when it went in (microseconds since the
epoch), from which the servers measure how long an event took to reach them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from realtime.events import Event
from watchers.keys import Keys

MAX_SEQ = 2**64 - 1

PUBLISH_LUA = r"""
local meta, events, leader, likes, since = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local lease, token = ARGV[1], ARGV[2]
if lease ~= '' and redis.call('GET', leader) ~= lease then
  return {'FENCED'}
end
local last = redis.call('HGET', meta, 'token')
if last and token <= last then
  return {'DUP', last}
end
if (last or '') ~= ARGV[9] then
  return {'DIVERGED', last or ''}
end
local change_point = ARGV[7]
local n = tonumber(ARGV[8])
-- first pass: every counter must exist or come with a seed
local i = 10
local parsed = {}
for e = 1, n do
  local ev = {id = ARGV[i], env = ARGV[i + 1], post = ARGV[i + 2], delta = tonumber(ARGV[i + 3]),
              seed = ARGV[i + 4], seed_point = ARGV[i + 5], nrooms = tonumber(ARGV[i + 6]), rooms = {}}
  i = i + 7
  for r = 1, ev.nrooms do
    ev.rooms[r] = KEYS[tonumber(ARGV[i])]
    i = i + 1
  end
  if ev.post ~= '' and ev.seed == '' and redis.call('HEXISTS', likes, ev.post) == 0 then
    return {'SEED', ev.post}
  end
  parsed[e] = ev
end
local gmax, rmax = ARGV[4], ARGV[5]
local failed = 0
local stamp = '' -- when the events went in (Redis's clock, microseconds): the servers measure their wait from it
if n > 0 then
  local now = redis.call('TIME')
  stamp = now[1] .. string.format('%06d', tonumber(now[2]))
end
for e = 1, n do
  local ev = parsed[e]
  local env = ev.env
  if ev.post ~= '' then
    local count = redis.call('HGET', likes, ev.post)
    if not count then
      count = ev.seed
      redis.call('HSET', likes, ev.post, count)
      redis.call('HSET', since, ev.post, ev.seed_point)
    end
    count = tonumber(count)
    local seeded_at = redis.call('HGET', since, ev.post)
    if seeded_at and #seeded_at == 20 then
      seeded_at = seeded_at .. '9999999999' -- written by an earlier release: a count as of every change at that time
    end
    if not seeded_at or change_point > seeded_at then
      count = count + ev.delta
      if count < 0 then count = 0 end
      redis.call('HSET', likes, ev.post, count)
    end
    local s, f = string.find(env, '"data":{"likes":0', 1, true)
    if s then
      env = string.sub(env, 1, f - 1) .. string.format('%d', count) .. string.sub(env, f + 1)
    end
  end
  redis.call('XADD', events, 'MAXLEN', '~', gmax, ev.id, 'e', env, 't', token, 'w', stamp)
  for r = 1, ev.nrooms do
    local ok = redis.pcall('XADD', ev.rooms[r], 'MAXLEN', '~', rmax, ev.id, 'e', env)
    if type(ok) == 'table' and ok.err then failed = failed + 1 end
  end
end
local nops = tonumber(ARGV[i])
i = i + 1
for o = 1, nops do
  local op, key, field, value = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3]
  if op == 'set' then redis.call('HSET', key, field, value)
  elseif op == 'del' then redis.call('HDEL', key, field)
  elseif op == 'put' and field == '0' then redis.call('SET', key, value)
  elseif op == 'put' then redis.call('SET', key, value, 'PX', field)
  else redis.call('DEL', key) end
  i = i + 4
end
redis.call('HSET', meta, 'token', token, 'token_json', ARGV[3], 'at', ARGV[6])
if n > 0 then redis.call('HSET', meta, 'last_id', parsed[n].id) end
return {'OK', tostring(failed)}
"""

RESET_LUA = r"""
local meta, events, resets, leader = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local lease, id, env, gmax = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if lease ~= '' and redis.call('GET', leader) ~= lease then
  return {'FENCED'}
end
local ok = redis.pcall('XADD', events, 'MAXLEN', '~', gmax, id, 'e', env, 't', '')
if type(ok) == 'table' and ok.err then return {'STALE', ok.err} end
redis.call('XADD', resets, 'MAXLEN', '~', 10000, id, 'e', env)
redis.call('HSET', meta, 'last_id', id)
if ARGV[5] == '1' then redis.call('HDEL', meta, 'token', 'token_json', 'at') end
return {'OK'}
"""


MODE_LUA = r"""
local meta, leader = KEYS[1], KEYS[2]
local lease, mode, since = ARGV[1], ARGV[2], ARGV[3]
if lease ~= '' and redis.call('GET', leader) ~= lease then
  return {'FENCED'}
end
if redis.call('HGET', meta, 'full_document') ~= mode then
  redis.call('HSET', meta, 'full_document', mode, 'full_document_since', since)
end
return {'OK'}
"""


class Fenced(Exception):
    """This watcher no longer holds the lease: another one publishes now."""


class Diverged(Exception):
    """Redis's last published token is not the one this watcher published (or resumed after) last: Redis
    restarted from older data. Plan the resume point again, from what Redis holds."""

    def __init__(self, holds: str, expected: str) -> None:
        super().__init__(f"Redis holds {holds[:26] or 'no token'}, expected {expected[:26] or 'no token'}")


class NeedSeed(Exception):
    """A like count is unknown to Redis (first like of a post, or Redis lost its data)."""

    def __init__(self, post_id: str) -> None:
        super().__init__(post_id)
        self.post_id = post_id


ALL_CHANGES = 9_999_999_999  # as many changes as any cluster time can hold


def point(time_part: int, changes: int) -> str:
    """A point in change-stream order: after the first ``changes`` changes at cluster time ``time_part``
    (``seconds << 32 | increment``), before the others. Points compare as strings.

    Every change of a transaction shares its cluster time, so a time alone cannot say whether a count
    includes a change of the transaction or not: a change's position among the changes at its time can."""
    return f"{time_part:020d}{min(max(changes, 0), ALL_CHANGES):010d}"


def change_point(at: str) -> str:
    """The point right after the change at ``at`` ("<time part>:<position>")."""
    time_part, _, position = at.partition(":")
    return point(int(time_part), int(position) + 1)


@dataclass(frozen=True)
class Seed:
    """A like count read from MongoDB, and the point in the stream it holds at: the script adds the changes
    after that point to it, and leaves those before it (already counted) alone."""

    count: int
    as_of: str  # a point()


@dataclass(frozen=True)
class Outcome:
    published: bool  # False: a duplicate, already in the stream
    room_failures: int = 0
    last: str = ""  # a duplicate: the token (_data) Redis holds last


def _room_keys(keys: Keys, evs: list[Event]) -> list[str]:
    return list(dict.fromkeys(keys.room(room) for e in evs for room in e.rooms))


class Publisher:
    def __init__(self, redis: Redis, keys: Keys, *, global_maxlen: int, room_maxlen: int) -> None:
        self.redis = redis
        self.keys = keys
        self.global_maxlen = global_maxlen
        self.room_maxlen = room_maxlen
        self._publish = redis.register_script(PUBLISH_LUA)
        self._reset = redis.register_script(RESET_LUA)
        self._mode = redis.register_script(MODE_LUA)

    async def publish(self, *, lease: str, token: dict[str, Any], previous: str, at: str, events: list[Event],
                      seeds: dict[str, Seed] | None = None,
                      index_set: Sequence[tuple[str, str, dict[str, Any]]] = (),
                      index_del: Sequence[tuple[str, str]] = (),
                      posts: Sequence[tuple[str, bytes | None, int]] = ()) -> Outcome:
        """Publish one change (its events may be none: the token still advances) after ``previous``, the token
        (``_data``, '' for none) the caller expects Redis to hold last. ``at``: the change's
        "<time part>:<position>" (its position among the changes sharing its cluster time). ``posts``: post
        index entries to write, as (post id, JSON, time to live in ms, 0 for none), or (post id, None, 0) to
        forget."""
        k = self.keys
        keys = [k.meta, k.events, k.leader, k.likes, k.likes_since]
        rooms = _room_keys(k, events)
        index_keys = list(dict.fromkeys([k.index(kind) for kind, _, _ in index_set] +
                                        [k.index(kind) for kind, _ in index_del] +
                                        [k.post(post_id) for post_id, _, _ in posts]))
        room_base = len(keys) + 1
        keys += rooms + index_keys
        room_pos = {key: room_base + i for i, key in enumerate(rooms)}
        index_pos = {key: room_base + len(rooms) + i for i, key in enumerate(index_keys)}
        args: list[Any] = [lease, token["_data"], orjson.dumps(token, default=str), self.global_maxlen,
                           self.room_maxlen, at, change_point(at), len(events), previous]
        for e in events:
            counter = e.counter
            seed = (seeds or {}).get(counter.post_id) if counter else None
            args += [e.id, orjson.dumps(e.envelope()), counter.post_id if counter else "",
                     counter.delta if counter else 0, seed.count if seed else "", seed.as_of if seed else "",
                     len(e.rooms)]
            args += [room_pos[k.room(room)] for room in e.rooms]
        ops: list[Any] = []
        for kind, ident, value in index_set:
            ops += ["set", index_pos[k.index(kind)], ident, orjson.dumps(value)]
        for kind, ident in index_del:
            ops += ["del", index_pos[k.index(kind)], ident, ""]
        for post_id, entry, ttl_ms in posts:
            if entry is None:
                ops += ["forget", index_pos[k.post(post_id)], "", ""]
            else:
                ops += ["put", index_pos[k.post(post_id)], str(max(ttl_ms, 0)), entry]
        args += [len(ops) // 4, *ops]
        reply = await self._publish(keys=keys, args=args)
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status == "FENCED":
            raise Fenced()
        if status == "SEED":
            raise NeedSeed(reply[1].decode() if isinstance(reply[1], bytes) else reply[1])
        if status == "DUP":
            return Outcome(False, last=reply[1].decode() if isinstance(reply[1], bytes) else reply[1])
        if status == "DIVERGED":
            raise Diverged(reply[1].decode() if isinstance(reply[1], bytes) else reply[1], previous)
        return Outcome(True, int(reply[1]))

    async def reset(self, *, lease: str, event: Event, forget_token: bool) -> bool:
        """Append a reset marker. False when the id is not newer than the stream's last (nothing written)."""
        k = self.keys
        reply = await self._reset(keys=[k.meta, k.events, k.resets, k.leader],
                                  args=[lease, event.id, orjson.dumps(event.envelope()), self.global_maxlen,
                                        "1" if forget_token else "0"])
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status == "FENCED":
            raise Fenced()
        return bool(status == "OK")

    async def record_mode(self, *, lease: str, full_document: str, since: int) -> None:
        """Record the ``fullDocument`` mode the changes from cluster time ``since`` on are read with, unless Redis
        already holds that mode (then its own ``since`` stays): a replay from the oplog reads them the same way."""
        reply = await self._mode(keys=[self.keys.meta, self.keys.leader], args=[lease, full_document, since])
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status == "FENCED":
            raise Fenced()

    async def state(self) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.meta)
        return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in raw.items()}
