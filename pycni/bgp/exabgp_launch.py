"""Start exabgp 5 with six hot-path fixes: no deepcopy of a route that does not say `next-hop self`,
no reactor sleep while queued API work is pending, queued API work run without an event loop, one
shared Family object (and index) per address family, UPDATEs' prefixes sorted by a key, and
Nagle off on the sessions it dials.

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

Queued API work (`reactor/asynchronous.py:ASYNC.run`) is a generator per command that yields once
per prefix; exabgp runs it through `asyncio.run`, a new event loop on every reactor turn, for 50
yields at most. When every queued item is a plain generator (all the commands bgpd sends), the
launcher steps them directly for up to API_TURN_BUDGET (20 ms) per turn, then gives the peers their
turn as before; an exception is logged and answered to the service as exabgp does. Coroutines
still take exabgp's own path.

`NLRI.family()` (`protocol/family.py`) builds a new Family (two enum lookups) on every call, about
ten times per prefix and neighbour between the API and the UPDATE: 18% of n1's exabgp CPU in a
1000-block announce. Every caller only reads it (`afi_safi()`, comparisons, `str`), so one object
per (AFI, SAFI) is returned instead; likewise `Family.index()`'s bytes, formatted anew per call.

`Update._split_nlris` sorts the prefixes of every UPDATE it builds with `sorted(self.nlris)`, whose
comparisons (`NLRI.__lt__`) each compute two `index()` byte strings: ~20 per prefix for a
thousand, the top of n1's profile after the fixes above. The launcher sorts them first with the
index as key (the same order: sorting is stable and `__lt__` compares exactly that key), so
exabgp's own sort finds them in order (one comparison per prefix).

exabgp disables Nagle's algorithm on the connections it accepts (`network/incoming.py`) but not
on those it dials (the call is commented out in `network/outgoing.py`): on such a session an
UPDATE written while the previous segment (a KEEPALIVE, say) waits for its delayed ACK is held
back until that ACK, up to tens of ms. A single route took either ~11 ms or ~33 ms end to end
depending on which side's connection won the collision. TCP_NODELAY is set once connected.

Nothing else is touched, and if the internals moved (another exabgp version) the launcher leaves
that part of exabgp as it is.

Run as `python exabgp_launch.py server CONF` (stdlib + exabgp only, readable by exabgp's user).
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
import time
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


#: How long one reactor turn may spend on queued API work before the peers get their turn again (s).
API_TURN_BUDGET = 0.02


def _patch_async() -> bool:
    try:
        from exabgp.logger import log
        from exabgp.reactor.asynchronous import ASYNC
    except ImportError:
        return False
    original = getattr(ASYNC, "run", None)
    if original is None or not hasattr(ASYNC, "_run_async") or not hasattr(ASYNC(), "_async"):
        return False

    def run(self: Any) -> Any:
        queue = self._async
        if not queue:
            return False
        if any(not inspect.isgenerator(cb) for _, cb in queue):
            return original(self)  # coroutines: exabgp's own event-loop path
        deadline = time.monotonic() + API_TURN_BUDGET
        steps = 0
        uid, callback = queue.popleft()
        while True:
            try:
                next(callback)
            except StopIteration:
                if not queue:
                    return False
                uid, callback = queue.popleft()
            except Exception as exc:  # noqa: BLE001 - as exabgp does: log, answer the service, go on
                log.error(lambda uid=uid, exc=exc: f"async | {uid} | problem with function: {exc}", "reactor")
                self._notify_error(uid)
                if not queue:
                    return False
                uid, callback = queue.popleft()
            steps += 1
            if steps % 64 == 0 and time.monotonic() >= deadline:
                queue.appendleft((uid, callback))
                return True

    ASYNC.run = run  # type: ignore[method-assign]
    return True


def _patch_family() -> bool:
    try:
        from exabgp.protocol.family import Family
    except ImportError:
        return False
    if not hasattr(Family, "family"):
        return False
    made: dict[tuple[int, int], Any] = {}

    def family(self: Any) -> Any:
        key = (int(self.afi), int(self.safi))
        f = made.get(key)
        if f is None:
            f = made[key] = Family(self.afi, self.safi)
        return f

    Family.family = family  # type: ignore[method-assign]

    index_of: dict[tuple[int, int], bytes] = {}

    def index(self: Any) -> bytes:
        key = (int(self.afi), int(self.safi))
        b = index_of.get(key)
        if b is None:
            b = index_of[key] = f"{self.afi:02x}{self.safi:02x}".encode()
        return b

    Family.index = index  # type: ignore[method-assign]
    return True


def _patch_update_sort() -> bool:
    try:
        from exabgp.bgp.message.update import Update
    except ImportError:
        return False
    original = getattr(Update, "_split_nlris", None)
    if original is None:
        return False

    def _split_nlris(self: Any, negotiated: Any) -> Any:
        try:  # the same order exabgp's sorted() gives (NLRI.__lt__ compares index()), one index each
            self.nlris = sorted(self.nlris, key=lambda n: n.index())
        except Exception:  # noqa: BLE001 - exabgp sorts (and reports) as it always did
            pass
        return original(self, negotiated)

    Update._split_nlris = _split_nlris  # type: ignore[method-assign]
    return True


def _patch_nodelay() -> bool:
    try:
        from exabgp.reactor.network.outgoing import Outgoing
    except ImportError:
        return False
    original = getattr(Outgoing, "success", None)
    if original is None:
        return False

    def success(self: Any) -> Any:
        try:
            self.io.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        return original(self)

    Outgoing.success = success  # type: ignore[method-assign]
    return True


def main() -> int:
    _patch()
    _patch_reactor()
    _patch_async()
    _patch_family()
    _patch_update_sort()
    _patch_nodelay()
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
