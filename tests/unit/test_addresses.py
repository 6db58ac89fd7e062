"""The client's address behind trusted proxies (realtime.server.addresses), and its setting."""

from __future__ import annotations

import pytest

from realtime.config import ConfigError
from realtime.server import config
from realtime.server.addresses import client_address, parse_networks

PROXIES = parse_networks("10.0.0.0/8, 192.0.2.7, fd00::/8")


@pytest.mark.parametrize(("peer", "xff", "expected"), [
    # a peer that is not a trusted proxy: its header is not believed
    ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),
    # one trusted proxy: the entry it appended
    ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
    # what the client wrote itself (left of the proxy's entry) is not believed
    ("10.1.2.3", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),
    # two trusted proxies in a row, and the header given twice (values joined in order)
    ("10.1.2.3", ["6.6.6.6, 198.51.100.1", "192.0.2.7"], "198.51.100.1"),
    # every entry a trusted proxy: the left-most one
    ("10.1.2.3", ["10.9.9.9, 10.8.8.8"], "10.9.9.9"),
    # a trusted proxy that sent no header: itself
    ("10.1.2.3", [], "10.1.2.3"),
    # garbage stops the walk at the last trusted hop
    ("10.1.2.3", ["198.51.100.1, unknown"], "10.1.2.3"),
    ("10.1.2.3", ["198.51.100.1, 10.4.4.4, not-an-ip"], "10.1.2.3"),
    # ports, IPv6, IPv4-mapped IPv6
    ("10.1.2.3", ["198.51.100.1:4711"], "198.51.100.1"),
    ("fd00::1", ["[2001:db8::5]:443"], "2001:db8::5"),
    ("::ffff:10.1.2.3", ["2001:db8::5"], "2001:db8::5"),
])
def test_client_address(peer: str, xff: list[str], expected: str) -> None:
    assert client_address(peer, xff, PROXIES) == expected
    assert client_address(peer, xff, ()) == peer  # no trusted proxies: the headers are ignored


def test_parse_networks_names_a_bad_entry() -> None:
    assert parse_networks("") == ()
    assert [str(n) for n in parse_networks(" 127.0.0.1 ,10.0.0.0/8,,::1")] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError, match="'nginx'"):
        parse_networks("10.0.0.0/8, nginx")


def test_the_setting() -> None:
    base = {"REALTIME_JWT_SECRET": "x" * 32}
    assert config.load(base).trusted_proxies == ()
    cfg = config.load({**base, "REALTIME_TRUSTED_PROXIES": "172.16.0.0/12"})
    assert [str(n) for n in cfg.trusted_proxies] == ["172.16.0.0/12"]
    with pytest.raises(ConfigError, match="REALTIME_TRUSTED_PROXIES"):
        config.load({**base, "REALTIME_TRUSTED_PROXIES": "10.0.0.0/33"})
