"""Start exabgp 5 with one hot-path fix: no deepcopy of a route that does not say `next-hop self`.

exabgp's `Configuration.inject_change` hands every route given through the API to each named
neighbour through `Neighbor.remove_self`, which deep-copies the route first, whether or not it has
a `self` next hop to rewrite (`bgp/neighbor.py`). Profiled here, that deepcopy was most of exabgp's
CPU when a node announced 1000 blocks (about 0.7 ms per route and neighbour). bgpd never asks for
`next-hop self` (it writes the node address), so routes pass through unchanged; a route that does
use `self` still gets exabgp's own copy-and-rewrite. Nothing else is touched, and if the internals
moved (another exabgp version) the launcher leaves exabgp as it is.

Run as `python exabgp_launch.py server CONF` (stdlib + exabgp only, readable by exabgp's user).
"""

from __future__ import annotations

import sys
from typing import Any


def _patch() -> bool:
    try:
        from exabgp.bgp.neighbor import Neighbor
    except ImportError:
        return False
    original = getattr(Neighbor, "remove_self", None)
    if original is None:
        return False

    def remove_self(self: Any, changes: Any) -> Any:
        try:
            if not changes.nlri.nexthop.SELF:
                return changes
        except AttributeError:
            pass
        return original(self, changes)

    Neighbor.remove_self = remove_self  # type: ignore[method-assign]
    return True


def main() -> int:
    _patch()
    from exabgp.application.main import main as exabgp_main

    sys.argv[0] = "exabgp"
    return int(exabgp_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
