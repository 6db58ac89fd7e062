"""One chaos run: a cluster, the workload, the readers, a seeded schedule of faults, then the heal, the canaries
and the checks. :func:`run` returns a :class:`Result`; its :meth:`Result.report` says what was seen, and how to
replay the run.

Phases (times relative to the start of the faults):

1. start the cluster, the model's tailer, a few posts every reader's rooms refer to, the readers and the
   producers;
2. ``seconds`` of faults from the schedule while the producers write and the readers read; every second the
   monitor checks that no process ended unbidden and that memory stays bounded, and every few seconds the
   checker runs on what arrived so far (a violation ends the run early: the report says when it was seen);
3. heal everything; wait until every server is ready and a watcher streams (bounded);
4. the readers stop leaving on their own, the producers pause; one canary write per room; the watcher must
   publish them, and every open connection must receive those of its rooms (bounded: no silent freeze);
5. the final check, against the model computed from everything MongoDB committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tests.chaos import checker, clients
from tests.chaos.cluster import DB, PREFIX, Cluster
from tests.chaos.model import Event, Model, key_of
from tests.chaos.nemesis import Nemesis
from tests.chaos.record import Record
from tests.chaos.schedule import Schedule, generate
from tests.chaos.tailer import Tailer
from tests.chaos.workload import Producer, World, post_doc
from tests.conftest import TIMEOUT

log = logging.getLogger("chaos")

MEMORY_MIB = {"w": 400.0, "s": 400.0, "redis": 300.0, "mongo": 1500.0}  # per process, resident
HEAL_WITHIN = TIMEOUT * 6  # seconds for every server to be ready and a watcher to stream after the heal
CANARY_WITHIN = TIMEOUT * 4  # seconds for the canaries to be published and to reach every open connection
STABLE = (("u1", "public"), ("u2", "public"), ("u3", "private"), ("u4", "public"))


@dataclass
class Result:
    seed: int
    seconds: float
    schedule: Schedule
    violations: list[checker.Violation] = field(default_factory=list)
    t0: float = 0.0
    ended_early: bool = False
    timeline: str = ""
    stats: dict[str, object] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    workdir: Path | None = None
    elapsed: float = 0.0

    @property
    def first_seen(self) -> float | None:
        return min((v.at - self.t0 for v in self.violations), default=None)

    def replay(self) -> str:
        return (f"scripts/chaos --seed {self.seed} --seconds {self.seconds:g}    (or: .venv/bin/pytest tests/chaos "
                f"-m chaos --chaos-seed {self.seed} --chaos-seconds {self.seconds:g})")

    def report(self) -> str:
        lines = [f"chaos seed {self.seed}: {len(self.violations)} violations in {self.elapsed:.0f}s"
                 + (f", first seen {self.first_seen:.1f}s into the faults" if self.violations else "")]
        kinds: dict[str, int] = {}
        for v in self.violations:
            kinds[v.kind] = kinds.get(v.kind, 0) + 1
        if kinds:
            lines.append("  by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
        for v in sorted(self.violations, key=lambda v: v.at)[:25]:
            lines.append("  " + v.line(self.t0))
        lines.append(self.schedule.describe())
        if self.timeline:
            lines.append("what the nemesis did:\n" + self.timeline)
        if self.unknown:
            lines.append("changes the docs leave undefined (not checked): " + "; ".join(self.unknown[:5]))
        lines.append("stats: " + ", ".join(f"{k}={v}" for k, v in self.stats.items()))
        if self.workdir is not None:
            lines.append(f"logs: {self.workdir / 'logs'}")
        lines.append("replay: " + self.replay())
        return "\n".join(lines)


class Live:
    """The model kept up to date with the tailer during the run, for the checks made while it runs."""

    def __init__(self, tailer: Tailer) -> None:
        self.tailer = tailer
        self.model = Model()
        self.fed = 0

    def update(self) -> Model:
        changes = self.tailer.changes
        while self.fed < len(changes):
            self.model.apply(changes[self.fed])
            self.fed += 1
        return self.model


def _canary_writes(rooms: set[str], world: World, serial: int) -> list[tuple[str, dict[str, object]]]:
    """One write per room that makes an event in it: (collection, document)."""
    rng = random.Random(serial)
    writes: list[tuple[str, dict[str, object]]] = []
    for room in sorted(rooms):
        kind, _, name = room.partition(":")
        n = len(writes)
        if room == "public":
            doc = post_doc(f"canary{serial}-{n}", "u1", rng, visibility="public", text="canary public")
        elif kind == "author":
            doc = post_doc(f"canary{serial}-{n}", name, rng, visibility="public", text=f"canary {room}")
        elif kind == "hashtag":
            doc = post_doc(f"canary{serial}-{n}", "u1", rng, visibility="public", text=f"canary {room}")
            doc["hashtags"] = [name]
        elif kind == "user":
            doc = post_doc(f"canary{serial}-{n}", name, rng, visibility="private", text=f"canary {room}")
        elif kind == "post":
            if name in world.stable:  # (a post the database lost when it lost its data has no room any more)
                writes.append(("comments", {"_id": f"canary{serial}-{n}", "postId": name, "userId": "u5",
                                            "text": f"canary {room}"}))
            continue
        else:
            continue
        writes.append(("posts", doc))
    return writes


async def run(seed: int, seconds: float, workdir: Path, *, stop_at_first: bool = True) -> Result:
    schedule = generate(seed, seconds)
    print(f"\nchaos seed {seed}, {seconds:g}s of faults\n{schedule.describe()}", flush=True)
    result = Result(seed, seconds, schedule, workdir=workdir)
    started = time.monotonic()
    cluster = Cluster(workdir, seed)
    tailer: Tailer | None = None
    producers: list[Producer] = []
    tasks: list[asyncio.Task[None]] = []
    stop_clients = asyncio.Event()
    try:
        await asyncio.to_thread(cluster.start)
        tailer = Tailer(cluster.mongo.uri, DB)
        await asyncio.to_thread(tailer.start)
        live = Live(tailer)
        world = World()
        rng = random.Random(f"chaos-run-{seed}")
        stable = []
        with cluster.mongo.client("chaos-setup") as setup:
            for author, visibility in STABLE:
                post_id = world.next_id("s")
                setup[DB].posts.insert_one(post_doc(post_id, author, rng, visibility=visibility))
                stable.append((post_id, author, visibility == "public"))
                world.stable.append(post_id)
                world.authors[post_id] = author
        specs = clients.plan_sessions(rng, stable)
        since = await asyncio.to_thread(cluster.last_event_id) or "0-0"
        ports = {m.name: cluster.proxies.links[f"c>{m.name}"].port for m in cluster.servers}
        sessions = [clients.Session(spec, ports, rng.randrange(1 << 30), since) for spec in specs]
        producers = [Producer(f"p{i}", cluster.mongo.uri, DB, world, rng.randrange(1 << 30)) for i in range(2)]
        for p in producers:
            p.start()
        tasks = [asyncio.ensure_future(s.run(stop_clients)) for s in sessions]

        def on_wipe(when: str) -> None:
            assert tailer is not None
            if when == "before":
                for p in producers:
                    p.pause()
                tailer.suspend()
            else:
                tailer.new_epoch()
                world.forget_all()
                for p in producers:
                    p.forget()
                    p.resume()

        result.t0 = time.monotonic()
        nemesis = Nemesis(cluster, schedule, result.t0, on_wipe)
        seen: list[checker.Violation] = []
        chaos = asyncio.ensure_future(nemesis.run())
        peak: dict[str, float] = {}
        next_check = time.monotonic() + 5
        try:
            while not chaos.done():
                await asyncio.wait({chaos}, timeout=1.0)
                now = time.monotonic()
                for what in cluster.unexpected_exits():
                    seen.append(checker.Violation("process", what.split(" ")[0], 0, now, what))
                for name, mib in cluster.memory().items():
                    peak[name] = max(peak.get(name, 0.0), mib)
                    bound = MEMORY_MIB.get(name, MEMORY_MIB.get(name[0], 400.0))
                    if mib > bound and not any(v.kind == "memory" and v.session == name for v in seen):
                        seen.append(checker.Violation("memory", name, 0, now, f"{mib:.0f} MiB resident > {bound:.0f}"))
                if now >= next_check:
                    next_check = now + 5
                    model = live.update()
                    horizon = model.events[-1].key if model.events else (0, 0)
                    records = [r for s in sessions for r in s.records]
                    found = checker.check(records, list(model.events), now=now, horizon=horizon,
                                          excused=nemesis.excused)
                    known = {(v.kind, v.session, v.connection, v.detail) for v in seen}
                    seen += [v for v in found if (v.kind, v.session, v.connection, v.detail) not in known]
                if seen and stop_at_first:
                    result.ended_early = True
                    print(f"chaos seed {seed}: a violation {seen[0].at - result.t0:.1f}s into the faults; "
                          "stopping early", flush=True)
                    break
        finally:
            if not chaos.done():
                chaos.cancel()
            with contextlib.suppress(BaseException):
                await chaos
        result.timeline = nemesis.timeline()
        result.stats["peak_rss_mib"] = {k: round(v) for k, v in sorted(peak.items())}
        if result.ended_early:
            result.violations = seen
            _dump(workdir, [r for s in sessions for r in s.records], list(live.update().events), result.t0)
            return result

        # -- heal, then the canaries -----------------------------------------------------------------------------
        problems = await asyncio.to_thread(nemesis.heal_everything)
        healed_at = time.monotonic()
        not_ready = await asyncio.to_thread(cluster.wait_ready, HEAL_WITHIN)
        for what in problems + not_ready:
            seen.append(checker.Violation("liveness", "cluster", 0, time.monotonic(),
                                          f"{HEAL_WITHIN:.0f}s after the heal: {what}"))
        for s in sessions:
            s.settled = True
        for p in producers:
            await asyncio.to_thread(p.pause)
        await asyncio.sleep(1.0)  # the readers reconnect where a fault had left them
        rooms = clients.all_rooms(specs)
        with cluster.mongo.client("chaos-canary") as writer:
            for coll, doc in _canary_writes(rooms, world, seed):
                await asyncio.to_thread(writer[DB][coll].insert_one, doc)
        await asyncio.to_thread(tailer.drain)
        model = live.update()
        canaries = [e for e in model.events if e.canary]
        if canaries:
            last = canaries[-1]
            published = await _published(cluster, last.id, CANARY_WITHIN)
            if not published:
                seen.append(checker.Violation(
                    "liveness", "watcher", 0, time.monotonic(),
                    f"the canaries were not in Redis {CANARY_WITHIN:.0f}s after they were written "
                    f"({time.monotonic() - healed_at:.0f}s after the heal): the stream stopped"))
            await _delivered(sessions, canaries, CANARY_WITHIN)
        now = time.monotonic()
        for s in sessions:
            if s.records and s.records[-1].closed is None:
                s.records[-1].final = True
            else:
                last_rec = s.records[-1] if s.records else None
                seen.append(checker.Violation(
                    "liveness", s.spec.name, last_rec.index if last_rec else 0, now,
                    f"no open connection {now - healed_at:.0f}s after the heal (the last one: "
                    f"{last_rec.why if last_rec else 'none'})"))
        for what in cluster.unexpected_exits():
            seen.append(checker.Violation("process", what.split(" ")[0], 0, now, what))
        records = [r for s in sessions for r in s.records]
        found = checker.check(records, list(model.events), now=now, excused=nemesis.excused)
        known = {(v.kind, v.session, v.connection, v.detail) for v in seen}
        seen += [v for v in found if (v.kind, v.session, v.connection, v.detail) not in known]
        result.violations = seen
        result.unknown = list(model.unknown)
        _dump(workdir, records, model.events, result.t0)
        result.stats.update(
            changes=len(tailer.changes), events=len(model.events), writes=sum(p.done for p in producers),
            failed_writes=sum(p.failed for p in producers), connections=len(records),
            received=sum(1 for r in records for _, d, f in r.log if d == "in" and f.get("op") == "event"),
            resets=sum(1 for r in records for _, d, f in r.log if d == "in" and f.get("op") == "reset"),
            unavailable=sum(1 for r in records for _, d, f in r.log if d == "in" and f.get("code") == "unavailable"))
        return result
    finally:
        stop_clients.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in producers:
            await asyncio.to_thread(p.stop)
        if tailer is not None:
            await asyncio.to_thread(tailer.stop)
        await asyncio.to_thread(cluster.close)
        result.elapsed = time.monotonic() - started


def _dump(workdir: Path, records: list[Record], events: list[Event], t0: float) -> None:
    """What every connection saw, and what the model computed, as JSON lines (times relative to the faults' start),
    for the post-mortem of a failed run."""
    with (workdir / "records.jsonl").open("wb") as out:
        for rec in records:
            head = {"session": rec.session, "connection": rec.index, "transport": rec.transport, "user": rec.user,
                    "server": rec.server, "opened": round(rec.opened - t0, 3), "why": rec.why, "final": rec.final,
                    "closed": None if rec.closed is None else round(rec.closed - t0, 3)}
            out.write(orjson.dumps(head) + b"\n")
            for t, direction, f in rec.log:
                out.write(orjson.dumps({"t": round(t - t0, 3), "d": direction, "f": f}) + b"\n")
    with (workdir / "model.jsonl").open("wb") as out:
        for e in events:
            out.write(orjson.dumps({"id": e.id, "type": e.type, "rooms": e.rooms, "data": e.data, "ts": e.ts,
                                    "private_of": e.private_of, "canary": e.canary}) + b"\n")


async def _published(cluster: Cluster, event_id: str, within: float) -> bool:
    want = key_of(event_id)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(cluster.last_event_id)
        if last is not None and key_of(last) >= want:
            return True
        await asyncio.sleep(0.3)
    return False


async def _delivered(sessions: list[clients.Session], canaries: list[Event], within: float) -> None:
    """Wait (bounded) until every session's open connection has the canaries of its rooms."""
    by_room: dict[str, set[str]] = {}
    for e in canaries:
        for r in e.rooms:
            by_room.setdefault(r, set()).add(e.id)

    def missing() -> int:
        n = 0
        for s in sessions:
            rec = s.records[-1] if s.records else None
            if rec is None or rec.closed is not None:
                n += 1
                continue
            got = {f.get("id") for _, d, f in rec.log if d == "in" and f.get("op") == "event"}
            want = set().union(*(by_room.get(r, set()) for r in s.spec.rooms))
            n += len(want - got)
        return n

    deadline = time.monotonic() + within
    while missing() and time.monotonic() < deadline:  # noqa: ASYNC110 (polls what the sessions record)
        await asyncio.sleep(0.3)


__all__ = ["PREFIX", "Result", "run"]
