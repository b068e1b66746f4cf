"""RouteTable: the routes of one writer (one route protocol number) in one table, reconciled.

Ownership is by mark, not by memory: every route we write carries `proto`, and a resync dumps only
routes with that protocol, so a restarted daemon deletes its stale routes without history and never
touches anyone else's (the kernel's connected routes, DHCP's default route, another pycni daemon's
routes: each writer has its own number, see `pycni.constants`). A route's identity is its key
(table, dst, metric): desiring a route whose key another protocol holds replaces it, as the kernel
would (`ip route replace`), which is how a stale pre-existing route is taken over.

Routes through a device that does not exist yet stay pending quietly; they are written once it
appears (the Agent retries while `apply()` returns False). With `grace` > 0, a route of ours through
a device first seen less than `grace` seconds ago is not deleted: the CNI plugin pre-adds a pod's
/32 before the datastore tells felix about the pod, and deleting it in between would cut the pod
off (Calico's "IfaceGrace").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from pycni.constants import MAIN_TABLE, RT_PROTO_NAMES
from pycni.dataplane.netlink import IPNetwork, Netlink, Route
from pycni.dataplane.tracked import TrackedDriver
from pycni.testing.clock import Clock, SystemClock

IPV6_DEFAULT_METRIC = 1024

RouteKey = tuple[int, IPNetwork, int]


def normalise(route: Route, *, proto: int, table: int) -> Route:
    """A desired route as the kernel will report it: our proto and table; no device, gateway or
    source on blackhole/unreachable routes."""
    r = replace(route, proto=proto, table=table)
    if r.type != "unicast":
        r = replace(r, oif=None, gateway=None, onlink=False, src=None)
    if r.dst.version == 6 and r.metric == IPV6_DEFAULT_METRIC:
        r = replace(r, metric=0)  # the adapter reports the kernel's default as 0
    return r


def equivalent(want: Route, have: Route) -> bool:
    """Whether the kernel's `have` is what we asked for with `want`: a route given by gateway only
    comes back with the device the kernel resolved, which is not a difference."""
    if want.oif is None and want.type == "unicast":
        have = replace(have, oif=None)
    return want == have


class RouteTable(TrackedDriver[RouteKey, Route]):
    kind = "route"

    def __init__(
        self,
        nl: Netlink,
        *,
        proto: int,
        table: int = MAIN_TABLE,
        name: str | None = None,
        grace: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(nl, name or f"routes-{RT_PROTO_NAMES.get(proto, proto)}")
        self.proto = proto
        self.table = table
        self.grace = grace
        self._clock = clock or SystemClock()
        self._links: set[str] = set()
        self._first_seen: dict[str, float] = {}

    def set_desired(self, routes: Iterable[Route] | Mapping[Any, Route]) -> None:
        """The whole desired set (no I/O). Routes take this table's proto and table number."""
        items = routes.values() if isinstance(routes, Mapping) else routes
        desired: dict[RouteKey, Route] = {}
        for r in items:
            n = normalise(r, proto=self.proto, table=self.table)
            if n.key in desired and desired[n.key] != n:
                self._log.debug("duplicate desired route, last wins", dst=str(n.dst))
            desired[n.key] = n
        self.tracker.replace_desired(desired)

    def desired(self) -> list[Route]:
        return list(self.tracker.desired.values())

    # -- hooks -----------------------------------------------------------------------------
    def _dump(self) -> dict[RouteKey, Route]:
        out: dict[RouteKey, Route] = {}
        for r in self.nl.routes(table=self.table, proto=self.proto):
            want = self.tracker.desired.get(r.key)
            out[r.key] = want if want is not None and equivalent(want, r) else r
        return out

    def _begin_apply(
        self, deletions: list[tuple[RouteKey, Route]], updates: list[tuple[RouteKey, Route]]
    ) -> None:
        if not any(r.oif for _, r in deletions + updates):
            return
        now = self._clock.now()
        first = not self._first_seen
        self._links = {lk.name for lk in self.nl.links()}
        for name in self._links:
            # Devices present at our first look are old; later ones start their grace now.
            self._first_seen.setdefault(name, now - self.grace if first else now)
        for gone in set(self._first_seen) - self._links:
            del self._first_seen[gone]

    def _blocked(self, key: RouteKey, value: Route) -> str | None:
        if value.oif and value.oif not in self._links:
            return "device missing"
        return None

    def _may_delete(self, key: RouteKey, value: Route) -> bool:
        if self.grace <= 0 or not value.oif or value.oif not in self._first_seen:
            return True
        return self._clock.now() - self._first_seen[value.oif] >= self.grace

    def _write(self, key: RouteKey, value: Route) -> bool | None:
        self.nl.route_replace(value)
        return True

    def _remove(self, key: RouteKey, value: Route) -> None:
        self.nl.route_delete(value)

    def _fields(self, key: Any, value: Route) -> dict[str, Any]:
        f: dict[str, Any] = {"dst": str(value.dst)}
        if value.type != "unicast":
            f["type"] = value.type
        if value.gateway is not None:
            f["via"] = str(value.gateway)
        if value.oif:
            f["dev"] = value.oif
        return f

    def _summary_fields(self) -> dict[str, Any]:
        return {"proto": self.proto, "table": self.table}
