"""The client's address behind trusted proxies (load balancers), for the per-address connection limit.

A connection's peer is the proxy when the server runs behind one, and every client would then count against
the proxy's single address. When the peer is in ``REALTIME_TRUSTED_PROXIES``, the client is the right-most
``X-Forwarded-For`` entry that is not itself a trusted proxy: each proxy appends the address it was reached
from, so entries left of the first untrusted one may have been written by the client and are never believed.
With no trusted proxies (the default) the headers are ignored and the peer is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 192.0.2.7"``: addresses and networks, comma-separated. ValueError names a bad one."""
    networks = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not an address or network: {item!r}") from None
    return tuple(networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Iterable[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_address(peer: str, forwarded_for: list[str], trusted: tuple[Network, ...]) -> str:
    """The client's address: ``peer`` itself, unless it is a trusted proxy; then, walking the
    ``X-Forwarded-For`` values (all of them, in order) from the right, the first entry that is not a trusted
    proxy. An entry that is not an address stops the walk at the last trusted hop."""
    if not trusted:
        return peer
    current = _ip(peer)
    if current is None or not _trusted(current, trusted):
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _ip(hop)
        if address is None:
            break
        current = address
        if not _trusted(address, trusted):
            break
    return str(current)
