"""Reading the rooms' history for a replay, and what Redis says about its coverage."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from realtime.events import id_before, parse_id
from realtime.resume import RoomHistory, StreamState


def _id(raw: Any) -> tuple[int, int] | None:
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return parse_id(text)


def _max_deleted(info: dict[Any, Any]) -> tuple[int, int]:
    """The highest id removed from a room's stream (or a bound above it). ``max-deleted-entry-id`` counts
    XDEL only: trimming (``XADD MAXLEN``/``MINID``, ``XTRIM``) removes a prefix and leaves it at 0-0, so
    when fewer entries are left than were added, everything before the first one left counts as removed."""
    def get(name: str) -> Any:
        return info.get(name.encode(), info.get(name))

    deleted = _id(get("max-deleted-entry-id")) or (0, 0)
    added, length = get("entries-added"), get("length")
    if added is None or length is None or int(added) <= int(length):
        return deleted
    first = _id(get("recorded-first-entry-id"))
    if not length or first is None or first == (0, 0):  # all gone, the last one too
        return max(deleted, _id(get("last-generated-id")) or (0, 0))
    return max(deleted, id_before(first))


# KEYS[1]: a room's history. ARGV: the id to read after, a byte bound, a count bound, the bytes counted per
# entry on top of its envelope, and the size an entry is expected to have (0: not known). The entries after
# that id, oldest first, as long as their sizes fit the byte bound (and at most the count bound); then the
# size of the first entry that did not fit (0: none was left, or the count bound was reached). Entries
# without an envelope are skipped. Each XRANGE asks for about as many entries as the bytes left may hold,
# judging by those read so far or by the expected size, so that Redis copies little more than it returns.
PAGE_SCRIPT = """
local after, room, count, extra = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out, seen, read = {}, 0, 0
if tonumber(ARGV[5]) > 0 then seen, read = 1, tonumber(ARGV[5]) end
while #out < count do
  local ask = 8
  if seen > 0 then ask = math.floor(room * seen / read) + 1 end
  local batch = redis.call('XRANGE', KEYS[1], '(' .. after, '+', 'COUNT', math.max(1, math.min(ask, 512, count - #out)))
  if #batch == 0 then break end
  for _, entry in ipairs(batch) do
    local fields, value = entry[2], nil
    for i = 1, #fields, 2 do
      if fields[i] == 'e' then value = fields[i + 1] end
    end
    if value ~= nil then
      local size = #value + extra
      if size > room then return {out, size} end
      room = room - size
      seen, read = seen + 1, read + size
      out[#out + 1] = {entry[1], value}
    end
    after = entry[1]
  end
end
return {out, 0}
"""


class History:
    def __init__(self, redis: Redis, events_key: str, resets_key: str, room_prefix: str) -> None:
        self.redis = redis
        self.events_key = events_key
        self.resets_key = resets_key
        self.room_prefix = room_prefix
        self._page = redis.register_script(PAGE_SCRIPT)

    async def last_id(self) -> bytes:
        """The global stream's newest id ("0-0" when empty): where live reading starts."""
        last = await self.redis.xrevrange(self.events_key, count=1)
        if not last:
            return b"0-0"
        newest: Any = last[0][0]
        return newest if isinstance(newest, bytes) else str(newest).encode()

    async def state(self) -> StreamState:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrevrange(self.events_key, count=1)
            pipe.xrevrange(self.resets_key, count=1)
            last, reset = await pipe.execute()
        return StreamState(_id(last[0][0]) if last else None, _id(reset[0][0]) if reset else None)

    async def room_info(self, rooms: list[str]) -> dict[str, RoomHistory]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.execute_command("XINFO", "STREAM", self.room_prefix + room)
            replies = await pipe.execute(raise_on_error=False)
        out = {}
        for room, reply in zip(rooms, replies, strict=True):
            if isinstance(reply, ResponseError) and "no such key" in str(reply).lower():
                out[room] = RoomHistory()  # nothing was ever published there
                continue
            if isinstance(reply, Exception):  # anything else is an outage, not an empty history
                raise reply
            info = dict(zip(reply[::2], reply[1::2], strict=False)) if isinstance(reply, list) else reply
            out[room] = RoomHistory(_max_deleted(info))
        return out

    async def first_ids(self, rooms: list[str]) -> dict[str, tuple[int, int] | None]:
        """The oldest id each room's history still holds (None: it holds nothing)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.xrange(self.room_prefix + room, count=1)
            replies = await pipe.execute()
        return {room: _id(reply[0][0]) if reply else None for room, reply in zip(rooms, replies, strict=True)}

    async def pages(self, reads: dict[str, tuple[str, int, int, int]], extra: int
                    ) -> dict[str, tuple[list[tuple[bytes, bytes]], int]]:
        """For each room, ``(after, max_bytes, max_count, expected)``: its events after ``after`` (exclusive),
        oldest first, while the sizes of their envelopes (each plus ``extra``) fit ``max_bytes``, at most
        ``max_count``; and the size of the first that did not fit (0 when there was none). ``expected`` is the
        size an entry may have (0: unknown), to read in as few steps as it can. One round trip for all."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for room, (after, max_bytes, max_count, expected) in reads.items():
                await self._page(keys=[self.room_prefix + room],
                                 args=[after, max_bytes, max_count, extra, expected], client=pipe)
            replies = await pipe.execute()
        out = {}
        for room, reply in zip(reads, replies, strict=True):
            entries, next_size = reply
            out[room] = ([(bytes(eid), bytes(raw)) for eid, raw in entries], int(next_size))
        return out
