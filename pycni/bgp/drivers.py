"""bgpd's two other drivers: the exabgp config file, and the kernel routes it learned.

`ExaBgpConfig` treats exabgp.conf plus the running exabgp as its "dataplane": it renders the peer
set, writes the file atomically only when the text changed, starts exabgp the first time, and
reloads it (SIGUSR1) after a change. exabgp 5's reload keeps every neighbour whose definition is
unchanged (same session, same adj-RIB-out), re-establishes changed ones and removes deleted ones
(`reactor/loop.py:reload`), so adding a node never flaps the other sessions.

`LearnedRoutes` owns the kernel routes with our protocol number (RTPROT_BGPD, `ip route` shows
`proto 81` or `pycni-bgpd`): it dumps them on resync, replaces what differs and deletes what is not
desired, except while `hold_deletions` (our own graceful restart: routes from the previous run stay
until the peers have re-sent theirs). Once deletions are allowed they stay allowed. Routes are
compared on what we set (gateway, device, onlink, type), so kernel-filled fields never cause churn.
"""

from __future__ import annotations

import errno
from dataclasses import replace

import structlog

from pycni.bgp.exabgp_conf import SpeakerSettings, render, write_atomic
from pycni.bgp.exabgp_process import ExaBgp
from pycni.calc.bgp import BgpSpec
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
            changed = write_atomic(self.exa.conf_path, self._text, 0o600)
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
    return (r.dst, r.gateway, r.oif, r.onlink, r.type)


class LearnedRoutes:
    name = "bgp-routes"

    def __init__(self, nl: Netlink, *, proto: int = RTPROT_BGPD, table: int = MAIN_TABLE) -> None:
        self.nl = nl
        self.proto = proto
        self.table = table
        self.tracker: DeltaTracker[IPNetwork, tuple[object, ...]] = DeltaTracker()
        self._routes: dict[IPNetwork, Route] = {}
        self._kernel: dict[IPNetwork, Route] = {}
        self._resync = True
        self._ready = False
        self.hold_deletions = True
        self._released = False

    def set_spec(self, spec: BgpSpec) -> None:
        self._ready = spec.ready
        if not spec.ready:
            return
        self._routes = {d: replace(r, proto=self.proto, table=self.table) for d, r in spec.routes.items()}
        self.tracker.replace_desired({d: _norm(r) for d, r in self._routes.items()})
        if not spec.hold_deletions and not self._released:
            self._released = True
            log.info("route deletions allowed (peers in sync or restart window over)")
        self.hold_deletions = not self._released

    def queue_resync(self) -> None:
        self._resync = True

    def apply(self) -> bool:
        if not self._ready:
            return True
        if self._resync:
            kernel = {r.dst: r for r in self.nl.routes(table=self.table, proto=self.proto)}
            self._kernel = kernel
            self.tracker.replace_dataplane({d: _norm(r) for d, r in kernel.items()})
            self._resync = False
        ok = True
        for dst, _ in self.tracker.pending_updates():
            r = self._routes[dst]
            try:
                self.nl.route_replace(r)
            except NetlinkError as e:
                ok = False
                log.warning("route replace failed", dst=str(dst), via=str(r.gateway), dev=r.oif, error=str(e))
                continue
            self.tracker.on_dataplane_set(dst, _norm(r))
            self._kernel[dst] = r
            log.info("route replaced", dst=str(dst), via=str(r.gateway), dev=r.oif)
        if not self.hold_deletions:
            for dst, _ in self.tracker.pending_deletions():
                r = self._kernel.get(dst) or Route(dst=dst, proto=self.proto, table=self.table)
                try:
                    self.nl.route_delete(r)
                except NetlinkError as e:
                    if e.errno not in (errno.ESRCH, errno.ENOENT):
                        ok = False
                        log.warning("route delete failed", dst=str(dst), error=str(e))
                        continue
                self.tracker.on_dataplane_deleted(dst)
                self._kernel.pop(dst, None)
                log.info("route deleted", dst=str(dst))
        return ok
