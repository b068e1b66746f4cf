"""felix's pure calculation: Calico datastore snapshot in, the node's whole dataplane spec out.

`calc_felix(cfg, snapshot) -> FelixSpec` reads only the snapshot (IPPools, Nodes,
WorkloadEndpoints, FelixConfigurations, IPAM host affinities) and `FelixConfig` (this node's name
and local facts found at start: the underlay device and its MTU, env overrides). Drivers turn the
spec into kernel state; nothing here does I/O, so every rule below is unit-tested on fake
snapshots.

What felix programs (all routes carry RTPROT_FELIX, so a restart sweeps by mark):
- per local workload endpoint (`spec.node == me`): `<ip>/32 dev cali... scope link`, and on the
  veth `proxy_arp=1` (the pod's gateway 169.254.1.1 exists nowhere; the host answers ARP for it),
  `neigh/.../proxy_delay=0` (else the kernel delays proxy replies up to 0.8 s), `forwarding=1`;
  `net/ipv4/ip_forward=1` for the node;
- per own affine block (any pool): `blackhole <block>` (addresses of the block not (yet) on this
  node must not leak to the default route; bgpd installs no blackholes, so there is one writer);
- per remote block in an IPIP/VXLAN pool, the CrossSubnet choice of `calc.encap.route_kind`:
  direct `via <node ip> dev <underlay>`, IPIP `via <node ip> dev tunl0 onlink` (onlink: the peer
  is not on tunl0's "subnet", the kernel must take our word), VXLAN `via <remote VTEP ip> dev
  vxlan.calico onlink` plus a permanent neighbour (VTEP ip -> VTEP MAC) and an FDB entry
  (VTEP MAC -> node ip), as felix's vxlanfdb does: no flooding, no learning;
- remote workloads whose address sits outside every block affine to their node (borrowed IPs
  when strict affinity is off) get a /32 the same way, as felix's route resolver does;
- the tunnel devices themselves (tunl0 with this node's IPIP address; vxlan.calico VNI 4096 port
  4789 with this node's VXLAN address and MAC), MTU = underlay - 20 / - 50 unless overridden;
- natOutgoing: pools with natOutgoing masquerade traffic leaving the set of all pools.

Bad resources are logged by the decoders and skipped; the rest keep working.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from pycni.calc.encap import owner, pool_for, route_kind, tunnel_mtu
from pycni.constants import CALI_VXLAN_DEV, CALI_VXLAN_PORT, CALI_VXLAN_VNI, IPIP_DEV, RTPROT_FELIX
from pycni.dataplane.netlink import SCOPE_LINK, Fdb, Neigh, Route
from pycni.datastore import calico as c
from pycni.datastore.snapshot import Snapshot
from pycni.model import IPNetwork

log = structlog.get_logger(__name__)


#: What felix watches: every v3 resource we model, and the IPAM host affinities.
AFFINITY_PREFIX = "/calico/ipam/v2/host/"
SYNC_PREFIXES = (
    c.IPPOOLS_PREFIX,
    c.NODES_PREFIX,
    c.WEPS_PREFIX,
    c.FELIXCONFIG_PREFIX,
    c.BGPCONFIG_PREFIX,
    AFFINITY_PREFIX,
)


@dataclass(frozen=True)
class FelixConfig:
    """Settings from flags / FELIX_* env and facts found at start (no datastore content)."""

    nodename: str
    underlay_dev: str | None = None  # the interface holding the node's address
    underlay_mtu: int = 1500
    interface_prefix: str = "cali"
    ipip_enabled: bool | None = None  # None: on when an enabled pool uses IPIP
    vxlan_enabled: bool | None = None
    ipip_mtu: int = 0  # 0: auto
    vxlan_mtu: int = 0
    vxlan_vni: int = 0  # 0: FelixConfiguration or 4096
    vxlan_port: int = 0  # 0: FelixConfiguration or 4789
    nat_outgoing_address: ipaddress.IPv4Address | None = None
    proto: int = RTPROT_FELIX


@dataclass(frozen=True)
class TunnelSpec:
    """A tunnel device felix owns (tunl0 or vxlan.calico)."""

    kind: str  # "ipip" | "vxlan"
    name: str
    mtu: int
    address: ipaddress.IPv4Address | None = None  # added as /32
    mac: str = ""  # vxlan only
    local: ipaddress.IPv4Address | None = None  # vxlan: the node's underlay address
    underlay: str | None = None  # vxlan: device to bind to
    vni: int = CALI_VXLAN_VNI
    port: int = CALI_VXLAN_PORT


@dataclass(frozen=True)
class NatSpec:
    """natOutgoing: masquerade traffic from `masq_pools` whose destination is outside `all_pools`."""

    masq_pools: tuple[IPNetwork, ...] = ()
    all_pools: tuple[IPNetwork, ...] = ()
    to_address: ipaddress.IPv4Address | None = None  # SNAT instead of MASQUERADE


@dataclass(frozen=True)
class FelixSpec:
    routes: tuple[Route, ...] = ()
    neighs: tuple[Neigh, ...] = ()
    fdbs: tuple[Fdb, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    tunnels: tuple[TunnelSpec, ...] = ()
    nat: NatSpec = field(default_factory=NatSpec)
    workload_mtu: int = 1500
    local_endpoints: int = 0
    me: c.Node | None = None
    notes: tuple[str, ...] = ()  # why something is not programmed (missing VTEP, unknown node, ...)

    def routes_by_dst(self) -> dict[IPNetwork, Route]:
        return {r.dst: r for r in self.routes}


# ----------------------------------------------------------------------------------------------


def parse_affinity_key(key: str) -> tuple[str, IPNetwork] | None:
    """`/calico/ipam/v2/host/<node>/ipv4/block/10.244.0.0-26` -> ("<node>", 10.244.0.0/26)."""
    if not key.startswith(AFFINITY_PREFIX):
        return None
    parts = key[len(AFFINITY_PREFIX) :].split("/")
    if len(parts) != 4 or parts[2] != "block" or parts[1] not in ("ipv4", "ipv6") or not parts[0]:
        return None
    addr, sep, plen = parts[3].rpartition("-")
    if not sep:
        return None
    try:
        return parts[0], ipaddress.ip_network(f"{addr}/{plen}")
    except ValueError:
        return None


def affinities(snapshot: Snapshot) -> dict[IPNetwork, str]:
    """Confirmed block affinities: block -> node. Pending claims count as absent (Calico's rule)."""
    import json

    out: dict[IPNetwork, str] = {}
    for key, value in snapshot.items(AFFINITY_PREFIX):
        parsed = parse_affinity_key(key)
        if parsed is None:
            continue
        try:
            obj = json.loads(value)
        except ValueError:
            log.warning("bad block affinity skipped", key=key)
            continue
        if isinstance(obj, dict):
            # Older Calico wrote no state: such an affinity is confirmed.
            state = obj.get("state") or "confirmed"
            if state != "confirmed" or obj.get("deleted"):
                continue
        node, block = parsed
        out[block] = node
    return out


def _felix_settings(snapshot: Snapshot, nodename: str) -> c.FelixConfiguration:
    """`node.<me>` overrides `default` field by field (only fields set in the per-node one)."""
    base = c.FelixConfiguration(meta=c.Meta("default"))
    per_node: c.FelixConfiguration | None = None
    for fc in c.decode_all(snapshot.items(c.FELIXCONFIG_PREFIX), c.FelixConfiguration):
        if fc.name == "default":
            base = fc
        elif fc.name == c.felix_config_name(nodename):
            per_node = fc
    if per_node is None:
        return base
    merged = dict(base.spec_json())
    merged.update(per_node.spec_json())
    return c.FelixConfiguration.from_spec(base.meta, merged)


def _first(*vals: object) -> object:
    for v in vals:
        if v is not None and v != 0:
            return v
    return None


def calc_felix(cfg: FelixConfig, snapshot: Snapshot) -> FelixSpec:
    me_name = cfg.nodename
    proto = cfg.proto
    notes: list[str] = []
    settings = _felix_settings(snapshot, me_name)
    prefix = cfg.interface_prefix or settings.interface_prefix

    pools = [p for p in c.decode_all(snapshot.items(c.IPPOOLS_PREFIX), c.IPPool)]
    nodes = {n.name: n for n in c.decode_all(snapshot.items(c.NODES_PREFIX), c.Node)}
    me = nodes.get(me_name)
    my_iface = me.ipv4_address if me is not None else None
    blocks = affinities(snapshot)

    active = [p for p in pools if not p.disabled and p.cidr.version == 4]
    ipip_on = (
        cfg.ipip_enabled
        if cfg.ipip_enabled is not None
        else (
            settings.ipip_enabled
            if settings.ipip_enabled is not None
            else any(p.ipip_mode != c.ENCAP_NEVER for p in active)
        )
    )
    vxlan_on = (
        cfg.vxlan_enabled
        if cfg.vxlan_enabled is not None
        else (
            settings.vxlan_enabled
            if settings.vxlan_enabled is not None
            else any(p.vxlan_mode != c.ENCAP_NEVER for p in active)
        )
    )

    routes: dict[IPNetwork, Route] = {}
    neighs: dict[tuple[str, object], Neigh] = {}
    fdbs: dict[tuple[str, str, object], Fdb] = {}
    sysctls: dict[str, str] = {"net/ipv4/ip_forward": "1"}

    # -- tunnel devices ----------------------------------------------------------------------
    tunnels: list[TunnelSpec] = []
    ipip_mtu = tunnel_mtu(cfg.underlay_mtu, "ipip", cfg.ipip_mtu or settings.ipip_mtu)
    vxlan_mtu = tunnel_mtu(cfg.underlay_mtu, "vxlan", cfg.vxlan_mtu or settings.vxlan_mtu)
    vni = int(_first(cfg.vxlan_vni, settings.vxlan_vni) or CALI_VXLAN_VNI)  # type: ignore[call-overload]
    port = int(_first(cfg.vxlan_port, settings.vxlan_port) or CALI_VXLAN_PORT)  # type: ignore[call-overload]
    have_ipip = False
    have_vxlan = False
    if ipip_on:
        have_ipip = True
        tunnels.append(
            TunnelSpec(
                kind="ipip",
                name=IPIP_DEV,
                mtu=ipip_mtu,
                address=me.ipip_tunnel_addr if me is not None else None,
            )
        )
    if vxlan_on:
        if me is None or me.vxlan_tunnel_addr is None or not me.vxlan_tunnel_mac or me.ip is None:
            notes.append("vxlan: this node has no VXLAN tunnel address/MAC or address yet")
        else:
            have_vxlan = True
            tunnels.append(
                TunnelSpec(
                    kind="vxlan",
                    name=CALI_VXLAN_DEV,
                    mtu=vxlan_mtu,
                    address=me.vxlan_tunnel_addr,
                    mac=me.vxlan_tunnel_mac,
                    local=me.ip,
                    underlay=cfg.underlay_dev,
                    vni=vni,
                    port=port,
                )
            )

    # -- local workloads ---------------------------------------------------------------------
    local = 0
    remote_weps: list[c.WorkloadEndpoint] = []
    for wep in c.decode_all(snapshot.items(c.WEPS_PREFIX), c.WorkloadEndpoint):
        if wep.node != me_name:
            remote_weps.append(wep)
            continue
        local += 1
        ifname = wep.interface_name
        if not ifname.startswith(prefix):
            notes.append(f"workload {wep.namespace}/{wep.name}: interface {ifname} lacks prefix {prefix}")
        for net in wep.ip_networks:
            routes[net] = Route(dst=net, oif=ifname, proto=proto, scope=SCOPE_LINK)
        if any(n.version == 4 for n in wep.ip_networks):
            sysctls[f"net/ipv4/conf/{ifname}/proxy_arp"] = "1"
            sysctls[f"net/ipv4/neigh/{ifname}/proxy_delay"] = "0"
            sysctls[f"net/ipv4/conf/{ifname}/forwarding"] = "1"
        if any(n.version == 6 for n in wep.ip_networks):
            sysctls[f"net/ipv6/conf/{ifname}/proxy_ndp"] = "1"
            sysctls[f"net/ipv6/conf/{ifname}/forwarding"] = "1"

    # -- blocks ------------------------------------------------------------------------------
    def remote_route(dst: IPNetwork, node_name: str, pool: c.IPPool) -> Route | None:
        node = nodes.get(node_name)
        if node is None or node.ip is None:
            notes.append(f"{dst}: node {node_name} has no Node resource or address")
            return None
        kind = route_kind(pool, my_iface, node.ip)
        if kind == "direct":
            if cfg.underlay_dev is None:
                notes.append(f"{dst}: direct route needs the underlay device")
                return None
            return Route(dst=dst, gateway=node.ip, oif=cfg.underlay_dev, proto=proto)
        if kind == "ipip":
            if not have_ipip:
                notes.append(f"{dst}: IPIP route but IPIP is disabled here")
                return None
            return Route(dst=dst, gateway=node.ip, oif=IPIP_DEV, proto=proto, onlink=True)
        # vxlan
        if not have_vxlan:
            notes.append(f"{dst}: VXLAN route but this node's VTEP is not ready")
            return None
        if node.vxlan_tunnel_addr is None or not node.vxlan_tunnel_mac:
            notes.append(f"{dst}: node {node_name} has no VTEP (tunnel address / MAC) yet")
            return None
        vtep_ip = node.vxlan_tunnel_addr
        neighs[(CALI_VXLAN_DEV, vtep_ip)] = Neigh(
            ifname=CALI_VXLAN_DEV, dst=vtep_ip, lladdr=node.vxlan_tunnel_mac
        )
        fdbs[(CALI_VXLAN_DEV, node.vxlan_tunnel_mac, node.ip)] = Fdb(
            ifname=CALI_VXLAN_DEV, lladdr=node.vxlan_tunnel_mac, dst=node.ip
        )
        return Route(dst=dst, gateway=vtep_ip, oif=CALI_VXLAN_DEV, proto=proto, onlink=True)

    # IPIP pool routes are felix's unless handed to bgpd (Calico's programClusterRoutes on both
    # resources); VXLAN pool routes are always felix's; no-encap ones always bgpd's.
    bgp_cfg = next(
        (
            b
            for b in c.decode_all(snapshot.items(c.BGPCONFIG_PREFIX), c.BGPConfiguration)
            if b.name == "default"
        ),
        None,
    )
    ipip_to_bgpd = settings.program_cluster_routes == "Disabled" or (
        bgp_cfg is not None and bgp_cfg.program_cluster_routes == "Enabled"
    )

    def felix_owns(pool: c.IPPool | None) -> bool:
        if pool is None or owner(pool) != "felix":
            return False
        return not (pool.encapsulation == "ipip" and ipip_to_bgpd)

    for block, node_name in sorted(blocks.items(), key=lambda kv: (kv[0].version, kv[0])):
        pool = pool_for(block, pools)
        if node_name == me_name:
            if pool is not None:
                routes.setdefault(block, Route(dst=block, type="blackhole", proto=proto))
            continue
        if not felix_owns(pool):
            continue  # no-encap pools (and strays) are bgpd's
        assert pool is not None
        r = remote_route(block, node_name, pool)
        if r is not None:
            routes.setdefault(block, r)

    # Borrowed addresses: a remote workload outside its node's own blocks needs a /32 of its own.
    own_blocks: dict[str, list[IPNetwork]] = {}
    for block, node_name in blocks.items():
        own_blocks.setdefault(node_name, []).append(block)
    for wep in remote_weps:
        for net in wep.ip_networks:
            if net in routes:
                continue
            if any(
                net.version == b.version and net.subnet_of(b)  # type: ignore[arg-type]
                for b in own_blocks.get(wep.node, [])
            ):
                continue
            pool = pool_for(net, pools)
            if pool is None or not felix_owns(pool):
                continue
            r = remote_route(net, wep.node, pool)
            if r is not None:
                routes[net] = r

    # Routes to the VTEPs' own addresses are implied by the onlink block routes (the VTEP address
    # lies in the remote block); nothing else to add.

    # -- NAT -----------------------------------------------------------------------------------
    v4 = [p for p in pools if p.cidr.version == 4]
    nat = NatSpec(
        masq_pools=tuple(sorted({p.cidr for p in v4 if p.nat_outgoing and not p.disabled})),  # type: ignore[type-var]
        all_pools=tuple(sorted({p.cidr for p in v4})),  # type: ignore[type-var]
        to_address=cfg.nat_outgoing_address or settings.nat_outgoing_address,
    )

    # -- MTU for workloads: the smallest of the enabled encapsulations' ------------------------
    mtus = [cfg.underlay_mtu]
    if have_ipip:
        mtus.append(ipip_mtu)
    if vxlan_on:
        mtus.append(vxlan_mtu)
    wl_mtu = min(mtus)

    return FelixSpec(
        routes=tuple(sorted(routes.values(), key=lambda r: (r.dst.version, r.dst))),  # type: ignore[arg-type]
        neighs=tuple(sorted(neighs.values(), key=lambda n: str(n.dst))),
        fdbs=tuple(sorted(fdbs.values(), key=lambda f: (f.lladdr, str(f.dst)))),
        sysctls=tuple(sorted(sysctls.items())),
        tunnels=tuple(tunnels),
        nat=nat,
        workload_mtu=wl_mtu,
        local_endpoints=local,
        me=me,
        notes=tuple(notes),
    )


def pools_in(snapshot: Snapshot) -> Iterable[c.IPPool]:
    return c.decode_all(snapshot.items(c.IPPOOLS_PREFIX), c.IPPool)
