"""The encapsulation decision for a route to a remote node's block: direct, IPIP or VXLAN.

This is the one place that decides CrossSubnet, shared by felix (which programs IPIP and VXLAN
pool routes) and bgpd (which programs no-encap pool routes and must make the same choice when it
learns a route in an encapsulated pool). It is pure: the pool, this node's underlay address *with
its prefix* (the prefix defines "my subnet"), and the remote node's underlay address.

Calico's rule (confd's `bgp_processor.go`, felix's `route_mgr.go`): Always encapsulates every
route; CrossSubnet encapsulates only when the next hop is outside the local subnet, in BIRD's words
`if (bgp_next_hop ~ <localSubnet>) then krt_tunnel=""; else krt_tunnel="tunl0";`; Never (or no
pool) sends directly via the underlay.

Route ownership (modern Calico, `programClusterRoutes`): felix programs routes for blocks in IPIP
and VXLAN pools, including the same-subnet direct routes CrossSubnet asks for; bgpd programs the
routes of no-encap pools. `owner(pool)` says which.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal

from pycni.constants import IPIP_OVERHEAD, VXLAN_OVERHEAD
from pycni.datastore.calico import ENCAP_ALWAYS, ENCAP_CROSS_SUBNET, ENCAP_NEVER, IPPool
from pycni.model import IPAddress, IPInterface, IPNetwork

RouteKind = Literal["direct", "ipip", "vxlan"]
Owner = Literal["felix", "bgpd"]



def same_subnet(local_ip_iface: IPInterface | None, remote_ip: IPAddress | None) -> bool:
    """Whether `remote_ip` lies in the subnet of this node's underlay address (unknown: no)."""
    if local_ip_iface is None or remote_ip is None:
        return False
    if local_ip_iface.version != remote_ip.version:
        return False
    return remote_ip in local_ip_iface.network


def _mode_applies(mode: str, local_ip_iface: IPInterface | None, remote_ip: IPAddress | None) -> bool:
    if mode == ENCAP_ALWAYS:
        return True
    if mode == ENCAP_CROSS_SUBNET:
        return not same_subnet(local_ip_iface, remote_ip)
    return False


def route_kind(
    pool: IPPool | None, local_ip_iface: IPInterface | None, remote_node_ip: IPAddress | None
) -> RouteKind:
    """How to reach a remote node's block in `pool`: "direct", "ipip" or "vxlan".

    >>> from pycni.datastore.calico import IPPool, Meta
    >>> p = IPPool.from_spec(Meta("p"), {"cidr": "10.244.0.0/16", "ipipMode": "CrossSubnet"})
    >>> me = ipaddress.ip_interface("10.99.0.11/24")
    >>> ip = ipaddress.ip_address
    >>> route_kind(p, me, ip("10.99.0.12")), route_kind(p, me, ip("10.99.1.13"))
    ('direct', 'ipip')
    """
    if pool is None:
        return "direct"
    if pool.ipip_mode != ENCAP_NEVER and _mode_applies(pool.ipip_mode, local_ip_iface, remote_node_ip):
        return "ipip"
    if pool.vxlan_mode != ENCAP_NEVER and _mode_applies(pool.vxlan_mode, local_ip_iface, remote_node_ip):
        return "vxlan"
    return "direct"


def owner(pool: IPPool | None) -> Owner:
    """Who programs the kernel routes for a pool's blocks: felix (IPIP, VXLAN) or bgpd (no-encap)."""
    if pool is not None and pool.encapsulation in ("ipip", "vxlan"):
        return "felix"
    return "bgpd"


def pool_for(net: IPNetwork | IPAddress, pools: Iterable[IPPool]) -> IPPool | None:
    """The pool containing an address or block (the most specific one when pools nest)."""
    best: IPPool | None = None
    for p in pools:
        if p.cidr.version != net.version:
            continue
        if isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network):
            inside = net.subnet_of(p.cidr)  # type: ignore[arg-type]
        else:
            inside = net in p.cidr
        if inside and (best is None or p.cidr.prefixlen > best.cidr.prefixlen):
            best = p
    return best


def tunnel_mtu(underlay_mtu: int, kind: RouteKind, override: int = 0) -> int:
    """MTU for a tunnel device or a workload behind it: the underlay minus the header, or the override."""
    if override:
        return override
    if kind == "ipip":
        return underlay_mtu - IPIP_OVERHEAD
    if kind == "vxlan":
        return underlay_mtu - VXLAN_OVERHEAD
    return underlay_mtu
