"""How a FlannelSpec reaches the kernel: the Agent's bindings, in application order.

    LinkDriver (flannel.<VNI>) -> NeighTable -> FdbTable -> RouteTable(RTPROT_FLANNELD) -> IptablesChains

The device comes first (its neighbours, FDB entries and routes need it); neighbours and FDB entries
come before the routes "because the kernel would ARP for the gateway" (flannel's vxlan_network.go).
Each driver owns a well-defined set of kernel objects and sweeps only those: the permanent
neighbours and remote FDB entries on flannel.<VNI>, the main-table routes of protocol
RTPROT_FLANNELD, the chains FLANNEL-POSTRTG (nat) and FLANNEL-FWD (filter) and the jumps to them.
So a restart deletes nothing that is still wanted, and nothing that is not ours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pycni.agent import Binding
from pycni.calc.flannel import FlannelSpec
from pycni.constants import RTPROT_FLANNELD
from pycni.dataplane.fdb_table import FdbTable
from pycni.dataplane.iptables import IptablesChains
from pycni.dataplane.links import LinkDriver
from pycni.dataplane.neigh_table import NeighTable
from pycni.dataplane.route_table import RouteTable
from pycni.flannel import device

if TYPE_CHECKING:
    from pycni.flannel.daemon import Flanneld


def bindings(d: Flanneld, *, iptables: bool = True) -> list[Binding[FlannelSpec]]:
    assert d.config is not None
    nl = d.nl
    out: list[Binding[FlannelSpec]] = []
    tables: list[NeighTable | FdbTable | RouteTable] = []
    if d.config.backend.type == "vxlan":
        dev = d.config.backend.device
        mac = d.vtep_mac

        def resync_tables() -> None:
            for t in tables:
                t.queue_resync()

        links = LinkDriver(nl, name="flannel-link",
                           on_recreate=device.after_create(nl, resync=resync_tables,
                                                           tx_csum_off=d.opts.vxlan_tx_csum_off))
        nt = NeighTable(nl, [dev], name="flannel-neighs")
        ft = FdbTable(nl, [dev], name="flannel-fdb")
        tables += [nt, ft]
        out.append(Binding(links, lambda s: links.set_desired(device.devices(s, mac))))
        out.append(Binding(nt, lambda s: nt.set_desired(s.neighs)))
        out.append(Binding(ft, lambda s: ft.set_desired(s.fdbs)))
    rt = RouteTable(nl, proto=RTPROT_FLANNELD, name="flannel-routes")
    tables.append(rt)
    out.append(Binding(rt, lambda s: rt.set_desired(s.routes)))
    if iptables and (d.opts.ip_masq or d.opts.iptables_forward_rules):
        ch = IptablesChains(name="flannel-iptables")
        d.iptables = ch
        out.append(Binding(ch, lambda s: ch.set_desired(s.chains)))
    return out
