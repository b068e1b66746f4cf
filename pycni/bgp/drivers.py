"""bgpd's two other drivers: the exabgp config file, and the kernel routes it learned.

`ExaBgpConfig` treats exabgp.conf plus the running exabgp as its "dataplane": it renders the peer
set, writes the file atomically only when the text changed, starts exabgp the first time, and
reloads it (SIGUSR1) after a change. exabgp 5's reload keeps every neighbour whose definition is
unchanged (same session, same adj-RIB-out), re-establishes changed ones and removes deleted ones
(`reactor/loop.py:reload`), so adding a node never flaps the other sessions.

`LearnedRoutes` owns the kernel routes with our protocol number (RTPROT_BGPD, `ip route` shows
`proto 81` or `pycni-bgpd`): it dumps them on resync, replaces what differs and deletes what is not
desired (through a raw rtnetlink socket when given one: see `LearnedRoutes.__init__`), except
while `hold_deletions` (our own graceful restart: routes from the previous run stay until the peers
have re-sent theirs). Once deletions are allowed they stay allowed. Routes are
compared on what we set (gateway, device, type), so kernel-filled fields never cause churn.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import replace

import structlog

from pycni.atomic import write_atomic
from pycni.bgp.exabgp_conf import SpeakerSettings, render
from pycni.bgp.exabgp_process import ExaBgp
from pycni.bgp.route_batch import RouteWrite, write_routes
from pycni.calc.bgp import BgpSpec
from pycni.cni.rtnl import Rtnl
from pycni.constants import MAIN_TABLE, RTPROT_BGPD
from pycni.dataplane.delta import DeltaTracker
from pycni.dataplane.netlink import IPNetwork, Netlink, NetlinkError, Route
from pycni.errors import Invalid

log = structlog.get_logger(__name__)


class ExaBgpConfig:
    name = "exabgp-config"

    def __init__(self, exa: ExaBgp, *, hold_time: int = 90, graceful_restart: int = 120) -> None:
        self.exa = exa
        self.hold_time = hold_time
        self.graceful_restart = graceful_restart
        self._text: str | None = None
        self._written: str | None = None
        self._bind: str = ""

    def set_spec(self, spec: BgpSpec) -> None:
        if not spec.ready:
            return
        settings = SpeakerSettings(
            router_id=spec.router_id, local_address=spec.local_address, local_as=spec.local_as,
            relay_argv=self.exa.relay_argv(), hold_time=self.hold_time,
            graceful_restart=self.graceful_restart,
        )
        try:
            self._text = render(settings, spec.peers)
        except Invalid as e:
            log.error("bad bgp configuration", error=str(e))
            return
        self._bind = spec.local_address

    def queue_resync(self) -> None:
        self._written = None  # re-check the file (and exabgp) on the next apply

    def apply(self) -> bool:
        if self._text is None:
            return True
        changed = False
        if self._written != self._text:
            changed = write_atomic(self.exa.conf_path, self._text, mode=0o600)
            self.exa.chown(self.exa.conf_path, 0o600)
            self._written = self._text
        if self.exa.proc is None or self.exa.bind != self._bind:
            self.exa.bind = self._bind
            self.exa.start()
            if not self.exa.wait_connected(10.0):
                log.warning("exabgp api not connected yet")
                return False
            return True
        if self.exa.ensure_running():
            return self.exa.wait_connected(10.0)
        if changed:
            self.exa.reload()
        return True


def _norm(r: Route) -> tuple[object, ...]:
    # onlink is implied by our tunl0 routes and not in the fast dump; compare what identifies a path
    return (r.dst, r.gateway, r.oif, r.type)


class LearnedRoutes:
    name = "bgp-routes"

    def __init__(self, nl: Netlink, *, proto: int = RTPROT_BGPD, table: int = MAIN_TABLE,
                 fast: Rtnl | None = None) -> None:
        """`fast`: a raw rtnetlink socket in the same netns (pycni.cni.rtnl) for dumps and plain
        unicast writes: pyroute2 costs 1.4-5 ms per route here, the kernel ~50 us, and a peer may
        send a thousand routes at once. Onlink (tunl0) routes still go through `nl`."""
        self.nl = nl
        self.fast = fast
        self.proto = proto
        self.table = table
        self.tracker: DeltaTracker[IPNetwork, tuple[object, ...]] = DeltaTracker()
        self._routes: dict[IPNetwork, Route] = {}
        self._spec_routes: Mapping[IPNetwork, Route] = {}  # the last spec's routes, as given
        self._kernel: dict[IPNetwork, Route] = {}
        self._resync = True
        self._ready = False
        self.hold_deletions = True
        self._released = False
        self._ifindex: dict[str, int] = {}

    def set_spec(self, spec: BgpSpec) -> None:
        self._ready = spec.ready
        if not spec.ready:
            return
        proto, table = self.proto, self.table
        # Patched from the previous spec: calc keeps an unchanged prefix's Route object, so only the
        # prefixes whose object changed are looked at (a burst of UPDATEs made this a full pass of
        # the table per step). Removed ones come from a set difference (no rehashing).
        new, prev = spec.routes, self._spec_routes
        for d, r in new.items():
            if prev.get(d) is r:
                continue
            if (r.proto, r.table) != (proto, table):
                r = replace(r, proto=proto, table=table)
            self._routes[d] = r
            self.tracker.set_desired(d, _norm(r))
        if len(self._routes) != len(new):  # every key of `new` is in _routes now: extra ones went
            for d in set(self._routes).difference(new):
                del self._routes[d]
                self.tracker.delete_desired(d)
        self._spec_routes = new
        if not spec.hold_deletions and not self._released:
            self._released = True
            log.info("route deletions allowed (peers in sync or restart window over)")
        self.hold_deletions = not self._released

    def queue_resync(self) -> None:
        self._resync = True

    def _dump(self) -> dict[IPNetwork, Route]:
        if self.fast is None or self.table != MAIN_TABLE:
            return {r.dst: r for r in self.nl.routes(table=self.table, proto=self.proto)}
        names = {li.index: li.name for li in self.fast.links()}
        self._ifindex = {n: i for i, n in names.items()}
        out: dict[IPNetwork, Route] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            for ri in self.fast.routes(family):
                if ri.proto != self.proto:
                    continue
                gw = ipaddress.ip_address(ri.gateway) if ri.gateway else None
                out[ri.dst] = Route(dst=ri.dst, gateway=gw, oif=names.get(ri.oif), proto=ri.proto,
                                    table=ri.table, scope=ri.scope)
        return out

    def _replace(self, r: Route) -> None:
        if not self._raw(r):
            self.nl.route_replace(r)
            return
        assert self.fast is not None
        idx = self._oif(r)
        if idx is None:
            raise NetlinkError(f"no such device: {r.oif}", errno.ENODEV)
        self.fast.route_add(r.dst, oif=idx, gateway=r.gateway, proto=self.proto, scope=r.scope, replace=True)

    def _raw(self, r: Route) -> bool:
        """Whether the raw socket writes this route: plain unicast, main table, with a device."""
        return bool(self.fast is not None and not r.onlink and r.type == "unicast" and r.table == MAIN_TABLE
                    and r.oif)

    def _oif(self, r: Route) -> int | None:
        """The route's device index (cached by name), or None when there is no such device."""
        assert self.fast is not None and r.oif
        idx = self._ifindex.get(r.oif)
        if idx is None:
            li = self.fast.link_get(r.oif)
            if li is None:
                return None
            idx = self._ifindex[r.oif] = li.index
        return idx

    def _delete(self, r: Route) -> None:
        if self.fast is None or r.table != MAIN_TABLE:
            self.nl.route_delete(r)
        else:
            self.fast.route_del(r.dst, proto=self.proto)

    def _bulk(self, r: Route) -> RouteWrite | None:
        """The batched write for a plain unicast main-table route with a device, else None."""
        if not self._raw(r):
            return None
        idx = self._oif(r)
        if idx is None:
            return None  # the single path reports "no such device"
        return RouteWrite(dst=r.dst, proto=self.proto, oif=idx, gateway=r.gateway, scope=r.scope)

    def apply(self) -> bool:
        if not self._ready:
            return True
        if self._resync:
            kernel = self._dump()
            self._kernel = kernel
            self.tracker.replace_dataplane({d: _norm(r) for d, r in kernel.items()})
            self._resync = False
        ok = True
        n_set = n_del = 0
        # Bulk first (one send per ~500 routes, see route_batch), then whatever needs pyroute2.
        single: list[Route] = []
        bulk: list[tuple[Route, RouteWrite]] = []
        for dst, _ in self.tracker.pending_updates():
            r = self._routes[dst]
            w = self._bulk(r)
            if w is None:
                single.append(r)
            else:
                bulk.append((r, w))
        if bulk:
            assert self.fast is not None
            for (r, _), err in zip(bulk, write_routes(self.fast, [w for _, w in bulk]), strict=True):
                if err:
                    single.append(r)  # retried one by one: the error is logged with its route
                    continue
                self.tracker.on_dataplane_set(r.dst, _norm(r))
                self._kernel[r.dst] = r
                n_set += 1
            log.debug("routes written in bulk", routes=len(bulk))
        for r in single:
            dst = r.dst
            try:
                self._replace(r)
            except NetlinkError as e:
                ok = False
                self._ifindex.pop(r.oif or "", None)
                log.warning("route replace failed", dst=str(dst), via=str(r.gateway), dev=r.oif, error=str(e))
                continue
            self.tracker.on_dataplane_set(dst, _norm(r))
            self._kernel[dst] = r
            n_set += 1
            log.debug("route replaced", dst=str(dst), via=str(r.gateway), dev=r.oif)
        if not self.hold_deletions:
            gone = [(dst, self._kernel.get(dst) or Route(dst=dst, proto=self.proto, table=self.table))
                    for dst, _ in self.tracker.pending_deletions()]
            if self.fast is not None and self.table == MAIN_TABLE and gone:
                dels = [RouteWrite(dst=d, proto=self.proto, delete=True) for d, _ in gone]
                errs = write_routes(self.fast, dels)
            else:
                errs = [-1] * len(gone)  # -1: not tried in bulk
            for (dst, r), err in zip(gone, errs, strict=True):
                if err == -1 or (err and err not in (errno.ESRCH, errno.ENOENT)):
                    try:
                        self._delete(r)
                    except NetlinkError as e:
                        if e.errno not in (errno.ESRCH, errno.ENOENT):
                            ok = False
                            log.warning("route delete failed", dst=str(dst), error=str(e))
                            continue
                self.tracker.on_dataplane_deleted(dst)
                self._kernel.pop(dst, None)
                n_del += 1
        if n_set or n_del:
            log.info("routes applied", replaced=n_set, deleted=n_del, total=len(self._routes))
        return ok
