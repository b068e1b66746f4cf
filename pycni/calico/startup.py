"""calico-node start-up: register this Node, create the default pool, allocate tunnel addresses.

This is what `calico-node -startup` and `-allocate-tunnel-addrs` do before felix and BIRD run
(calico:node/pkg/lifecycle/startup/startup.go, node/pkg/allocateip/allocateip.go), reduced to the
parts a pycni node needs:

1. The Node resource `nodes/<nodename>`: `spec.bgp.ipv4Address` is this node's underlay address
   with its prefix (`IP` env / `--ip`, or auto-detected: the first global IPv4 address of an
   interface that is not ours), `spec.bgp.asNumber` from `AS` (left empty = the cluster AS),
   `spec.bgp.routeReflectorClusterID` from `CALICO_ROUTE_REFLECTOR_CLUSTER_ID` (pycni's own env, as
   calicoctl would set it), labels from `CALICO_NODE_LABELS` ("k=v,k2=v2"). Whatever else the
   stored Node holds (tunnel addresses, other labels, orchRefs) is kept.
2. The default pool, only when no IPv4 pool exists and `NO_DEFAULT_POOLS` is not true:
   `default-ipv4-ippool`, CIDR `CALICO_IPV4POOL_CIDR` (192.168.0.0/16), block size
   `CALICO_IPV4POOL_BLOCK_SIZE` (26), `CALICO_IPV4POOL_IPIP` / `_VXLAN` (empty, "off", "never" =
   Never; "always"; "crosssubnet" / "cross-subnet"), `CALICO_IPV4POOL_NAT_OUTGOING` (true),
   `CALICO_IPV4POOL_NODE_SELECTOR` (all()). Two nodes racing both try create-if-absent; one wins.
3. Tunnel addresses: when an enabled pool uses IPIP, one address from the IPIP pools under handle
   `ipip-tunnel-addr-<node>` into `spec.bgp.ipv4IPIPTunnelAddr`; when one uses VXLAN, one from the
   VXLAN pools under `vxlan-tunnel-addr-<node>` into `spec.ipv4VXLANTunnelAddr`, plus a random
   locally administered MAC in `spec.vxlanTunnelMACAddr` (kept across restarts, so remote FDB
   entries stay valid). An address that is still ours and still in a matching pool is kept; one
   that is no longer needed is released. Calico takes tunnel addresses from the node's own blocks
   like any pod address; so do we (the BlockAllocator's auto_assign).
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from pycni.datastore import Datastore
from pycni.datastore import calico as c
from pycni.errors import AlreadyExists, Invalid, PycniError

log = structlog.get_logger(__name__)

_TRUE = ("true", "1", "yes", "on")


def parse_pool_encap_env(value: str | None, var: str) -> str:
    """calico-node's reading of CALICO_IPV4POOL_IPIP / _VXLAN."""
    v = (value or "").strip().lower()
    if v in ("", "off", "never", "false"):
        return c.ENCAP_NEVER
    if v in ("always", "on", "true"):
        return c.ENCAP_ALWAYS
    if v in ("crosssubnet", "cross-subnet"):
        return c.ENCAP_CROSS_SUBNET
    raise Invalid(f"{var}={value!r}: expected Always, CrossSubnet or Never", field=var)


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise Invalid(f"CALICO_NODE_LABELS: {part!r} is not key=value", field="CALICO_NODE_LABELS")
        out[k] = v
    return out


@dataclass(frozen=True)
class StartupConfig:
    nodename: str
    ip: ipaddress.IPv4Interface | None = None  # None: auto-detect
    as_number: int | None = None
    rr_cluster_id: str | None = None  # None: keep what the Node has
    labels: Mapping[str, str] = field(default_factory=dict)
    no_default_pools: bool = False
    pool_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network(c.DEFAULT_POOL_CIDR)
    pool_block_size: int = c.DEFAULT_BLOCK_SIZE_V4
    pool_ipip: str = c.ENCAP_NEVER
    pool_vxlan: str = c.ENCAP_NEVER
    pool_nat_outgoing: bool = True
    pool_node_selector: str = c.DEFAULT_NODE_SELECTOR

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, nodename: str | None = None, ip: str | None = None
    ) -> StartupConfig:
        """Build from calico-node's environment variables (flags given here win)."""
        name = nodename or env.get("NODENAME") or env.get("HOSTNAME") or socket.gethostname()
        raw_ip = ip if ip is not None else env.get("IP", "")
        iface: ipaddress.IPv4Interface | None = None
        if raw_ip and raw_ip.lower() not in ("autodetect", "none"):
            try:
                iface = ipaddress.IPv4Interface(raw_ip)
            except ValueError:
                raise Invalid(f"IP={raw_ip!r} is not an IPv4 address (with /prefix)", field="IP") from None
            if "/" not in raw_ip:
                raise Invalid(f"IP={raw_ip!r} needs its prefix length, e.g. 10.99.0.11/24", field="IP")
        asn = None
        if env.get("AS"):
            try:
                asn = int(env["AS"])
            except ValueError:
                raise Invalid(f"AS={env['AS']!r} is not an AS number", field="AS") from None
        try:
            cidr = ipaddress.IPv4Network(env.get("CALICO_IPV4POOL_CIDR") or c.DEFAULT_POOL_CIDR, strict=False)
        except ValueError:
            raise Invalid(
                f"CALICO_IPV4POOL_CIDR={env.get('CALICO_IPV4POOL_CIDR')!r} is not an IPv4 CIDR",
                field="CALICO_IPV4POOL_CIDR",
            ) from None
        try:
            bs = int(env.get("CALICO_IPV4POOL_BLOCK_SIZE") or c.DEFAULT_BLOCK_SIZE_V4)
        except ValueError:
            raise Invalid(
                "CALICO_IPV4POOL_BLOCK_SIZE is not a number", field="CALICO_IPV4POOL_BLOCK_SIZE"
            ) from None
        ipip = parse_pool_encap_env(env.get("CALICO_IPV4POOL_IPIP"), "CALICO_IPV4POOL_IPIP")
        vxlan = parse_pool_encap_env(env.get("CALICO_IPV4POOL_VXLAN"), "CALICO_IPV4POOL_VXLAN")
        rr = env.get("CALICO_ROUTE_REFLECTOR_CLUSTER_ID")
        return cls(
            nodename=name,
            ip=iface,
            as_number=asn,
            rr_cluster_id=rr if rr is not None else None,
            labels=_labels(env.get("CALICO_NODE_LABELS", "")),
            no_default_pools=env.get("NO_DEFAULT_POOLS", "").lower() in _TRUE,
            pool_cidr=cidr,
            pool_block_size=bs,
            pool_ipip=ipip,
            pool_vxlan=vxlan,
            pool_nat_outgoing=env.get("CALICO_IPV4POOL_NAT_OUTGOING", "true").lower() in _TRUE,
            pool_node_selector=env.get("CALICO_IPV4POOL_NODE_SELECTOR") or c.DEFAULT_NODE_SELECTOR,
        )


def autodetect_ip(netlink: Any) -> tuple[ipaddress.IPv4Interface, str] | None:
    """First global IPv4 address on an interface that is not loopback or one of ours (first-found)."""
    skip = ("lo", "tunl0", "vxlan.calico", "docker0", "cni0", "flannel.")
    for link in sorted(netlink.links(), key=lambda link: link.index):
        if link.name.startswith(skip) or link.name.startswith(("cali", "kube-ipvs", "veth")):
            continue
        for a in netlink.addrs(link.name):
            if isinstance(a, ipaddress.IPv4Interface) and not a.ip.is_loopback and not a.ip.is_link_local:
                return a, link.name
    return None


def underlay_for(netlink: Any, ip: ipaddress.IPv4Address) -> tuple[str, int] | None:
    """(device name, MTU) of the interface holding `ip`."""
    for link in netlink.links():
        if any(a.ip == ip for a in netlink.addrs(link.name)):
            return link.name, link.mtu
    return None


def random_vxlan_mac(rng: random.Random | None = None) -> str:
    """A random unicast, locally administered MAC (bit 1 of the first byte set, bit 0 clear)."""
    r = rng or random.SystemRandom()
    b = [r.randrange(256) for _ in range(6)]
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def ensure_default_pool(ds: Datastore, cfg: StartupConfig) -> c.IPPool | None:
    """Create `default-ipv4-ippool` when no IPv4 pool exists; returns it when created."""
    if cfg.no_default_pools:
        return None
    if any(p.cidr.version == 4 for p in c.list_resources(ds, c.IPPool)):
        return None
    spec = {
        "cidr": str(cfg.pool_cidr),
        "blockSize": cfg.pool_block_size,
        "ipipMode": cfg.pool_ipip,
        "vxlanMode": cfg.pool_vxlan,
        "natOutgoing": cfg.pool_nat_outgoing,
        "nodeSelector": cfg.pool_node_selector,
    }
    pool = c.IPPool.from_spec(c.new_meta(c.DEFAULT_POOL_NAME), spec)
    try:
        c.create_resource(ds, pool)
    except AlreadyExists:
        return None
    log.info(
        "default pool created",
        cidr=str(pool.cidr),
        ipip=pool.ipip_mode,
        vxlan=pool.vxlan_mode,
        block_size=pool.block_size,
    )
    return pool


def register_node(ds: Datastore, cfg: StartupConfig, ip: ipaddress.IPv4Interface) -> c.Node:
    """Create or refresh `nodes/<name>`, keeping what we do not set (CAS apply)."""
    got = c.get_resource(ds, c.Node, cfg.nodename)
    old = got[0] if got else None
    labels = dict(old.meta.labels) if old else {}
    labels.update(cfg.labels)
    labels.setdefault("kubernetes.io/hostname", cfg.nodename)
    if old is None:
        node = c.Node(
            meta=c.new_meta(cfg.nodename, labels=labels),
            ipv4_address=ip,
            as_number=cfg.as_number,
            rr_cluster_id=cfg.rr_cluster_id or "",
        )
    else:
        node = replace(
            old,
            meta=replace(old.meta, labels=labels),
            ipv4_address=ip,
            as_number=cfg.as_number if cfg.as_number is not None else old.as_number,
            rr_cluster_id=cfg.rr_cluster_id if cfg.rr_cluster_id is not None else old.rr_cluster_id,
            has_bgp=True,
        )
    if node != old or old is None or dict(old.meta.labels) != labels:
        c.apply_resource(ds, node)
        log.info(
            "node registered",
            node=cfg.nodename,
            ip=str(ip),
            as_number=node.as_number,
            rr_cluster_id=node.rr_cluster_id or None,
        )
    return node


def _pools_with(ds: Datastore, kind: str) -> list[c.IPPool]:
    return [
        p
        for p in c.list_resources(ds, c.IPPool)
        if p.cidr.version == 4
        and not p.disabled
        and p.encapsulation == kind
        and p.node_selector.strip() != "!all()"
    ]


def _tunnel_addr(
    ds: Datastore, node: str, kind: str, current: ipaddress.IPv4Address | None
) -> ipaddress.IPv4Address | None:
    """Keep, allocate or release this node's tunnel address for `kind` ("ipip" | "vxlan")."""
    from pycni.ipam.allocator import BlockAllocator

    alloc = BlockAllocator(ds, node=node)
    handle = f"{kind}-tunnel-addr-{node}"
    pools = _pools_with(ds, kind)
    held = [ip for ip in alloc.ips_by_handle(handle) if isinstance(ip, ipaddress.IPv4Address)]
    if not pools:
        if held:
            alloc.release_by_handle(handle)
            log.info("tunnel address released", kind=kind, ips=[str(i) for i in held])
        return None
    if current is not None and current in held and any(current in p.cidr for p in pools):
        return current
    if held and any(held[0] in p.cidr for p in pools) and current is None:
        return held[0]
    if held:
        alloc.release_by_handle(handle)
    attrs = {"node": node, "type": "ipipTunnelAddress" if kind == "ipip" else "vxlanTunnelAddress"}
    got = alloc.auto_assign(handle, attrs, pools=[p.name for p in pools], num=1, version=4)
    ip = got[0].ip
    assert isinstance(ip, ipaddress.IPv4Address)
    log.info("tunnel address assigned", kind=kind, ip=str(ip), node=node)
    return ip


def ensure_tunnel_addresses(
    ds: Datastore, nodename: str, *, rng: random.Random | None = None
) -> c.Node | None:
    """Bring the Node's IPIP/VXLAN tunnel addresses (and VXLAN MAC) in line with the pools."""
    got = c.get_resource(ds, c.Node, nodename)
    if got is None:
        return None
    node = got[0]
    ipip = _tunnel_addr(ds, nodename, "ipip", node.ipip_tunnel_addr)
    vx = _tunnel_addr(ds, nodename, "vxlan", node.vxlan_tunnel_addr)
    mac = node.vxlan_tunnel_mac
    if vx is not None and not mac:
        mac = random_vxlan_mac(rng)
    new = replace(node, ipip_tunnel_addr=ipip, vxlan_tunnel_addr=vx, vxlan_tunnel_mac=mac if vx else mac)
    if new != node:
        c.apply_resource(ds, new)
        log.info(
            "node tunnel addresses updated",
            node=nodename,
            ipip=str(ipip) if ipip else None,
            vxlan=str(vx) if vx else None,
            vxlan_mac=mac or None,
        )
    return new


def run_startup(ds: Datastore, cfg: StartupConfig, netlink: Any | None = None) -> c.Node:
    """Everything calico-node does before felix: returns the Node as registered."""
    ip = cfg.ip
    if ip is None:
        if netlink is None:
            raise Invalid("no IP given and no netlink to auto-detect one", field="IP")
        found = autodetect_ip(netlink)
        if found is None:
            raise Invalid("could not auto-detect an IPv4 address: set IP=<addr>/<len>", field="IP")
        ip = found[0]
        log.info("address auto-detected", ip=str(ip), iface=found[1])
    register_node(ds, cfg, ip)
    ensure_default_pool(ds, cfg)
    try:
        node = ensure_tunnel_addresses(ds, cfg.nodename)
    except PycniError as e:
        # No free address yet (or a CAS storm): felix starts anyway and retries later.
        log.warning("tunnel address allocation failed", error=str(e))
        node = None
    if node is None:
        got = c.get_resource(ds, c.Node, cfg.nodename)
        assert got is not None
        node = got[0]
    return node


def env_startup_config(nodename: str | None = None, ip: str | None = None) -> StartupConfig:
    return StartupConfig.from_env(os.environ, nodename=nodename, ip=ip)
