"""Value types shared by every layer (the bottom of the import graph: it imports nothing of ours).

The address family is a value, not a copy of the code: everything that holds an address, a
network or an interface address takes either family through these aliases.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
