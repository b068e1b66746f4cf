"""How a FelixSpec reaches the kernel: the driver list, in application order.

links (tunl0, vxlan.calico) -> VXLAN neighbours -> VXLAN FDB -> routes (proto 80) -> sysctls ->
natOutgoing chain. Devices come first because neighbours, FDB entries and routes name them; when
the link driver has to (re)create a device (deleted by hand, or its VNI/port/local changed),
everything the kernel kept on it is gone, so it asks the neighbour, FDB and route drivers to
re-read the kernel at once. Sysctls come after routes because a pod's veth may appear between two
applies (both drivers keep such entries pending quietly until the device exists).

All shared `pycni.dataplane` drivers: `LinkDriver`, `NeighTable`/`FdbTable` on vxlan.calico,
`RouteTable(proto=RTPROT_FELIX)` with a grace period for new devices (the CNI plugin adds a pod's
/32 before the WorkloadEndpoint reaches us, and that route must not be swept in between: Calico's
IfaceGrace), `Sysctls`, `IptablesChains`.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import structlog

from pycni.agent import Binding
from pycni.calc.felix import FelixConfig, FelixSpec, TunnelSpec
from pycni.calico.nat import CHAIN, nat_chain
from pycni.constants import CALI_VXLAN_DEV, IPIP_DEV
from pycni.dataplane.fdb_table import FdbTable
from pycni.dataplane.iptables import IptablesChains
from pycni.dataplane.links import Device, LinkDriver
from pycni.dataplane.neigh_table import NeighTable
from pycni.dataplane.netlink import NetlinkError, VxlanInfo
from pycni.dataplane.route_table import RouteTable
from pycni.dataplane.sysctls import Sysctls

log = structlog.get_logger(__name__)

#: Seconds a new interface's routes are left alone (the CNI plugin's pre-added /32).
IFACE_GRACE = 10.0


def device_for(t: TunnelSpec) -> Device:
    addrs = (ipaddress.IPv4Interface(f"{t.address}/32"),) if t.address is not None else ()
    if t.kind == "vxlan":
        vx = VxlanInfo(vni=t.vni, port=t.port, local=t.local, underlay=t.underlay, learning=False)
        return Device(name=t.name, kind="vxlan", mtu=t.mtu, addrs=addrs, vxlan=vx, mac=t.mac)
    return Device(name=t.name, kind="ipip", mtu=t.mtu, addrs=addrs)


class TunnelSweep:
    """On the first apply, removes felix's tunnel devices the spec no longer wants.

    `LinkDriver` deletes only devices it created in this process; a felix restarted after VXLAN or
    IPIP was switched off would otherwise leave the old `vxlan.calico` (with its routes' next hops)
    or tunl0's address behind. Mark-and-sweep by name: these two names are felix's alone.
    """

    name = "tunnel-sweep"
    OWNED = (IPIP_DEV, CALI_VXLAN_DEV)

    def __init__(self, nl: Any) -> None:
        self.nl = nl
        self._wanted: set[str] = set()
        self._done = False

    def set_desired(self, names: set[str]) -> None:
        self._wanted = set(names)

    def queue_resync(self) -> None:
        """Only the first apply sweeps; later removals are LinkDriver's."""

    def apply(self) -> bool:
        if self._done:
            return True
        try:
            for name in self.OWNED:
                if name in self._wanted or self.nl.link(name) is None:
                    continue
                if name == CALI_VXLAN_DEV:
                    self.nl.link_delete(name)
                    log.info("stale tunnel device deleted", dev=name)
                else:
                    for a in self.nl.addrs(name):
                        self.nl.addr_delete(name, a)
                        log.info("stale tunnel address removed", dev=name, addr=str(a))
        except NetlinkError as e:
            log.warning("tunnel sweep failed", error=str(e), errno=e.errno)
            return False
        self._done = True
        return True


def felix_bindings(
    netlink: Any,
    cfg: FelixConfig,
    *,
    iptables: bool = True,
    grace: float = IFACE_GRACE,
    netns: str | None = None,
) -> list[Binding[FelixSpec]]:
    """`netns`: the named namespace `netlink` speaks to, for the iptables tools (tests)."""
    neighs = NeighTable(netlink, [CALI_VXLAN_DEV], name="vxlan-neighs")
    fdbs = FdbTable(netlink, [CALI_VXLAN_DEV], name="vxlan-fdb")
    routes = RouteTable(netlink, proto=cfg.proto, grace=grace, name="routes-felix")
    sysctls = Sysctls(netlink)

    def recreated(_name: str) -> None:
        for d in (neighs, fdbs, routes):
            d.queue_resync()

    links = LinkDriver(netlink, name="tunnels", on_recreate=recreated)
    sweep = TunnelSweep(netlink)
    out: list[Binding[FelixSpec]] = [
        Binding(sweep, lambda s: sweep.set_desired({t.name for t in s.tunnels})),
        Binding(links, lambda s: links.set_desired([device_for(t) for t in s.tunnels])),
        Binding(neighs, lambda s: neighs.set_desired(s.neighs)),
        Binding(fdbs, lambda s: fdbs.set_desired(s.fdbs)),
        Binding(routes, lambda s: routes.set_desired(s.routes)),
        Binding(sysctls, lambda s: sysctls.set_desired(s.sysctls)),
    ]
    if iptables:
        chains = IptablesChains(name="nat-outgoing", netns=netns, sweep_prefixes=(CHAIN,))
        out.append(Binding(chains, lambda s: chains.set_desired([nat_chain(s.nat)])))
    return out
