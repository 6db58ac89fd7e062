"""The dependency locks (requirements/*.txt) against pyproject.toml, and the environment against the locks.

What keeps the test command green on a fresh clone whatever PyPI releases tomorrow (docs/dependencies.md).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: str | None
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[str, Pin]:
    """The pins of a lock written by ``uv pip compile --generate-hashes``: one logical line each."""
    text = re.sub(r"\s*#.*", "", path.read_text())  # comments, including "# via" lines
    pins: dict[str, Pin] = {}
    for line in text.replace("\\\n", " ").splitlines():
        if not line.strip():
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+?)(?:\s*;\s*(.*?))?((?:\s+--hash=\S+)*)\s*", line)
        assert match, f"{path.name}: not a pin with hashes: {line!r}"
        name, ver, marker, hashes = match.groups()
        pins[canonicalize_name(name)] = Pin(canonicalize_name(name), ver, marker,
                                            tuple(re.findall(r"--hash=(\S+)", hashes)))
    return pins


def requirements(kind: str) -> list[Requirement]:
    """pyproject.toml's requirements that requirements/{kind}.txt must pin: the build backend, the product's
    dependencies and, for the test lock, the test extra."""
    meta: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = meta["build-system"]["requires"] + meta["project"]["dependencies"]
    if kind == "test":
        names += meta["project"]["optional-dependencies"]["test"]
    return [Requirement(r) for r in names]


@pytest.mark.parametrize("kind", ["run", "test"])
def test_every_requirement_is_locked_within_its_bounds(kind: str) -> None:
    pins = read_lock(LOCKS / f"{kind}.txt")
    for req in requirements(kind):
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req} is not in requirements/{kind}.txt: run scripts/lock"
        assert req.specifier.contains(pin.version, prereleases=True), \
            f"requirements/{kind}.txt pins {pin.name}=={pin.version}, outside pyproject.toml's {req}"
        for extra in req.extras:  # pyjwt[crypto]: what the extra brings is locked too
            assert extra != "crypto" or "cryptography" in pins


def test_the_image_lock_is_the_test_lock_cut_down() -> None:
    """The Dockerfile's requirements/run.txt runs the versions the tests ran."""
    run, test = read_lock(LOCKS / "run.txt"), read_lock(LOCKS / "test.txt")
    for name, pin in run.items():
        assert name in test, f"{name} is in run.txt but not in test.txt"
        assert (pin.version, pin.marker, set(pin.hashes)) == \
            (test[name].version, test[name].marker, set(test[name].hashes)), name


@pytest.mark.parametrize("lock", ["run.txt", "test.txt", "tools.txt"])
def test_every_pin_carries_hashes(lock: str) -> None:
    pins = read_lock(LOCKS / lock)
    assert pins
    for pin in pins.values():
        assert pin.hashes and all(h.startswith("sha256:") and len(h) == 7 + 64 for h in pin.hashes), pin.name


def test_the_lock_reader_sees_a_missing_hash(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("redis==8.2.0\n    # via realtime\nsanic==25.12.1 \\\n    --hash=sha256:" + "a" * 64 + "\n")
    pins = read_lock(lock)
    assert pins["redis"].hashes == () and len(pins["sanic"].hashes) == 1


@pytest.mark.skipif(os.environ.get("REALTIME_UNLOCKED") == "1",
                    reason="scripts/test --latest runs on the newest releases, not on the lock")
def test_the_environment_is_the_lock() -> None:
    """scripts/test, scripts/dev and .ci/run install from the lock: what runs is what it names."""
    wrong = []
    for pin in read_lock(LOCKS / "test.txt").values():
        if pin.marker is not None and not Marker(pin.marker).evaluate():
            continue
        try:
            installed = version(pin.name)
        except PackageNotFoundError:
            wrong.append(f"{pin.name} is not installed")
            continue
        if installed != pin.version:
            wrong.append(f"{pin.name} {installed} is installed, the lock names {pin.version}")
    assert not wrong, "the environment is not the lock (scripts/test makes .venv from it): " + "; ".join(wrong)


def test_the_package_has_no_type_ignore() -> None:
    """A ``type: ignore`` that a dependency's release makes unused (or wrong) fails ``mypy --strict``; the
    package casts or wraps at the boundary instead."""
    found = [f"{path.relative_to(ROOT)}:{n}"
             for package in ("realtime", "watchers") for path in sorted((ROOT / package).rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"#\s*type:\s*ignore", line)]
    assert found == []
