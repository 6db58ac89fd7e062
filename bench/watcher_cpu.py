#!/usr/bin/env python
"""The watcher's CPU per change, in process and deterministic: the work the watcher does for each change of a
backlog (mapping, routing, building the publish script's arguments, carrying like counts forward, metrics),
with every Redis and MongoDB round trip answered from memory.

Not a test: it measures. The full backlog benchmark (``bench/watcher_bench.py --mode backlog``) is the real
figure, but on a shared machine it drifts by ±15%; this one is steadier (the host's steal still moves it by
several percent: compare two versions run one right after the other, or count instructions with valgrind).
It runs in two steps:

* ``--record``: start the MongoDB stand-in, write the backlog benchmark's mix of changes (its ``plan()`` and
  producer, ``--changes`` of them), and read them back from a change stream opened as the watcher opens it
  (``updateLookup``, pre-images when available). The raw change documents go to ``.cache/watcher_cpu/``,
  with the posts that existed before them (the post index a watcher would hold).
* without it: decode the recorded changes once (PyMongo's BSON decoding is not measured), then ``--repeats``
  times build a fresh :class:`watchers.watcher.Watcher` on in-memory twins of Redis and MongoDB and hand it
  the changes in reads of ``read_batch`` (2000), as the stream does in a backlog, with the garbage collector
  set as the watcher process sets it (``watchers.main.GC_THRESHOLDS``; the recording is left out of its
  collections, as ``gc.freeze()`` leaves out what the watcher made at start-up). Reported: the sum over the
  reads of each read's least process CPU time (``time.process_time()``) over the repeats, less what the twins
  themselves spent, per change.

    python bench/watcher_cpu.py --record [--changes 20000]
    python bench/watcher_cpu.py [--repeats 15] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast

import bson
import orjson
from benchkit import ROOT, log
from bson.codec_options import CodecOptions
from pymongo import MongoClient
from watcher_bench import DB, PREFIX, Stack, plan, prepare, produce, sentinel, start_standin

from realtime.ids import id_text
from watchers import mapping
from watchers.config import MappingConfig, WatcherConfig
from watchers.keys import Keys
from watchers.likecount import LikeCounts
from watchers.main import GC_THRESHOLDS
from watchers.publish import PUBLISH_LUA
from watchers.watcher import Watcher

CACHE = ROOT / ".cache" / "watcher_cpu"


def recording(seed: int, changes: int) -> Path:
    return CACHE / f"backlog-s{seed}-n{changes}.bson"


# -- recording -------------------------------------------------------------------------------------------------


def record(args: argparse.Namespace) -> None:
    cfg = MappingConfig()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="watcher-cpu-") as tmp:
        stack = Stack(Path(tmp), None)
        try:
            uri = start_standin(stack)
            client: MongoClient[dict[str, Any]] = MongoClient(uri, maxPoolSize=args.concurrency + 4)
            prepare(client, rng)
            db = client[DB]
            posts = list(db.posts.find())
            with db.watch(mapping.stream_pipeline(cfg)) as probe:
                probe.try_next()
                start = probe.resume_token
            deadline = time.monotonic() + 600
            tally = produce(
                client,
                plan(rng, "backlog", args.changes, args.concurrency, 0.1, newest=0.3),
                args.seed + 1,
                threading.Event(),
                deadline,
            )
            sentinel(client, "backlog", tally)
            log(f"wrote {tally.changes} changes; reading them back")
            out: list[bytes] = []
            empty = 0
            with db.watch(
                mapping.stream_pipeline(cfg),
                resume_after=start,
                full_document="updateLookup",
                full_document_before_change="whenAvailable",
                max_await_time_ms=200,
            ) as stream:
                while empty < 5 and len(out) < tally.changes:
                    change = stream.try_next()
                    if change is None:
                        empty += 1
                        continue
                    empty = 0
                    out.append(bson.encode(change))
            client.close()
        finally:
            stack.close()
    path = recording(args.seed, args.changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bson.encode({"posts": posts, "changes": len(out)}) + b"".join(out))
    log(f"recorded {len(out)} changes (of {tally.changes} written) in {path.relative_to(ROOT)}")


def load(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    docs = bson.decode_all(path.read_bytes(), CodecOptions())  # as PyMongo decodes change documents
    return docs[0]["posts"], docs[1:]


# -- in-memory twins ------------------------------------------------------------------------------------------


class Spent:
    """CPU time the twins spent (not the watcher's): subtracted from the measure."""

    def __init__(self) -> None:
        self.seconds = 0.0


class RedisTwin:
    """What the watcher asks of Redis while it maps and publishes: the post index (MGET, GET), the like and
    comment indexes (HGET), which like counts exist (HMGET), and the publish script, whose effects on those
    it applies."""

    def __init__(self, keys: Keys, spent: Spent) -> None:
        self.keys = keys
        self.spent = spent
        self.strings: dict[str, bytes] = {}
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.events = 0

    def register_script(self, lua: str) -> Any:
        twin = self

        async def call(keys: list[str], args: list[Any]) -> list[bytes]:
            if lua == PUBLISH_LUA:
                twin._publish(keys, args)
            return [b"OK", b"0", b"0"]

        return call

    def _publish(self, keys: list[str], args: list[Any]) -> None:
        started = time.process_time()
        likes = self.hashes.setdefault(self.keys.likes, {})
        for _token, _at, _point, events, ops in orjson.loads(args[4]):
            self.events += len(events)
            for event in events:
                if event[1]:
                    likes.setdefault(event[1], (event[3] or "0").encode())
            for op, key, name, value in ops:
                target = keys[key - 1]
                if op == "set":
                    self.hashes.setdefault(target, {})[name] = value.encode()
                elif op == "del":
                    self.hashes.get(target, {}).pop(name, None)
                elif op == "put":
                    self.strings[target] = value.encode()
                else:
                    self.strings.pop(target, None)
        self.spent.seconds += time.process_time() - started

    async def get(self, key: str) -> bytes | None:
        return self.strings.get(key)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        return [self.strings.get(key) for key in keys]

    async def hget(self, key: str, name: str) -> bytes | None:
        return self.hashes.get(key, {}).get(name)

    async def hmget(self, key: str, names: list[str]) -> list[bytes | None]:
        held = self.hashes.get(key, {})
        return [held.get(name) for name in names]


class DocumentsTwin:
    """Posts "in MongoDB": as the recording left them (a post looked up as of a change is read as of now)."""

    def __init__(self, posts: dict[str, dict[str, Any]]) -> None:
        self.by_id = posts

    async def post(self, post_id: str, at: Any) -> dict[str, Any] | None:
        return self.by_id.get(post_id)

    async def posts_now(self, post_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        return {post_id: self.by_id.get(post_id) for post_id in post_ids}


class LikeCountsTwin(LikeCounts):
    """The seeds' reads answered from memory: no like before the backlog, the changes before one at its cluster
    time taken from the recording. The carrying forward is the watcher's own code."""

    def __init__(self, cfg: MappingConfig, changes: list[dict[str, Any]], subject: Any) -> None:
        super().__init__(cast(Any, None), cast(Any, None), cfg, [], subject=subject)  # as the watcher makes it
        self.at: dict[Any, list[dict[str, Any]]] = {}
        for change in changes:
            self.at.setdefault(change["clusterTime"], []).append(change)

    async def _earlier(self, change: dict[str, Any], position: int) -> list[dict[str, Any]]:
        return self.at[change["clusterTime"]][:position]

    async def _counts(self, post_ids: list[str], at: Any) -> dict[str, int]:
        return {}

    async def _owners(self, deletes: list[Any], at: Any) -> dict[str, str | None]:
        return {}


class MongoTwin:
    def __getitem__(self, name: str) -> Any:
        return self


def watcher(posts: list[dict[str, Any]], changes: list[dict[str, Any]], spent: Spent) -> tuple[Watcher, RedisTwin]:
    """A watcher on the twins, its post index holding the posts that existed before the recording."""
    cfg = WatcherConfig(
        mongodb_uri="mongodb://twin",
        database=DB,
        redis_url="redis://twin",
        mapping=MappingConfig(),
        prefix=PREFIX,
        http=None,
    )
    keys = Keys(PREFIX)
    redis = RedisTwin(keys, spent)
    for doc in posts:
        info = mapping.post_info(doc, cfg.mapping)
        post_id = id_text(doc["_id"])
        assert info is not None and post_id is not None
        redis.strings[keys.post(post_id)] = orjson.dumps(mapping.post_entry(info))
    w = Watcher(cfg, cast(Any, MongoTwin()), cast(Any, redis))
    final = {
        str(id_text(c["documentKey"]["_id"])): c["fullDocument"]
        for c in changes
        if c["ns"]["coll"] == "posts" and isinstance(c.get("fullDocument"), dict)
    }
    w.router.documents = DocumentsTwin({**{str(id_text(d["_id"])): d for d in posts}, **final})
    w.like_counts = LikeCountsTwin(cfg.mapping, changes, w.router.subject)
    return w, redis


# -- measuring ----------------------------------------------------------------------------------------------------


async def drain(w: Watcher, reads: list[list[dict[str, Any]]], spent: Spent) -> list[float]:
    """Hand the watcher each read in turn: the CPU seconds of each (the twins' share taken off)."""
    out = []
    for read in reads:
        spent.seconds = 0.0
        started = time.process_time()
        await w._handle_read("lease", read)
        out.append(time.process_time() - started - spent.seconds)
    return out


def run_once(
    posts: list[dict[str, Any]], changes: list[dict[str, Any]], read_batch: int, profile: cProfile.Profile | None = None
) -> tuple[list[float], int]:
    """One pass over the changes with a fresh watcher: (CPU seconds of the watcher's own work on each read,
    events published)."""
    spent = Spent()
    w, redis = watcher(posts, changes, spent)
    reads = [changes[i : i + read_batch] for i in range(0, len(changes), read_batch)]
    loop = asyncio.new_event_loop()
    thresholds = gc.get_threshold()
    try:
        gc.collect()
        gc.freeze()  # the recording is not the watcher's heap: a real one holds a read at a time
        gc.set_threshold(*GC_THRESHOLDS)  # and it collects garbage as the watcher process does
        if profile is not None:
            profile.enable()
        seconds = loop.run_until_complete(drain(w, reads, spent))
        if profile is not None:
            profile.disable()
    finally:
        loop.close()
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    return seconds, redis.events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--record", action="store_true", help="record the changes (starts the MongoDB stand-in)")
    parser.add_argument("--changes", type=int, default=20_000, help="changes to record (default 20000)")
    parser.add_argument("--concurrency", type=int, default=4, help="producer threads when recording (default 4)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15, help="passes over the changes; the least is reported")
    parser.add_argument("--read-batch", type=int, default=2000, help="changes per read (the watcher's default)")
    parser.add_argument("--limit", type=int, default=0, help="measure the first LIMIT changes only (0: all)")
    parser.add_argument("--profile", action="store_true", help="one more pass under cProfile; print the top")
    args = parser.parse_args(argv)
    path = recording(args.seed, args.changes)
    if args.record or not path.exists():
        record(args)
    posts, changes = load(path)
    if args.limit:
        changes = changes[: args.limit]
    passes = []
    for _ in range(args.repeats):
        seconds, events = run_once(posts, changes, args.read_batch)
        passes.append(seconds)
    # Every pass does the same work read by read: the least time of each read is the one least disturbed by
    # whatever else the machine ran meanwhile.
    best = sum(min(p[i] for p in passes) for i in range(len(passes[0]))) / len(changes) * 1e6
    median = statistics.median(sum(p) for p in passes) / len(changes) * 1e6
    print(
        f"watcher CPU per change: {best:.1f} us (each read's least of {args.repeats} passes; median pass "
        f"{median:.1f} us) over {len(changes)} changes ({events} events), reads of {args.read_batch}"
    )
    if args.profile:
        profile = cProfile.Profile()
        run_once(posts, changes, args.read_batch, profile)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
