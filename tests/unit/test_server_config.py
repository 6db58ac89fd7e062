"""realtime.server.config.load: the listening address and its aliases, the new bounds, and the docs of every
variable the code reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from realtime.config import ConfigError
from realtime.server.config import load

ROOT = Path(__file__).resolve().parents[2]
BASE = {"REALTIME_JWT_SECRET": "x" * 32}


def test_socket_port_is_the_listening_port_when_realtime_listen_is_not_set() -> None:
    """SOCKET_PORT, the original design's name for the server's port, is read as an alias."""
    assert (load(BASE).host, load(BASE).port) == ("127.0.0.1", 8000)
    assert load({**BASE, "SOCKET_PORT": "9001"}).port == 9001
    both = load({**BASE, "SOCKET_PORT": "9001", "REALTIME_LISTEN": "0.0.0.0:9002"})
    assert (both.host, both.port) == ("0.0.0.0", 9002)  # REALTIME_LISTEN wins


@pytest.mark.parametrize("value", ["http", "-1", "70000"])
def test_a_bad_socket_port_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="SOCKET_PORT"):
        load({**BASE, "SOCKET_PORT": value})


def test_request_deadlines() -> None:
    cfg = load(BASE)
    assert (cfg.head_timeout, cfg.redis_timeout, cfg.retry_seconds) == (10.0, 5.0, 2.0)
    cfg = load({**BASE, "REALTIME_HEAD_TIMEOUT": "3", "REALTIME_REDIS_TIMEOUT": "1.5", "REALTIME_RETRY_SECONDS": "0"})
    assert (cfg.head_timeout, cfg.redis_timeout, cfg.retry_seconds) == (3.0, 1.5, 0.0)
    with pytest.raises(ConfigError, match="REALTIME_HEAD_TIMEOUT"):
        load({**BASE, "REALTIME_HEAD_TIMEOUT": "0"})


def test_every_variable_the_code_reads_is_in_the_configuration_reference() -> None:
    """A setting nobody can find is a setting nobody can use: each name the code reads has its row."""
    docs = (ROOT / "docs" / "configuration.md").read_text()
    pattern = re.compile(r"""["']((?:REALTIME|MONGODB|REDIS|SOCKET)_[A-Z0-9_]+)["']""")
    read = {name for package in ("realtime", "watchers") for path in (ROOT / package).rglob("*.py")
            for name in pattern.findall(path.read_text())}
    assert "REALTIME_LISTEN" in read and "SOCKET_PORT" in read  # the scan sees what it must
    missing = sorted(name for name in read if f"`{name}`" not in docs)
    assert missing == [], f"not in docs/configuration.md: {missing}"


def test_cors_origins_are_a_comma_separated_list() -> None:
    """A page served from http://127.0.0.1:3000 was refused when only http://localhost:3000 could be named."""
    assert load(BASE).cors_origins == ()
    cfg = load({**BASE, "REALTIME_CORS_ORIGIN": "http://localhost:3000, http://127.0.0.1:3000/"})
    assert cfg.cors_origins == ("http://localhost:3000", "http://127.0.0.1:3000")
    assert load({**BASE, "SOCKET_CORS_ORIGIN": "*"}).cors_origins == ("*",)
    with pytest.raises(ConfigError, match=r"REALTIME_CORS_ORIGIN.*localhost:3000/feed"):
        load({**BASE, "REALTIME_CORS_ORIGIN": "http://localhost:3000/feed"})
