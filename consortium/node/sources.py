"""Where a connection comes from, as the per-source limits of both ports count it."""

from __future__ import annotations

import ipaddress


def source_group(host: str) -> str:
    """The unit a per-source limit counts: an IPv4 address, or the /64 of an IPv6 one (a single
    host commonly holds a whole /64, so its addresses are one source; an IPv4-mapped IPv6
    address is its IPv4 address). A host that is no address is its own source."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
