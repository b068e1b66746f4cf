"""How a FelixSpec reaches the kernel: the driver list, in application order.

tunnels (tunl0, vxlan.calico) -> VXLAN neighbours -> VXLAN FDB -> routes (proto 80) -> sysctls
-> natOutgoing chain. Devices come first because neighbours, FDB entries and routes name them;
sysctls after routes because a pod's veth may appear between two applies (both drivers keep such
entries pending quietly until the device exists).

The route driver is the shared `RouteTable(proto=RTPROT_FELIX)` with a grace period for new
devices: the CNI plugin adds a pod's /32 before the WorkloadEndpoint reaches us, and that route
must not be swept in between (Calico's IfaceGrace).
"""

from __future__ import annotations

from typing import Any

from pycni.agent import Binding
from pycni.calc.felix import FelixConfig, FelixSpec
from pycni.calico.nat import NatDriver
from pycni.calico.tunnels import TunnelDriver
from pycni.constants import CALI_VXLAN_DEV
from pycni.dataplane.fdb_table import FdbTable
from pycni.dataplane.neigh_table import NeighTable
from pycni.dataplane.route_table import RouteTable
from pycni.dataplane.sysctls import Sysctls

#: Seconds a new interface's routes are left alone (the CNI plugin's pre-added /32).
IFACE_GRACE = 10.0


def felix_bindings(
    netlink: Any,
    cfg: FelixConfig,
    *,
    iptables: bool = True,
    grace: float = IFACE_GRACE,
    netns: str | None = None,
) -> list[Binding[FelixSpec]]:
    """`netns`: the named namespace `netlink` speaks to, for the iptables tools (tests)."""
    tunnels = TunnelDriver(netlink)
    neighs = NeighTable(netlink, [CALI_VXLAN_DEV], name="vxlan-neighs")
    fdbs = FdbTable(netlink, [CALI_VXLAN_DEV], name="vxlan-fdb")
    routes = RouteTable(netlink, proto=cfg.proto, grace=grace, name="routes-felix")
    sysctls = Sysctls(netlink)
    out: list[Binding[FelixSpec]] = [
        Binding(tunnels, lambda s: tunnels.set_desired(s.tunnels)),
        Binding(neighs, lambda s: neighs.set_desired(s.neighs)),
        Binding(fdbs, lambda s: fdbs.set_desired(s.fdbs)),
        Binding(routes, lambda s: routes.set_desired(s.routes)),
        Binding(sysctls, lambda s: sysctls.set_desired(s.sysctls)),
    ]
    if iptables:
        nat = NatDriver(netns=netns)
        out.append(Binding(nat, lambda s: nat.set_desired(s.nat)))
    return out
