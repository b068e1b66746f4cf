"""Start exabgp 5 with two hot-path fixes: no deepcopy of a route that does not say `next-hop self`,
and no reactor sleep while queued API work is pending.

exabgp's `Configuration.inject_change` hands every route given through the API to each named
neighbour through `Neighbor.remove_self`, which deep-copies the route first, whether or not it has
a `self` next hop to rewrite (`bgp/neighbor.py`). Profiled here, that deepcopy was most of exabgp's
CPU when a node announced 1000 blocks (about 0.7 ms per route and neighbour). bgpd never asks for
`next-hop self` (it writes the node address), so routes pass through unchanged; a route that does
use `self` still gets exabgp's own copy-and-rewrite.

The reactor (`reactor/loop.py:run`) runs at most 50 steps of queued API work (`ASYNC.LIMIT`, one
step per prefix) per turn, then polls its sockets for `reactor.speed / 100` s (10 ms) unless a
command arrived or a peer asked to run again in that turn: it ignores that the API queue still
holds work. 1000 prefixes took 20 turns and ~0.2 s of pure sleep. With work pending the poll does
not wait (it still reads what is ready); idle, the loop sleeps exactly as before, so idle CPU is
unchanged.

Nothing else is touched, and if the internals moved (another exabgp version) the launcher leaves
that part of exabgp as it is.

Run as `python exabgp_launch.py server CONF` (stdlib + exabgp only, readable by exabgp's user).
"""

from __future__ import annotations

import os
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


def _patch_reactor() -> bool:
    try:
        from exabgp.reactor.loop import Reactor
    except ImportError:
        return False
    original = getattr(Reactor, "_wait_for_io", None)
    if original is None:
        return False

    def _wait_for_io(self: Any, sleeptime: int) -> Any:
        try:
            if sleeptime and not self.asynchronous.ready():
                sleeptime = 0  # API work queued: poll, do not sleep
        except AttributeError:
            pass
        return original(self, sleeptime)

    Reactor._wait_for_io = _wait_for_io  # type: ignore[method-assign]
    return True


def main() -> int:
    _patch()
    _patch_reactor()
    from exabgp.application.main import main as exabgp_main

    sys.argv[0] = "exabgp"
    prof_dir = os.environ.get("PYCNI_EXABGP_PROFILE")  # debugging: cProfile stats to DIR/exabgp-<pid>.prof
    if not prof_dir:
        return int(exabgp_main() or 0)
    import cProfile

    prof = cProfile.Profile()
    try:
        return int(prof.runcall(exabgp_main) or 0)
    finally:
        prof.dump_stats(os.path.join(prof_dir, f"exabgp-{os.getpid()}.prof"))


if __name__ == "__main__":
    sys.exit(main())
