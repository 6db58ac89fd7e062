"""The nemesis: carries out a schedule's faults on the cluster at their times, heals each when it is due, and
keeps a log of what it did when (the checker's excuses for a path that was faulty, and the failure report).

What each kind does:

- ``delay``, ``bandwidth``, ``blackhole``, ``partition``, ``oneway`` (a partition one way only): the link's
  proxy shapes its traffic for the fault's duration; ``reset``: the link's connections are reset (RST) at
  once; ``refuse``: they are reset and new ones refused for the duration (as a port nobody listens on);
- ``kill`` (SIGKILL), ``term`` (SIGTERM): the watcher or server is ended, and started again after the
  duration; ``stop``: SIGSTOP, then SIGCONT;
- ``redis-kill``: redis-server is killed and restarted with its data after the duration; ``redis-wipe``: the
  same without its data; ``redis-oom``: ``maxmemory`` 1 byte (every write refused) for the duration;
  ``redis-stop``: SIGSTOP, then SIGCONT (a Redis that hangs);
- ``mongo-fail``: the stand-in's ``failCommand`` fail point for one application's commands (an error code,
  a hang-up, or a delay) for the duration; ``mongo-pause``: the stand-in answers nothing for the duration;
  ``mongo-hangup``: it closes every connection at once; ``mongo-wipe``: the stand-in is restarted without
  its data (the producers are paused and the model's tailer reads to the end first; down for the duration).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pymongo.errors
import redis

from tests.chaos.cluster import DB, Cluster
from tests.chaos.proxy import Shape
from tests.chaos.schedule import INSTANT, MONGO_APPS, Fault, Schedule
from tests.integration.watcherkit import setup_collections

log = logging.getLogger("chaos.nemesis")


@dataclass
class Applied:
    fault: Fault
    started: float
    healed: float | None = None
    note: str = ""


@dataclass
class Nemesis:
    cluster: Cluster
    schedule: Schedule
    t0: float
    on_mongo_wipe: Callable[[str], None] | None = None  # told before ("before") and after ("after") a wipe
    applied: list[Applied] = field(default_factory=list)

    async def run(self) -> None:
        """Carry out the schedule; returns once the last fault has healed. Each fault runs on its own (a command
        that hangs, such as one sent to a paused MongoDB, delays nothing else)."""
        pending: list[asyncio.Task[None]] = []
        try:
            for item in sorted(self.schedule.faults, key=lambda f: f.at):
                await self._until(item.at)
                pending.append(asyncio.ensure_future(self._fire(item)))
            await asyncio.gather(*pending)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _until(self, at: float) -> None:
        delay = self.t0 + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _fire(self, f: Fault) -> None:
        applied = Applied(f, time.monotonic())
        self.applied.append(applied)
        try:
            await asyncio.to_thread(self._start, f)
        except Exception as exc:  # a fault that could not be applied is reported, not fatal
            applied.note = f" could not start: {type(exc).__name__}: {exc}"
            log.warning("%s:%s", f.describe(), applied.note)
        if f.kind not in INSTANT:
            await self._until(f.end)
            try:
                await asyncio.to_thread(self._heal, f)
            except Exception as exc:
                applied.note += f" could not heal: {type(exc).__name__}: {exc}"
                log.warning("%s:%s", f.describe(), applied.note)
        applied.healed = time.monotonic()

    # -- one fault -----------------------------------------------------------------------------------------
    def _start(self, f: Fault) -> None:
        c = self.cluster
        log.info("fault: %s", f.describe())
        k = f.kind
        if k == "delay":
            c.proxies.shape(f.target, Shape(delay=int(str(f.param("delay_ms"))) / 1000,
                                            jitter=int(str(f.param("jitter_ms"))) / 1000))
        elif k == "bandwidth":
            c.proxies.shape(f.target, Shape(rate=int(str(f.param("kib_per_s"))) * 1024))
        elif k == "reset":
            c.proxies.reset(f.target)
        elif k == "refuse":
            c.proxies.shape(f.target, Shape(refuse=True))
            c.proxies.reset(f.target)
        elif k == "blackhole":
            c.proxies.shape(f.target, Shape(blackhole=True))
        elif k == "partition":
            c.proxies.shape(f.target, Shape(held=frozenset({"up", "down"})))
        elif k == "oneway":
            c.proxies.shape(f.target, Shape(held=frozenset({str(f.param("held"))})))
        elif k in ("kill", "term"):
            c.signal(f.target, signal.SIGKILL if k == "kill" else signal.SIGTERM)
        elif k == "stop":
            c.signal(f.target, signal.SIGSTOP)
        elif k in ("redis-kill", "redis-wipe"):
            c.redis.kill()
            if k == "redis-wipe":
                c.redis.wipe()
        elif k == "redis-oom":
            with c.redis_client() as r:
                r.config_set("maxmemory", 1)
        elif k == "redis-stop":
            c.redis.signal(signal.SIGSTOP)
        elif k == "mongo-fail":
            c.mongo.command(self._failpoint(f))
        elif k == "mongo-pause":
            c.mongo.command({"realtimeStandIn": "pause", "seconds": f.duration})
        elif k == "mongo-hangup":
            with contextlib.suppress(pymongo.errors.AutoReconnect):  # it hangs up on us too
                c.mongo.command({"realtimeStandIn": "hangUp"})
        elif k == "mongo-wipe":
            if self.on_mongo_wipe is not None:
                self.on_mongo_wipe("before")
            c.mongo.kill()
        else:
            raise ValueError(f"unknown fault kind {k!r}")

    def _failpoint(self, f: Fault) -> dict[str, Any]:
        app = MONGO_APPS[f.target][0]
        data: dict[str, Any] = {"failCommands": str(f.param("commands")).split(","), "appName": app}
        mode = f.param("mode")
        if mode == "error":
            data["errorCode"] = int(str(f.param("code")))
        elif mode == "close":
            data["closeConnection"] = True
        else:
            data.update(blockConnection=True, blockTimeMS=int(str(f.param("block_ms"))))
        return {"configureFailPoint": "failCommand", "mode": "alwaysOn", "data": data}

    def _heal(self, f: Fault) -> None:
        c = self.cluster
        k = f.kind
        log.info("heal: %s", f.describe())
        if k in ("delay", "bandwidth", "refuse", "blackhole", "partition", "oneway"):
            c.proxies.shape(f.target, Shape())
        elif k in ("kill", "term"):
            c.restart(f.target)
        elif k == "stop":
            c.signal(f.target, signal.SIGCONT)
        elif k in ("redis-kill", "redis-wipe"):
            c.redis.start()
        elif k == "redis-oom":
            with contextlib.suppress(redis.RedisError), c.redis_client() as r:
                r.config_set("maxmemory", 0)
        elif k == "redis-stop":
            c.redis.signal(signal.SIGCONT)
        elif k == "mongo-fail":
            c.mongo.command({"configureFailPoint": "failCommand", "mode": "off"})
        elif k == "mongo-wipe":
            time.sleep(1.2)  # the new life's cluster times must come after the old one's
            c.mongo.start()
            with c.mongo.client("chaos-setup") as client:
                setup_collections(client, DB)
                for name in ("likes", "comments"):
                    client[DB][name].create_index("postId")
            if self.on_mongo_wipe is not None:
                self.on_mongo_wipe("after")

    # -- after the run -------------------------------------------------------------------------------------
    def heal_everything(self) -> list[str]:
        """Whatever is still faulty (a fault that could not heal, a process down): healed now. What failed."""
        c = self.cluster
        problems = []
        c.proxies.heal_all()
        if c.redis.pid is None:
            try:
                c.redis.start()
            except Exception as exc:
                problems.append(f"redis-server would not start: {exc}")
        c.redis.signal(signal.SIGCONT)
        try:
            with c.redis_client() as r:
                r.config_set("maxmemory", 0)
        except redis.RedisError as exc:
            problems.append(f"redis: {exc}")
        if c.mongo.pid is None:
            try:
                self._heal(Fault(0, "mongo-wipe", "mongo", 0))
            except Exception as exc:
                problems.append(f"the stand-in would not start: {exc}")
        with contextlib.suppress(Exception):
            c.mongo.command({"configureFailPoint": "failCommand", "mode": "off"})
        c.heal_processes()
        return problems

    def excused(self, server: str, start: float, end: float) -> bool:
        """Whether the path from a client to ``server`` was faulty at some time in ``[start, end]``."""
        for a in self.applied:
            f = a.fault
            if f.target not in (server, f"c>{server}"):
                continue
            healed = a.healed if a.healed is not None else float("inf")
            if f.kind in ("reset",):
                healed = a.started + 1.0
            if a.started <= end and start <= healed + 1.0:
                return True
        return False

    def timeline(self) -> str:
        lines = []
        for a in self.applied:
            healed = "" if a.healed is None else f" healed at {a.healed - self.t0:5.1f}s"
            lines.append(f"  {a.fault.describe()}  (started at {a.started - self.t0:5.1f}s{healed}){a.note}")
        return "\n".join(lines)
