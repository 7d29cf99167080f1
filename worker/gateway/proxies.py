"""The client's address behind reverse proxies.

A proxy appends the address it received a request from to X-Forwarded-For; whatever a client put in
the header itself comes first. So only the right end can be believed, and only as far as proxies we
trust wrote it: walk the hops from the right (the peer of our socket first), skip trusted proxies,
and the first address that is not one is the client. Entries that are not addresses are ignored; if
every hop is a trusted proxy, the left-most one is the client.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str | None) -> Address | None:
    """An IP address from a header entry or a socket peer (`1.2.3.4`, `1.2.3.4:567`, `[::1]:567`,
    `::1`); IPv4-mapped IPv6 as IPv4; None for anything else."""
    if not text:
        return None
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: Iterable[Network]) -> str | None:
    """The right-most address in (X-Forwarded-For hops …, peer) that is not a trusted proxy."""
    trusted = tuple(trusted)

    def is_trusted(address: Address) -> bool:
        return any(address.version == net.version and address in net for net in trusted)

    current = parse_address(peer)
    if current is None:
        return peer
    if not is_trusted(current):
        return str(current)
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            continue
        current = address
        if not is_trusted(address):
            break
    return str(current)
