"""Seeded fault schedules: the same seed and length give the same faults, at the same times, on the same targets.

A schedule is a list of :class:`Fault`: when it starts (seconds into the run), what it is, what it hits, how
long it lasts (0: an instant fault) and its parameters. Faults on the same resource never overlap (one link,
one process, Redis, MongoDB), faults on different ones do, at most :data:`CONCURRENT` at a time. Everything
heals at the end of the run at the latest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

WATCHERS = ("w0", "w1")
SERVERS = ("s0", "s1")
LINKS = tuple(f"{m}>{peer}" for m in (*WATCHERS, *SERVERS) for peer in ("mongo", "redis")) + tuple(
    f"c>{s}" for s in SERVERS)

# What each kind does is in tests/chaos/nemesis.py; the weights say how often a schedule draws it.
NET = {"delay": 3, "bandwidth": 2, "reset": 3, "refuse": 2, "blackhole": 3, "partition": 3, "oneway": 2}
PROCESS = {"kill": 3, "stop": 3, "term": 2}
REDIS = {"redis-kill": 2, "redis-wipe": 1, "redis-oom": 3, "redis-stop": 2}
MONGO = {"mongo-fail": 4, "mongo-pause": 2, "mongo-hangup": 1, "mongo-wipe": 0.5}
KINDS = {**NET, **PROCESS, **REDIS, **MONGO}
INSTANT = {"reset", "mongo-hangup"}
CONCURRENT = 3

# failCommand targets: the application name each process gives MongoDB, and the commands it sends.
MONGO_APPS = {
    "w0": ("realtime-watcher chaos-w0", ("getMore", "aggregate", "find", "update")),
    "w1": ("realtime-watcher chaos-w1", ("getMore", "aggregate", "find", "update")),
    "deep": ("realtime-server deep replay", ("aggregate", "getMore", "find")),
    "producers": ("chaos-producer", ("insert", "update", "delete", "commitTransaction")),
}
MONGO_ERRORS = (6, 91, 189, 262, 10107, 11600, 1)  # transient ones, and one nobody foresaw (InternalError)


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str
    target: str
    duration: float
    params: tuple[tuple[str, object], ...] = ()

    @property
    def end(self) -> float:
        return self.at + self.duration

    def param(self, name: str, default: object = None) -> object:
        return dict(self.params).get(name, default)

    @property
    def resource(self) -> str:
        if self.kind in REDIS:
            return "redis"
        if self.kind in MONGO:
            return "mongo"
        return self.target

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params)
        span = "instant" if self.kind in INSTANT else f"{self.duration:.1f}s"
        return f"t={self.at:5.1f}s  {self.kind:<12} {self.target:<10} {span:<8} {extra}".rstrip()


@dataclass(frozen=True)
class Schedule:
    seed: int
    seconds: float
    faults: tuple[Fault, ...]

    def describe(self) -> str:
        lines = [f"schedule of seed {self.seed} ({self.seconds:.0f}s, {len(self.faults)} faults):"]
        lines += [f"  {f.describe()}" for f in self.faults]
        return "\n".join(lines)

    @property
    def kinds(self) -> set[str]:
        return {f.kind for f in self.faults}


def _target(kind: str, rng: random.Random) -> str:
    if kind in NET:
        return rng.choice(LINKS)
    if kind in PROCESS:
        return rng.choice((*WATCHERS, *SERVERS))
    if kind == "mongo-fail":
        return rng.choice(sorted(MONGO_APPS))
    return kind.split("-")[0]


def _params(kind: str, target: str, rng: random.Random) -> tuple[tuple[str, object], ...]:
    if kind == "delay":
        return (("delay_ms", rng.choice((50, 150, 400, 1200))), ("jitter_ms", rng.choice((0, 100, 500))))
    if kind == "bandwidth":
        return (("kib_per_s", rng.choice((2, 8, 32))),)
    if kind == "oneway":
        return (("held", rng.choice(("up", "down"))),)
    if kind == "mongo-fail":
        commands = MONGO_APPS[target][1]
        picked = tuple(sorted(rng.sample(commands, rng.randint(1, min(2, len(commands))))))
        mode = rng.choice(("error", "error", "close", "block"))
        params: list[tuple[str, object]] = [("commands", ",".join(picked)), ("mode", mode)]
        if mode == "error":
            params.append(("code", rng.choice(MONGO_ERRORS)))
        elif mode == "block":
            params.append(("block_ms", rng.choice((1000, 3000))))
        return tuple(params)
    return ()


def generate(seed: int, seconds: float) -> Schedule:
    """The schedule of ``seed`` for a run of ``seconds``: about one fault every ``seconds / 10``."""
    rng = random.Random(f"chaos-schedule-{seed}")
    kinds = sorted(KINDS)
    weights = [KINDS[k] for k in kinds]
    faults: list[Fault] = []
    t = rng.uniform(1.0, 3.0)
    gap = max(seconds / 10, 1.5)
    last_end = seconds - 2.0  # everything heals before the end of the run
    while t < last_end - 1.0:
        for _ in range(20):
            kind = rng.choices(kinds, weights)[0]
            target = _target(kind, rng)
            duration = 0.0 if kind in INSTANT else min(rng.uniform(1.0, 7.0), last_end - t)
            fault = Fault(round(t, 1), kind, target, round(duration, 1), _params(kind, target, rng))
            live = [f for f in faults if f.at <= fault.end and fault.at <= f.end]
            if len(live) < CONCURRENT and all(f.resource != fault.resource for f in live):
                faults.append(fault)
                break
        t += rng.expovariate(1 / gap)
    return Schedule(seed, seconds, tuple(faults))
