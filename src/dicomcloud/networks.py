"""Sets of addresses and networks as settings list them: trusted proxies, the hosts of a DIMSE peer."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class AddressSet:
    """Addresses and CIDR networks ("10.0.0.5", "10.0.8.0/24", "::1"); an invalid entry is a ValueError."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)

    def __contains__(self, address: object) -> bool:
        """Whether `address` (a socket's textual address; IPv4-mapped IPv6 counts as IPv4) is in the set."""
        if not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._networks)

    def __bool__(self) -> bool:
        return bool(self._networks)
