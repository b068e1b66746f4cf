"""flannel_spec: the whole desired kernel state of a flannel node, from the leases alone.

Pure and memoryless: the same leases give the same Spec, whatever order they arrived in and
whatever the kernel holds. What flanneld does imperatively per event (vxlan_network.go,
route_network.go) becomes a level-triggered description here:

- host-gw: per remote host-gw lease, `<subnet> via <PublicIP> dev <ext iface>`. A peer that is not
  on one of our connected underlay networks cannot be a gateway (host-gw needs one L2 segment, as
  seed 001 explains); it is skipped with a warning instead of failing forever in the kernel.
- vxlan: the device `flannel.<VNI>` holding `<own subnet>.0/32`, and per remote vxlan lease, in
  flannel's order, a permanent neighbour `<subnet>.0 lladdr <VtepMAC>` (so the kernel never ARPs
  over the tunnel), an FDB entry `<VtepMAC> dst <PublicIP>` (which underlay host gets the frame),
  and the route `<subnet> via <subnet>.0 dev flannel.<VNI> onlink` ("onlink" because the gateway
  is not in any prefix of the device; the route goes last because the kernel would ARP for it).
- DirectRouting: a peer on one of our connected underlay networks gets the host-gw route instead
  of the three vxlan entries; flannel asks the kernel (`RouteGet(PublicIP)` has no gateway), we
  take the connected networks as an input so the calculation stays pure.
- ip-masq: flannel's FLANNEL-POSTRTG rules (pod traffic leaving the cluster network is
  masqueraded, pod-to-pod is not) and the FLANNEL-FWD accept rules.
Leases of another backend type are ignored, as flannel does ("Ignoring non-vxlan subnet").
Every route carries RTPROT_FLANNELD, so RouteTable sweeps stale ones by mark after a restart.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import structlog

from pycni.constants import RTPROT_FLANNELD, VXLAN_OVERHEAD
from pycni.dataplane.netlink import Fdb, Neigh, Route
from pycni.datastore.flannel import DEFAULT_PREFIX, Lease, NetConfig, decode_lease, subnets_prefix
from pycni.datastore.snapshot import Snapshot
from pycni.errors import Invalid

log = structlog.get_logger(__name__)

KUBE_PROXY_MARK = "0x4000/0x4000"
MASQ_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"
MASQ_COMMENT = '-m comment --comment "flanneld masq"'
FWD_COMMENT = '-m comment --comment "flanneld forward"'


@dataclass(frozen=True)
class NodeContext:
    """Facts about this node the spec depends on (fixed for the daemon's life)."""

    config: NetConfig
    own: Lease
    ext_iface: str
    ext_ip: ipaddress.IPv4Address
    ext_mtu: int = 1500
    local_networks: tuple[ipaddress.IPv4Network, ...] = ()
    ip_masq: bool = False
    random_fully: bool = True
    forward_rules: bool = True
    prefix: str = DEFAULT_PREFIX

    @property
    def mtu(self) -> int:
        """FLANNEL_MTU: the pods' MTU (underlay minus 50 for vxlan, flannel's encapOverhead)."""
        if self.config.backend.type == "vxlan":
            return (self.config.backend.mtu or self.ext_mtu) - VXLAN_OVERHEAD
        return self.ext_mtu


@dataclass(frozen=True)
class VxlanDevice:
    name: str
    vni: int
    port: int
    local: ipaddress.IPv4Address
    underlay: str
    mtu: int
    address: ipaddress.IPv4Interface
    learning: bool = False
    gbp: bool = False


@dataclass(frozen=True)
class IptChain:
    """One chain we own entirely, and the rule that jumps to it from a built-in chain."""

    table: str
    name: str
    rules: tuple[str, ...]
    hook: str  # built-in chain holding the jump
    jump: str  # the jump rule (without -A <hook>)


@dataclass(frozen=True)
class FlannelSpec:
    vxlan: VxlanDevice | None = None
    routes: dict[object, Route] = field(default_factory=dict)
    neighs: dict[object, Neigh] = field(default_factory=dict)
    fdbs: dict[object, Fdb] = field(default_factory=dict)
    chains: tuple[IptChain, ...] = ()
    remotes: tuple[Lease, ...] = ()  # the peers this spec routes to (for status output)
    direct: tuple[ipaddress.IPv4Network, ...] = ()  # subnets routed directly (DirectRouting)


def masq_rules(
    cluster: ipaddress.IPv4Network, pod: ipaddress.IPv4Network, *, random_fully: bool
) -> tuple[str, ...]:
    """flannel's masqRules (pkg/trafficmngr/iptables/iptables.go), as iptables-restore rule text."""
    rf = " --random-fully" if random_fully else ""
    c, p = str(cluster), str(pod)
    return (
        f"-m mark --mark {KUBE_PROXY_MARK} {MASQ_COMMENT} -j RETURN",
        f"-s {p} -d {c} {MASQ_COMMENT} -j RETURN",
        f"-s {c} -d {p} {MASQ_COMMENT} -j RETURN",
        f"! -s {c} -d {p} {MASQ_COMMENT} -j RETURN",
        f"-s {c} ! -d 224.0.0.0/4 {MASQ_COMMENT} -j MASQUERADE{rf}",
        f"! -s {c} -d {c} {MASQ_COMMENT} -j MASQUERADE{rf}",
    )


def forward_rules(cluster: ipaddress.IPv4Network) -> tuple[str, ...]:
    return (f"-s {cluster} {FWD_COMMENT} -j ACCEPT", f"-d {cluster} {FWD_COMMENT} -j ACCEPT")


def remote_leases(snapshot: Snapshot, ctx: NodeContext) -> list[Lease]:
    """Valid leases of other nodes, in key order (bad records are skipped with a warning)."""
    out = []
    for key, value in snapshot.items(subnets_prefix(ctx.prefix)):
        try:
            lease = decode_lease(key, value)
        except Invalid as e:
            log.warning("bad lease record ignored", key=key, error=str(e))
            continue
        mine = (ctx.ext_ip, ctx.own.attrs.public_ip)
        if lease.subnet.overlaps(ctx.own.subnet) or lease.attrs.public_ip in mine:
            continue
        if not lease.subnet.subnet_of(ctx.config.network):
            log.warning("lease outside the network ignored", key=key, network=str(ctx.config.network))
            continue
        out.append(lease)
    return out


def _on_link(ctx: NodeContext, ip: ipaddress.IPv4Address) -> bool:
    return any(ip in n for n in ctx.local_networks)


def flannel_spec(snapshot: Snapshot, ctx: NodeContext) -> FlannelSpec:
    be = ctx.config.backend
    routes: dict[object, Route] = {}
    neighs: dict[object, Neigh] = {}
    fdbs: dict[object, Fdb] = {}
    remotes: list[Lease] = []
    direct: list[ipaddress.IPv4Network] = []
    vxlan: VxlanDevice | None = None

    def add_route(r: Route) -> None:
        routes[r.key] = r

    if be.type == "vxlan":
        vxlan = VxlanDevice(
            name=be.device, vni=be.vni, port=be.dstport, local=ctx.ext_ip, underlay=ctx.ext_iface,
            mtu=ctx.mtu, address=ipaddress.IPv4Interface(f"{ctx.own.subnet.network_address}/32"),
            learning=be.learning, gbp=be.gbp,
        )
    for lease in remote_leases(snapshot, ctx):
        a = lease.attrs
        if a.backend_type != be.type:
            log.debug("lease of another backend ignored", subnet=str(lease.subnet), type=a.backend_type)
            continue
        if be.type == "host-gw" or (be.direct_routing and _on_link(ctx, a.public_ip)):
            if not _on_link(ctx, a.public_ip):
                log.warning("host-gw peer not on this L2 segment ignored", subnet=str(lease.subnet),
                            public_ip=str(a.public_ip))
                continue
            add_route(Route(dst=lease.subnet, gateway=a.public_ip, oif=ctx.ext_iface, proto=RTPROT_FLANNELD))
            remotes.append(lease)
            if be.type == "vxlan":
                direct.append(lease.subnet)
            continue
        mac = a.vtep_mac
        if mac is None:
            log.warning("vxlan lease without a VtepMAC ignored", subnet=str(lease.subnet))
            continue
        gw = lease.subnet.network_address
        n = Neigh(ifname=be.device, dst=gw, lladdr=mac)
        f = Fdb(ifname=be.device, lladdr=mac, dst=a.public_ip)
        neighs[n.key] = n
        fdbs[f.key] = f
        add_route(Route(dst=lease.subnet, gateway=gw, oif=be.device, onlink=True, proto=RTPROT_FLANNELD))
        remotes.append(lease)
    chains: list[IptChain] = []
    if ctx.ip_masq:
        chains.append(IptChain("nat", MASQ_CHAIN, masq_rules(ctx.config.network, ctx.own.subnet,
                                                             random_fully=ctx.random_fully),
                               "POSTROUTING", f"{MASQ_COMMENT} -j {MASQ_CHAIN}"))
    if ctx.forward_rules:
        chains.append(IptChain("filter", FWD_CHAIN, forward_rules(ctx.config.network), "FORWARD",
                               f'-m comment --comment "flanneld forward" -j {FWD_CHAIN}'))
    return FlannelSpec(vxlan=vxlan, routes=routes, neighs=neighs, fdbs=fdbs, chains=tuple(chains),
                       remotes=tuple(remotes), direct=tuple(direct))
