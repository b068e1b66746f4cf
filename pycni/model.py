"""Value types shared by every layer (the bottom of the import graph: it imports nothing of ours).

The address family is a value, not a copy of the code: everything that holds an address, a
network or an interface address takes either family through these aliases.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


# Parsing: a burst of a thousand BGP routes parses each prefix and next hop several times (the
# exabgp line, the learned-route key, its attributes); `ipaddress.ip_network` costs ~8 us here.
# The objects are immutable, so one object per text is shared; IPv4 takes a shorter path.

def parse_network(text: str) -> IPNetwork:
    """`ipaddress.ip_network(text)` (strict), memoised; raises ValueError as it does (for any type)."""
    return _network(text) if type(text) is str else ipaddress.ip_network(text)


def parse_address(text: str) -> IPAddress:
    """`ipaddress.ip_address(text)`, memoised; raises ValueError as it does (for any type)."""
    return _address(text) if type(text) is str else ipaddress.ip_address(text)


class _HashedIPv4Network(ipaddress.IPv4Network):
    """An IPv4Network whose hash is computed once (the stdlib's `__hash__` is Python code doing two
    int() conversions, ~0.8 us; bgpd's dicts of a thousand routes hash them several times per
    step). Same hash value and equality as the base class, so both kinds mix in any dict or set;
    same repr."""

    def __init__(self, address: Any, strict: bool = True) -> None:
        super().__init__(address, strict)
        self._hash = ipaddress.IPv4Network.__hash__(self)

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> Any:
        return ipaddress.IPv4Network, (str(self),)


_HashedIPv4Network.__name__ = _HashedIPv4Network.__qualname__ = "IPv4Network"  # repr as the stdlib's


@functools.lru_cache(maxsize=1 << 16)
def _network(text: str) -> IPNetwork:
    addr, slash, plen = text.partition("/")
    parts = addr.split(".")
    if slash and len(parts) == 4 and plen.isdigit() and all(_octet(p) for p in parts):
        a, b, c, d = (int(p) for p in parts)
        return _HashedIPv4Network(((a << 24) | (b << 16) | (c << 8) | d, int(plen)))
    return ipaddress.ip_network(text)


class _HashedIPv4Address(ipaddress.IPv4Address):
    """An IPv4Address whose hash is computed once (the stdlib's is `hash(hex(int(self._ip)))` in
    Python); same value, equality and repr as the base class."""

    __slots__ = ("_hash",)

    def __init__(self, address: Any) -> None:
        super().__init__(address)
        self._hash = ipaddress.IPv4Address.__hash__(self)

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> Any:
        return ipaddress.IPv4Address, (str(self),)


_HashedIPv4Address.__name__ = _HashedIPv4Address.__qualname__ = "IPv4Address"


@functools.lru_cache(maxsize=1 << 16)
def _address(text: str) -> IPAddress:
    a = ipaddress.ip_address(text)
    return _HashedIPv4Address(int(a)) if a.version == 4 else a


def _octet(p: str) -> bool:
    # what ipaddress accepts: 1-3 decimal digits, no leading zero, <= 255
    return p.isdigit() and len(p) <= 3 and (p == "0" or p[0] != "0") and int(p) <= 255 and p.isascii()
