"""Wiring a pod: the veth pair, its addresses and routes, the host side, for both data paths.

Calico (routed, calico:cni-plugin/pkg/dataplane/linux/dataplane_linux.go):
- host end `cali<hash>` with MAC ee:ee:ee:ee:ee:ee, no address. The pod's gateway 169.254.1.1
  exists nowhere: the host end answers ARP for every address (`proxy_arp=1`) and does so at once
  (`neigh/<if>/proxy_delay=0`; the default 0.8 s delay would stall every new pod's first packet).
  A fixed MAC means the pod's neighbour entry for its gateway never changes when the veth is
  recreated;
- the pod gets its address as /32 (nothing is on-link, so all traffic goes to the host), a
  `169.254.1.1 scope link` route so the gateway is reachable, then `default via 169.254.1.1`;
- the host gets `forwarding=1` on the interface and a `/32 dev cali<hash> scope link` route with
  felix's protocol number, so felix owns it (and keeps it) once it learns the endpoint; the pod
  works even before felix has caught up.

flannel (bridge, as kube-flannel's conflist delegates to `bridge` + `host-local`):
- bridge `cni0` holding FLANNEL_SUBNET's first address (.1/24), IPv4 forwarding on;
- host end `veth<8 hex of sha1(containerID/ifname)>` enslaved to cni0 with hairpin mode (a pod can
  reach itself through a service address); a name derived from the container, not random, so DEL
  finds it without any record;
- the pod gets `.x/24` (the kernel adds the on-link /24 route), a route to FLANNEL_NETWORK via .1
  and the default route via .1 (`isDefaultGateway`), exactly the `route -n` of seed 001.

The peer is created directly inside the pod namespace (IFLA_NET_NS_FD in the veth request), so
the device is never moved between namespaces. Pod-side requests go through a netlink socket opened
inside the pod namespace (`rtnl.socket_in_netns`); the calling thread visits the namespace only
for `socket()` and for the pod's /proc/sys writes.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from _sha1 import sha1  # the builtin: hashlib would load OpenSSL (~40 ms in-process)
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from pycni.cni import rtnl, spec
from pycni.cni.log import get_logger
from pycni.cni.rtnl import (
    RT_SCOPE_LINK,
    LinkInfo,
    NetnsScope,
    Rtnl,
    socket_in_netns,
    sysctl_read,
    sysctl_write,
)
from pycni.cni.spec import CmdArgs, CniError
from pycni.constants import CALI_GATEWAY, CALI_HOST_MAC, RTPROT_FELIX
from pycni.dataplane.netlink import NetlinkError

log = get_logger("pycni.cni.veth")

BRIDGE_PORT_PREFIX = "veth"
#: ifalias of a host veth whose DEL has answered and whose destruction is pending: a restarted agent
#: finds and destroys these (the mark says "ours, and dead"), so a crash never leaks a pair.
REAP_ALIAS = "pycni:deleted"
#: device group of those pairs: the reaper destroys the whole group in one kernel request.
REAP_GROUP = 0x70636E69  # "pcni"
EEXIST, ENODEV, EINVAL = 17, 19, 22
_GW = ipaddress.IPv4Address(CALI_GATEWAY)
_GW_NET = ipaddress.IPv4Network(f"{CALI_GATEWAY}/32")
_DEFAULT = ipaddress.IPv4Network("0.0.0.0/0")


def fault(args: CmdArgs, step: str) -> None:
    """Test hook: `PYCNI_FAULT=<step>` in the CNI environment makes ADD fail right after `step`."""
    if args.environ.get("PYCNI_FAULT") == step:
        raise CniError(spec.ERR_INTERNAL, f"injected fault at {step}")


#: kernel randomness for MACs, read 64 MACs at a time: os.urandom (getrandom) releases the GIL, and
#: in the agent each release during ADD hands the interpreter to the IPAM helper thread.
_entropy = bytearray()
_entropy_pid = 0
_entropy_lock = threading.Lock()


def random_mac() -> str:
    global _entropy_pid
    with _entropy_lock:
        if len(_entropy) < 6 or _entropy_pid != os.getpid():  # a forked child never reuses ours
            _entropy[:] = os.urandom(384)
            _entropy_pid = os.getpid()
        b = _entropy[-6:]
        del _entropy[-6:]
    b[0] = (b[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{x:02x}" for x in b)


def bridge_port_name(container_id: str, ifname: str) -> str:
    return BRIDGE_PORT_PREFIX + sha1(f"{container_id}/{ifname}".encode()).hexdigest()[:8]


def pod_socket(nsfd: int) -> Rtnl:
    return socket_in_netns(nsfd)


@dataclass(slots=True)
class Wired:
    result: dict[str, Any]
    pod_mac: str
    ip_masq: bool = False
    addresses: list[Any] | None = None


def _quiet(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - rollback continues past a failed step
        log.warning("undo step failed", step=getattr(fn, "__name__", "?"), error=str(e))


def _create_veth(
    host: Rtnl,
    pod: Rtnl,
    host_name: str,
    host_mac: str,
    a: CmdArgs,
    pod_mac: str,
    nsfd: int,
    mtu: int,
    master: int = 0,
    flush: Callable[[], bool] | None = None,
    queues: int = 0,
) -> LinkInfo | None:
    """Create the pair; return the host end as echoed by the kernel (None if not echoed).

    EEXIST means one of the two names is taken: the pod's interface (the spec's "ADD MUST fail if
    the interface exists") or a stale host end of an earlier sandbox of this pod (deleted and
    replaced, as Calico does). Telling them apart costs a GET only on this path."""
    info = None
    for attempt in range(3):
        try:
            info = host.veth_add(host_name, host_mac, a.ifname, pod_mac, nsfd, mtu, master, queues)
            break
        except NetlinkError as e:
            if e.errno != EEXIST or attempt == 2:
                raise
            if pod.link_get(a.ifname) is not None:
                if flush is not None and flush():  # a pair destroyed after DEL may still be going
                    continue
                raise CniError(
                    spec.ERR_INTERNAL,
                    f"interface {a.ifname} already exists in the container",
                    f"netns {a.netns}",
                ) from None
            log.info("stale host veth replaced", dev=host_name)
            host.link_del(host_name)
    log.debug("veth created", dev=host_name, peer=a.ifname, netns=a.netns)
    return info


def _pod_link(pod: Rtnl, ifname: str, index: int = 0) -> LinkInfo:
    """Bring the pod end up; its index comes from the creation echo when we have it."""
    pod.link_up(ifname, index)
    if index:
        return LinkInfo(index=index, name=ifname, mac="", mtu=0, up=True, master=0, kind="veth")
    link = pod.link_get(ifname)
    if link is None:  # pragma: no cover - we just created it
        raise CniError(spec.ERR_INTERNAL, f"{ifname} vanished from the pod namespace")
    return link


def calico_add(
    host: Rtnl,
    pod: Rtnl,
    nsfd: int,
    a: CmdArgs,
    *,
    host_name: str,
    mtu: int,
    addresses: Callable[[], list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]],
    undo: ExitStack,
    flush: Callable[[], bool] | None = None,
    queues: int = 1,
) -> Wired:
    """`addresses` resolves the IPAM result; it is called after the pair exists, so the IPAM work
    (file or datastore I/O) can run while the kernel creates the veth. `queues`: TX/RX queues per
    end (Calico's `num_queues`, default 1; the kernel would give one per possible CPU)."""
    pod_mac = random_mac()
    hinfo = _create_veth(
        host, pod, host_name, CALI_HOST_MAC, a, pod_mac, nsfd, mtu, flush=flush, queues=queues
    )
    undo.callback(_quiet, host.link_del, host_name)
    fault(a, "after_veth")

    addrs = addresses()
    link = _pod_link(pod, a.ifname, hinfo.link if hinfo else 0)
    for addr in addrs:
        pod.addr_add(link.index, addr)
    fault(a, "after_addresses")

    routes = [spec.route("0.0.0.0/0", CALI_GATEWAY)]
    try:
        pod.route_add(_GW_NET, oif=link.index, scope=RT_SCOPE_LINK)
        pod.route_add(_DEFAULT, oif=link.index, gateway=_GW)
    except NetlinkError as e:
        # A second interface of the pod (multus): the gateway routes exist via the first one and
        # stay there; this interface carries only its own address.
        if e.errno != EEXIST or a.ifname == "eth0":
            raise
        routes = []
    fault(a, "after_routes")

    # Host side. proxy_arp: answer the pod's ARP for 169.254.1.1 (and everything else) with our
    # MAC; proxy_delay=0: answer at once; route_localnet: let pods reach 127.0.0.1 DNAT targets.
    host.set_inet_conf(
        host_name,
        {
            rtnl.IPV4_DEVCONF_PROXY_ARP: 1,
            rtnl.IPV4_DEVCONF_FORWARDING: 1,
            rtnl.IPV4_DEVCONF_ROUTE_LOCALNET: 1,
        },
    )
    sysctl_write(f"net/ipv4/neigh/{host_name}/proxy_delay", "0")
    hlink = hinfo or host.link_get(host_name)
    if hlink is None:  # pragma: no cover
        raise CniError(spec.ERR_INTERNAL, f"{host_name} vanished")
    for addr in addrs:
        dst = ipaddress.ip_network((addr.ip, addr.ip.max_prefixlen))
        try:
            host.route_add(dst, oif=hlink.index, scope=RT_SCOPE_LINK, proto=RTPROT_FELIX)
        except NetlinkError as e:
            if e.errno != EEXIST:
                raise
            # felix (or a stale endpoint) was first: point it at this pod's interface.
            host.route_add(dst, oif=hlink.index, scope=RT_SCOPE_LINK, proto=RTPROT_FELIX, replace=True)
        undo.callback(_quiet, host.route_del, dst)
    log.debug("host route set", dev=host_name, ips=[str(x.ip) for x in addrs])
    fault(a, "after_host")

    result = {
        "interfaces": [spec.iface(host_name, CALI_HOST_MAC), spec.iface(a.ifname, pod_mac, a.netns)],
        "ips": [spec.ip_config(x, None, 1) for x in addrs],
        "routes": routes,
        "dns": {},
    }
    return Wired(result, pod_mac, addresses=addrs)


#: bridges this process has verified recently: (name, gateway) -> (link, monotonic time). An agent
#: serving many ADDs checks cni0 (exists, is a bridge, up, holds the gateway, ip_forward on) at
#: most every BRIDGE_RECHECK seconds instead of three requests per pod; a stale entry (bridge
#: deleted meanwhile) is caught by the veth request's EINVAL and re-ensured on the spot.
BRIDGE_RECHECK = 5.0
_bridges: dict[tuple[str, str], tuple[LinkInfo, float]] = {}
_bridges_lock = threading.Lock()


def ensure_bridge(
    host: Rtnl, name: str, mtu: int, gateway: ipaddress.IPv4Interface, *, fresh: bool = False
) -> LinkInfo:
    key = (name, str(gateway))
    now = time.monotonic()
    with _bridges_lock:
        hit = _bridges.get(key)
    if hit is not None and not fresh and now - hit[1] < BRIDGE_RECHECK:
        return hit[0]
    br = _ensure_bridge(host, name, mtu, gateway)
    with _bridges_lock:
        _bridges[key] = (br, now)
    return br


def _ensure_bridge(host: Rtnl, name: str, mtu: int, gateway: ipaddress.IPv4Interface) -> LinkInfo:
    br = host.link_get(name)
    if br is None:
        try:
            host.bridge_add(name, mtu)
            log.info("bridge created", dev=name)
        except NetlinkError as e:
            if e.errno != EEXIST:  # a concurrent ADD made it
                raise
        br = host.link_get(name)
        if br is None:  # pragma: no cover
            raise CniError(spec.ERR_INTERNAL, f"bridge {name} vanished")
    elif br.kind and br.kind != "bridge":
        raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, f"{name} exists and is a {br.kind}, not a bridge")
    if not br.up:
        host.link_up(name)
    host.addr_add(br.index, gateway)  # EEXIST is success
    if sysctl_read("net/ipv4/ip_forward") != "1":
        sysctl_write("net/ipv4/ip_forward", "1")
    return br


def flannel_add(
    host: Rtnl,
    pod: Rtnl,
    nsfd: int,
    a: CmdArgs,
    *,
    host_name: str,
    bridge: str,
    env: Any,
    mtu: int,
    addresses: Callable[[], list[Any]],
    hairpin: bool,
    default_gateway: bool,
    ip_masq: bool,
    network: str,
    undo: ExitStack,
    flush: Callable[[], bool] | None = None,
) -> Wired:
    gw_iface: ipaddress.IPv4Interface = env.subnet
    br = ensure_bridge(host, bridge, mtu, gw_iface)
    host_mac, pod_mac = random_mac(), random_mac()
    try:
        hinfo = _create_veth(
            host, pod, host_name, host_mac, a, pod_mac, nsfd, mtu, master=br.index, flush=flush
        )
    except NetlinkError as e:
        if e.errno not in (EINVAL, ENODEV):
            raise
        br = ensure_bridge(host, bridge, mtu, gw_iface, fresh=True)  # the cached bridge is gone
        hinfo = _create_veth(
            host, pod, host_name, host_mac, a, pod_mac, nsfd, mtu, master=br.index, flush=flush
        )
    undo.callback(_quiet, host.link_del, host_name)
    if hairpin:
        host.set_hairpin(host_name)
    fault(a, "after_veth")

    addrs = addresses()
    link = _pod_link(pod, a.ifname, hinfo.link if hinfo else 0)
    for x in addrs:
        pod.addr_add(link.index, x.address)
    fault(a, "after_addresses")

    gw = gw_iface.ip
    routes = []
    for net in env.networks:
        pod.route_add(net, oif=link.index, gateway=gw)
        routes.append(spec.route(str(net), str(gw)))
    if default_gateway:
        pod.route_add(_DEFAULT, oif=link.index, gateway=gw)
        routes.append(spec.route("0.0.0.0/0", str(gw)))
    fault(a, "after_routes")

    if ip_masq:
        from pycni.cni import masq

        for x in addrs:
            masq.setup(network, a.container_id, a.ifname, x.address.ip, env.networks)
        undo.callback(_quiet, masq.teardown, network, a.container_id, a.ifname)
    fault(a, "after_host")

    result = {
        "interfaces": [
            spec.iface(bridge, br.mac),
            spec.iface(host_name, host_mac),
            spec.iface(a.ifname, pod_mac, a.netns),
        ],
        "ips": [spec.ip_config(x.address, x.gateway, 2) for x in addrs],
        "routes": routes,
        "dns": {},
    }
    return Wired(result, pod_mac, ip_masq, addresses=addrs)


def host_teardown(host: Rtnl, host_name: str, ips: list[Any], reaper: Any | None) -> None:
    """Remove the pod's host side. With a reaper (agent): make it inert now, destroy it later."""
    if reaper is None:
        if host.link_del(host_name):
            log.info("veth deleted", dev=host_name)
        return
    for ip in ips:
        host.route_del(ipaddress.ip_network((ip.ip, ip.ip.max_prefixlen)), proto=RTPROT_FELIX)
    if host.link_down(host_name, alias=REAP_ALIAS, group=REAP_GROUP):
        reaper.reap(host_name)


def pod_teardown(nsfd: int, ifname: str) -> None:
    with socket_in_netns(nsfd) as pod:
        if pod.link_del(ifname):
            log.info("pod interface deleted", dev=ifname)


def check(
    host: Rtnl, nsfd: int, ifname: str, host_name: str, prev: dict[str, Any], mode: str, bridge: str
) -> list[str]:
    """Compare the kernel with a previous result; return the differences, worded for operators."""
    problems: list[str] = []
    want_mac = next(
        (
            i.get("mac", "")
            for i in prev.get("interfaces", [])
            if i.get("sandbox") and i.get("name") == ifname
        ),
        "",
    )
    with socket_in_netns(nsfd) as pod:
        link = pod.link_get(ifname)
        if link is None:
            return [f"interface {ifname} is missing from the pod namespace"] + _check_host(
                host, host_name, prev, mode, bridge
            )
        if want_mac and link.mac != want_mac.lower():
            problems.append(f"{ifname} has MAC {link.mac}, the ADD result says {want_mac}")
        if not link.up:
            problems.append(f"{ifname} is down")
        have = {str(x) for x in pod.addrs(link.index)}
        for ip in prev.get("ips", []):
            if ip["address"] not in have:
                problems.append(f"address {ip['address']} is missing from {ifname}")
        routes = {(str(r.dst), r.gateway) for r in pod.routes() if r.oif == link.index}
        for r in prev.get("routes", []):
            dst = str(ipaddress.ip_network(r["dst"]))
            if (dst, r.get("gw")) not in routes:
                problems.append(f"route {dst} via {r.get('gw')} is missing in the pod")
        if mode == "calico" and prev.get("routes") and (str(_GW_NET), None) not in routes:
            problems.append(f"route {CALI_GATEWAY} dev {ifname} scope link is missing in the pod")
    return problems + _check_host(host, host_name, prev, mode, bridge)


def _check_host(host: Rtnl, host_name: str, prev: dict[str, Any], mode: str, bridge: str) -> list[str]:
    problems = []
    hl = host.link_get(host_name)
    if hl is None:
        return [f"host interface {host_name} is missing"]
    if not hl.up:
        problems.append(f"host interface {host_name} is down")
    if mode == "calico":
        if hl.mac != CALI_HOST_MAC:
            problems.append(f"{host_name} has MAC {hl.mac}, not {CALI_HOST_MAC}")
        for ip in prev.get("ips", []):
            addr = ipaddress.ip_interface(ip["address"])
            r = host.route_get(addr.ip)
            if r is None or r.oif != hl.index or r.dst.prefixlen != addr.ip.max_prefixlen:
                problems.append(f"host route {addr.ip}/{addr.ip.max_prefixlen} dev {host_name} is missing")
        if sysctl_read(f"net/ipv4/conf/{host_name}/proxy_arp") != "1":
            problems.append(f"proxy_arp is off on {host_name}")
    else:
        br = host.link_get(bridge)
        if br is None:
            problems.append(f"bridge {bridge} is missing")
        elif hl.master != br.index:
            problems.append(f"{host_name} is not a port of {bridge}")
    return problems


__all__ = ["NetnsScope", "bridge_port_name", "calico_add", "check", "flannel_add", "host_teardown"]
