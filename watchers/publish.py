"""Publishing changes' events to Redis: one Lua script call per batch of changes, atomic and idempotent.

A call carries a batch of consecutive changes (up to ``REALTIME_PUBLISH_BATCH``) and publishes all of them
or none. The script skips the changes whose resume token is not newer than the last one published (so a
restart, a retry after a lost answer, a replay or a second watcher never publishes a change twice), refuses
a deposed leader (fencing: the
caller's lease value must still be the leader key's), refuses to publish on top of a last token other than
the one the caller expects (Redis restarted from older data: what it lost must be published first), keeps
like counts next to the stream, and appends each event to the global stream and to the history stream of
each of its rooms, with the same id. In the same call it updates the indexes routing needs later (likes' and
comments' posts, posts' author and visibility), so they always match the last change published, and records
the last change's token, the point the watcher resumes after. A like count Redis does not hold, and the call
brings no seed for, refuses the whole call and names every such post at once. Each entry
of the global stream also carries, in its field ``w``, Redis's clock when it went in (microseconds since the
epoch), from which the servers measure how long an event took to reach them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from realtime.events import Event
from watchers.keys import Keys

MAX_SEQ = 2**64 - 1

PUBLISH_LUA = r"""
local meta, events, leader, likes, since = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local lease, previous, gmax, rmax = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if lease ~= '' and redis.call('GET', leader) ~= lease then
  return {'FENCED'}
end
-- the changes, in order: {token, at, point, events, ops}; an event: {id, post, delta, seed, seed point, rooms,
-- envelope length}; an op: {op, key, field, value}; keys and rooms are indexes into KEYS; the events' envelopes,
-- in order, one after the other in ARGV[7], each as long as its event says
local batch = cjson.decode(ARGV[5])
local envelopes = ARGV[7]
local n = #batch
local last = redis.call('HGET', meta, 'token')
local skip = 0
if last then
  while skip < n and batch[skip + 1][1] <= last do skip = skip + 1 end
end
if skip == n then
  return {'DUP', last}
end
if skip == 0 and (last or '') ~= previous then
  return {'DIVERGED', last or ''}
end
-- first pass: every counter must exist or come with a seed
local seen, missing = {}, {'SEED'}
for c = skip + 1, n do
  for _, ev in ipairs(batch[c][4]) do
    local post = ev[2]
    if post ~= '' and not seen[post] then
      seen[post] = true
      if ev[4] == '' and redis.call('HEXISTS', likes, post) == 0 then
        missing[#missing + 1] = post
      end
    end
  end
end
if #missing > 1 then
  return missing
end
local at = 1 -- where the next event's envelope starts in ARGV[7]
for c = 1, skip do
  for _, ev in ipairs(batch[c][4]) do at = at + ev[7] end
end
local failed = 0
local stamp = '' -- when the events went in (Redis's clock, microseconds): the servers measure their wait from it
local last_id = nil
for c = skip + 1, n do
  local change = batch[c]
  local token, change_point = change[1], change[3]
  for _, ev in ipairs(change[4]) do
    if stamp == '' then
      local now = redis.call('TIME')
      stamp = now[1] .. string.format('%06d', tonumber(now[2]))
    end
    local env = string.sub(envelopes, at, at + ev[7] - 1)
    at = at + ev[7]
    local post = ev[2]
    if post ~= '' then
      local count = redis.call('HGET', likes, post)
      if not count then
        count = ev[4]
        redis.call('HSET', likes, post, count)
        redis.call('HSET', since, post, ev[5])
      end
      count = tonumber(count)
      local seeded_at = redis.call('HGET', since, post)
      if seeded_at and #seeded_at == 20 then
        seeded_at = seeded_at .. '9999999999' -- written by an earlier release: a count as of every change at that time
      end
      if not seeded_at or change_point > seeded_at then
        count = count + ev[3]
        if count < 0 then count = 0 end
        redis.call('HSET', likes, post, count)
      end
      local s, f = string.find(env, '"data":{"likes":0', 1, true)
      if s then
        env = string.sub(env, 1, f - 1) .. string.format('%d', count) .. string.sub(env, f + 1)
      end
    end
    redis.call('XADD', events, 'MAXLEN', '~', gmax, ev[1], 'e', env, 't', token, 'w', stamp)
    for _, room in ipairs(ev[6]) do
      local ok = redis.pcall('XADD', KEYS[room], 'MAXLEN', '~', rmax, ev[1], 'e', env)
      if type(ok) == 'table' and ok.err then failed = failed + 1 end
    end
    last_id = ev[1]
  end
  for _, o in ipairs(change[5]) do
    local op, key, field, value = o[1], KEYS[o[2]], o[3], o[4]
    if op == 'set' then redis.call('HSET', key, field, value)
    elseif op == 'del' then redis.call('HDEL', key, field)
    elseif op == 'put' and field == '0' then redis.call('SET', key, value)
    elseif op == 'put' then redis.call('SET', key, value, 'PX', field)
    else redis.call('DEL', key) end
  end
end
redis.call('HSET', meta, 'token', batch[n][1], 'token_json', ARGV[6], 'at', batch[n][2])
if last_id then redis.call('HSET', meta, 'last_id', last_id) end
return {'OK', tostring(failed), tostring(skip)}
"""

RESET_LUA = r"""
local meta, events, resets, leader, likes, likes_since = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local lease, id, env, gmax = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if lease ~= '' and redis.call('GET', leader) ~= lease then
  return {'FENCED'}
end
local ok = redis.pcall('XADD', events, 'MAXLEN', '~', gmax, id, 'e', env, 't', '')
if type(ok) == 'table' and ok.err then return {'STALE', ok.err} end
redis.call('XADD', resets, 'MAXLEN', '~', 10000, id, 'e', env)
redis.call('HSET', meta, 'last_id', id)
if ARGV[5] == '1' then redis.call('HDEL', meta, 'token', 'token_json', 'at') end
-- The stream does not continue here: like counts carried across may miss the changes in between. Forgotten,
-- each post's next like reads its count from MongoDB again.
redis.call('DEL', likes, likes_since)
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
    """Like counts unknown to Redis (first like of a post, or Redis lost the count): every such post of a batch."""

    def __init__(self, post_ids: Sequence[str]) -> None:
        super().__init__(", ".join(post_ids))
        self.post_ids = list(post_ids)
        self.post_id = self.post_ids[0]


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
    changes = int(position) + 1
    if 0 <= changes <= ALL_CHANGES:  # always, for a change's place: point() without its bounds
        return f"{int(time_part):020d}{changes:010d}"
    return point(int(time_part), changes)


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


@dataclass(frozen=True)
class BatchOutcome:
    skipped: int  # the first changes of the batch, already published (all of them: a duplicate batch)
    room_failures: int = 0
    last: str = ""  # the token (_data) Redis holds last now


@dataclass(slots=True)
class Pending:
    """A change to publish: its resume token, "<time part>:<position>", events and index writes (see
    :meth:`Publisher.publish`)."""

    token: dict[str, Any]
    at: str
    events: list[Event]
    index_set: Sequence[tuple[str, str, dict[str, Any]]] = ()
    index_del: Sequence[tuple[str, str]] = ()
    posts: Sequence[tuple[str, bytes | None, int]] = ()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
        outcome = await self.publish_batch(lease=lease, previous=previous, seeds=seeds,
                                           changes=[Pending(token, at, events, index_set, index_del, posts)])
        if outcome.skipped:
            return Outcome(False, last=outcome.last)
        return Outcome(True, outcome.room_failures)

    async def publish_batch(self, *, lease: str, previous: str, changes: Sequence[Pending],
                            seeds: Mapping[str, Seed] | None = None) -> BatchOutcome:
        """Publish consecutive changes, in stream order, all or none, after ``previous`` (the token Redis should
        hold last, '' for none). The first changes Redis already holds are skipped (a batch sent again after
        its answer was lost publishes nothing twice). ``seeds``: the like counts of posts Redis may not hold, as
        of the first change of the batch that counts their likes. Raises :class:`NeedSeed` (naming every post
        whose count is missing), :class:`Fenced` or :class:`Diverged`."""
        assert changes, "a batch holds at least one change"
        k = self.keys
        keys = [k.meta, k.events, k.leader, k.likes, k.likes_since]
        position: dict[str, int] = {}

        def key(name: str) -> int:
            found = position.get(name)
            if found is None:
                keys.append(name)
                found = position[name] = len(keys)
            return found

        room_prefix, index_key, post_key = k.room_prefix, k.index, k.post
        rooms: dict[tuple[str, ...], list[int]] = {}  # an event's rooms -> their history streams' indexes in KEYS
        envelopes: list[bytes] = []
        batch: list[Any] = []
        dumps = orjson.dumps
        for change in changes:
            evs = []
            counted = False  # whether an event of the change carries a like count
            for e in change.events:
                indexes = rooms.get(e.rooms)
                if indexes is None:
                    indexes = rooms[e.rooms] = [key(room_prefix + room) for room in e.rooms]  # k.room(room)
                # e.envelope(), encoded (orjson writes the rooms' tuple as the same array)
                envelope = dumps({"id": e.id, "type": e.type, "rooms": e.rooms, "data": e.data, "ts": e.ts})
                envelopes.append(envelope)
                counter = e.counter
                if counter is None:
                    evs.append((e.id, "", 0, "", "", indexes, len(envelope)))
                else:
                    counted = True
                    seed = seeds.get(counter.post_id) if seeds else None
                    evs.append((e.id, counter.post_id, counter.delta, str(seed.count) if seed else "",
                                seed.as_of if seed else "", indexes, len(envelope)))
            ops: list[tuple[str, int, str, str]] = []
            for kind, ident, value in change.index_set:
                ops.append(("set", key(index_key(kind)), ident, orjson.dumps(value).decode()))
            for kind, ident in change.index_del:
                ops.append(("del", key(index_key(kind)), ident, ""))
            for post_id, entry, ttl_ms in change.posts:
                if entry is None:
                    ops.append(("forget", key(post_key(post_id)), "", ""))
                else:
                    ops.append(("put", key(post_key(post_id)), str(max(ttl_ms, 0)), entry.decode()))
            # the script reads a change's point only for the like counts its events carry
            batch.append((change.token["_data"], change.at, change_point(change.at) if counted else "", evs, ops))
        args: list[Any] = [lease, previous, self.global_maxlen, self.room_maxlen, orjson.dumps(batch),
                           orjson.dumps(changes[-1].token, default=str), b"".join(envelopes)]
        reply = await self._publish(keys=keys, args=args)
        status = _text(reply[0])
        if status == "FENCED":
            raise Fenced()
        if status == "SEED":
            raise NeedSeed([_text(post) for post in reply[1:]])
        if status == "DUP":
            return BatchOutcome(len(changes), last=_text(reply[1]))
        if status == "DIVERGED":
            raise Diverged(_text(reply[1]), previous)
        return BatchOutcome(int(reply[2]), int(reply[1]), changes[-1].token["_data"])

    async def counted(self, post_ids: Sequence[str]) -> set[str]:
        """Which of ``post_ids`` Redis holds a like count for."""
        if not post_ids:
            return set()
        held = await self.redis.hmget(self.keys.likes, list(post_ids))
        return {post for post, value in zip(post_ids, held, strict=True) if value is not None}

    async def reset(self, *, lease: str, event: Event, forget_token: bool) -> bool:
        """Append a reset marker, and forget the like counts (the changes the stream skips may have moved them:
        each post's next like reads its count from MongoDB again). False when the id is not newer than the
        stream's last (nothing written)."""
        k = self.keys
        reply = await self._reset(keys=[k.meta, k.events, k.resets, k.leader, k.likes, k.likes_since],
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
