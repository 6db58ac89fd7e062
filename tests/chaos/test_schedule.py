"""Seeded schedules: reproducible, well formed, and the CI sweep's seeds draw every kind of fault."""

from __future__ import annotations

from tests.chaos.schedule import CONCURRENT, INSTANT, KINDS, generate
from tests.chaos.test_chaos import CI_SECONDS, CI_SEEDS


def test_the_same_seed_and_length_give_the_same_schedule() -> None:
    assert generate(41, 30) == generate(41, 30)
    assert generate(41, 30) != generate(42, 30)


def test_faults_never_share_a_resource_at_once_and_all_heal_before_the_end() -> None:
    for seed in range(200):
        schedule = generate(seed, 45)
        faults = schedule.faults
        assert faults, seed
        for f in faults:
            assert f.at > 0 and f.end <= 45 - 2 + 1e-9, (seed, f)
            assert (f.duration == 0) == (f.kind in INSTANT), (seed, f)
            live = [g for g in faults if g.at <= f.at <= g.end]
            assert len(live) <= CONCURRENT, (seed, f)
            assert len({g.resource for g in live}) == len(live), (seed, f, live)


def test_the_ci_sweep_draws_every_kind_of_fault() -> None:
    drawn = set().union(*(generate(seed, CI_SECONDS).kinds for seed in CI_SEEDS))
    assert drawn == set(KINDS), sorted(set(KINDS) - drawn)
