"""FakeNetlink: a stateful fake kernel behind the `Netlink` protocol, with failure injection.

Modelled on Calico felix's `mocknetlink`: tests assert the end state (`fake.routes()`), not call
lists, and `fail_next(op, errno, count)` makes the next calls of one operation fail the way the
kernel would (felix's FailFlags). The contract suite `tests/contract/netlink_contract.py` runs the
same assertions against this fake and against `Pyroute2Netlink` in a throwaway netns, so the
semantics below are the kernel's as observed, not guesses:

- `lo` exists (down) in every namespace; indexes grow from 1;
- adding an existing link is EEXIST; touching an absent one ENODEV; deletes of absent things are False;
- a veth's peer appears in the peer namespace (a `FakeWorld` holds the namespaces by name); deleting
  either end deletes both;
- an IPv4 address on an up link brings its connected route (proto kernel, scope link) into the main
  table; a link going down or away takes with it the routes through it (and its neighbours);
- a unicast route needs its oif up (ENETDOWN), an onlink IPv4 gateway needs `lo` up (EINVAL:
  no local table to classify it), and a gateway reachable on a connected prefix unless
  it is `onlink` (ENETUNREACH); a `src` must be a local address (EINVAL);
- a vxlan's MTU is clamped to its underlay's minus 50 at creation, and larger is EINVAL later;
- a second vxlan with the same VNI and port is EEXIST; `tunl0` exists only when the fake has ipip.
- sysctls: per-interface keys appear and vanish with their link; unknown keys are absent.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from pycni.constants import IPIP_DEV, MAIN_TABLE
from pycni.dataplane.netlink import (
    SCOPE_LINK,
    Fdb,
    IPAddress,
    IPInterface,
    IPNetwork,
    Link,
    Neigh,
    NetlinkError,
    Route,
    VxlanInfo,
)

RTPROT_KERNEL = 2
IFNAMSIZ = 16
ZERO_MAC = "00:00:00:00:00:00"
KINDS = ("veth", "bridge", "vxlan", "ipip", "dummy")

_GLOBAL_SYSCTLS = {
    "net/ipv4/ip_forward": "0",
    "net/ipv4/conf/all/forwarding": "0",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/all/proxy_arp": "0",
    "net/ipv4/conf/default/forwarding": "0",
    "net/ipv4/conf/default/rp_filter": "0",
    "net/ipv4/conf/default/proxy_arp": "0",
    "net/ipv6/conf/all/forwarding": "0",
    "net/ipv6/conf/default/forwarding": "0",
    "net/ipv6/conf/all/disable_ipv6": "0",
}
_IFACE_SYSCTLS = {
    "net/ipv4/conf/{}/forwarding": "0",
    "net/ipv4/conf/{}/proxy_arp": "0",
    "net/ipv4/conf/{}/rp_filter": "0",
    "net/ipv4/conf/{}/route_localnet": "0",
    "net/ipv4/conf/{}/send_redirects": "1",
    "net/ipv4/neigh/{}/proxy_delay": "80",
    "net/ipv6/conf/{}/forwarding": "0",
    "net/ipv6/conf/{}/accept_ra": "1",
    "net/ipv6/conf/{}/disable_ipv6": "0",
    "net/ipv6/conf/{}/proxy_ndp": "0",
}


class FakeWorld:
    """The namespaces a set of fakes can see (so a veth peer can land in another one)."""

    def __init__(self) -> None:
        self.namespaces: dict[str, FakeNetlink] = {}
        self._next_mac = 1

    def netns(self, name: str, *, ipip: bool = False) -> FakeNetlink:
        """The fake for namespace `name`, created on first use."""
        if name not in self.namespaces:
            FakeNetlink(name, world=self, ipip=ipip)
        return self.namespaces[name]

    def lookup(self, netns: str) -> FakeNetlink:
        ns = self.namespaces.get(os.path.basename(netns.rstrip("/")))
        if ns is None:
            raise NetlinkError(f"no such netns {netns}", errno=errno.ENOENT)
        return ns

    def mac(self) -> str:
        n = self._next_mac
        self._next_mac += 1
        return "02:fa:" + ":".join(f"{(n >> sh) & 255:02x}" for sh in (24, 16, 8, 0))


@dataclass
class _L:
    name: str
    kind: str
    index: int
    mtu: int
    address: str
    up: bool = False
    master: str | None = None
    vxlan: VxlanInfo | None = None
    peer: tuple[FakeNetlink, str] | None = None
    addrs: list[IPInterface] = field(default_factory=list)

    def view(self) -> Link:
        return Link(
            name=self.name,
            kind=self.kind,
            index=self.index,
            mtu=self.mtu,
            address=self.address,
            up=self.up,
            master=self.master,
            vxlan=self.vxlan,
        )


class FakeNetlink:
    """See the module docstring. `ops` counts every successful write, by operation name."""

    def __init__(
        self, netns: str | None = None, *, world: FakeWorld | None = None, ipip: bool = False
    ) -> None:
        self.netns = netns or "host"
        self.world = world or FakeWorld()
        if self.netns in self.world.namespaces:
            raise ValueError(f"fake netns {self.netns} exists")
        self.world.namespaces[self.netns] = self
        self.ipip = ipip
        self._links: dict[str, _L] = {}
        self._next_index = 1
        self._routes: dict[tuple[int, IPNetwork, int], Route] = {}
        self._neighs: dict[tuple[str, IPAddress], Neigh] = {}
        self._fdbs: dict[tuple[str, str, IPAddress], Fdb] = {}
        self.sysctls: dict[str, str] = dict(_GLOBAL_SYSCTLS)
        self._failures: dict[str, list[int]] = {}
        self.ops: dict[str, int] = {}
        self.closed = False
        self._new_link("lo", "", mtu=65536, address=ZERO_MAC)
        if ipip:
            self._new_link(IPIP_DEV, "ipip", mtu=1480, address=ZERO_MAC)

    def __repr__(self) -> str:
        return f"FakeNetlink(netns={self.netns!r})"

    # -- test helpers ----------------------------------------------------------------------
    def fail_next(self, op: str, err: int = errno.EIO, count: int = 1) -> None:
        """Make the next `count` calls of operation `op` (a method name) raise NetlinkError(err)."""
        if not hasattr(self, op):
            raise ValueError(f"unknown netlink operation {op!r}")
        self._failures.setdefault(op, []).extend([err] * count)

    def writes(self) -> int:
        """How many state-changing operations succeeded (a no-op apply must not add any)."""
        return sum(self.ops.values())

    def _check(self, op: str) -> None:
        pending = self._failures.get(op)
        if pending:
            err = pending.pop(0)
            raise NetlinkError(f"injected failure of {op}: {os.strerror(err)}", errno=err)

    def _done(self, op: str) -> None:
        self.ops[op] = self.ops.get(op, 0) + 1

    def _get(self, name: str) -> _L:
        link = self._links.get(name)
        if link is None:
            raise NetlinkError(f"no such device: {name}", errno=errno.ENODEV)
        return link

    def _new_link(self, name: str, kind: str, *, mtu: int, address: str = "") -> _L:
        link = _L(name=name, kind=kind, index=self._next_index, mtu=mtu, address=address or self.world.mac())
        self._next_index += 1
        self._links[name] = link
        for tmpl, value in _IFACE_SYSCTLS.items():
            self.sysctls[tmpl.format(name)] = value
        return link

    # -- links -----------------------------------------------------------------------------
    def links(self) -> list[Link]:
        self._check("links")
        return [lk.view() for lk in sorted(self._links.values(), key=lambda x: x.index)]

    def link(self, name: str) -> Link | None:
        self._check("link")
        lk = self._links.get(name)
        return lk.view() if lk else None

    def link_add(self, link: Link) -> Link:
        self._check("link_add")
        if not link.name or len(link.name) >= IFNAMSIZ or "/" in link.name:
            raise NetlinkError(f"bad link name {link.name!r}", errno=errno.EINVAL)
        if link.kind not in KINDS:
            raise NetlinkError(f"unknown link kind {link.kind!r}", errno=errno.EOPNOTSUPP)
        if link.kind == "ipip":
            if not self.ipip:
                raise NetlinkError("ipip is not supported by this kernel", errno=errno.EOPNOTSUPP)
            if link.name == IPIP_DEV:  # the fallback device exists already: success
                if link.mtu:
                    self._links[IPIP_DEV].mtu = link.mtu
                if link.up:
                    self._links[IPIP_DEV].up = True
                self._done("link_add")
                return self._links[IPIP_DEV].view()
        if link.name in self._links:
            raise NetlinkError(f"link {link.name} exists", errno=errno.EEXIST)
        master = self._get(link.master) if link.master else None
        vx: VxlanInfo | None = None
        mtu = link.mtu or 1500
        peer_ns: FakeNetlink | None = None
        peer_name = ""
        if link.kind == "vxlan":
            if link.vxlan is None:
                raise NetlinkError(f"vxlan {link.name} needs VxlanInfo", errno=errno.EINVAL)
            vx = link.vxlan
            for other in self._links.values():
                if other.vxlan and (other.vxlan.vni, other.vxlan.port) == (vx.vni, vx.port):
                    raise NetlinkError(f"a vxlan with VNI {vx.vni} exists", errno=errno.EEXIST)
            if vx.underlay:
                under = self._get(vx.underlay)
                mtu = min(mtu, under.mtu - 50)  # the kernel clamps to the underlay minus headroom
        elif link.kind == "veth":
            peer_ns = self.world.lookup(link.peer_netns) if link.peer_netns is not None else self
            peer_name = link.peer or f"veth{peer_ns._next_index}"
            if peer_name in peer_ns._links or (peer_ns is self and peer_name == link.name):
                raise NetlinkError(f"link {peer_name} exists", errno=errno.EEXIST)
        elif link.kind == "ipip":
            mtu = link.mtu or 1480
        new = self._new_link(link.name, link.kind, mtu=mtu, address=link.address)
        new.vxlan = vx
        new.master = master.name if master else None
        new.up = link.up
        if peer_ns is not None:
            p = peer_ns._new_link(peer_name, "veth", mtu=mtu)
            p.peer = (self, new.name)
            new.peer = (peer_ns, peer_name)
        self._done("link_add")
        return new.view()

    def link_delete(self, name: str) -> bool:
        self._check("link_delete")
        if name not in self._links:
            return False
        if name == "lo":
            raise NetlinkError("cannot delete lo", errno=errno.EOPNOTSUPP)
        self._remove_link(name)
        self._done("link_delete")
        return True

    def _remove_link(self, name: str) -> None:
        link = self._links.pop(name)
        for other in self._links.values():
            if other.master == name:
                other.master = None
            if other.vxlan and other.vxlan.underlay == name:
                other.vxlan = replace(other.vxlan, underlay=None)
        self._flush_dev(name, neighs=True)
        for k in [k for k in self._fdbs if k[0] == name]:
            del self._fdbs[k]
        for sk in [sk for sk in self.sysctls if f"/{name}/" in sk]:
            del self.sysctls[sk]
        if link.peer is not None:
            ns, peer = link.peer
            if peer in ns._links:
                ns._links[peer].peer = None
                ns._remove_link(peer)

    def _flush_dev(self, name: str, *, neighs: bool) -> None:
        for k in [k for k, r in self._routes.items() if r.oif == name]:
            del self._routes[k]
        if neighs:
            for nk in [k for k in self._neighs if k[0] == name]:
                del self._neighs[nk]

    def link_set(
        self,
        name: str,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        address: str | None = None,
        master: str | None = None,
    ) -> None:
        self._check("link_set")
        link = self._get(name)
        if master:
            m = self._get(master)
            if m.kind != "bridge":
                raise NetlinkError(f"{master} is not a bridge", errno=errno.EOPNOTSUPP)
        if mtu is not None and mtu < 68 and link.kind != "lo":
            raise NetlinkError(f"mtu {mtu} too small", errno=errno.EINVAL)
        if mtu is not None and link.vxlan is not None and link.vxlan.underlay:
            if mtu > self._links[link.vxlan.underlay].mtu - 50:
                raise NetlinkError(
                    f"mtu {mtu} exceeds {link.vxlan.underlay} minus headroom", errno=errno.EINVAL
                )
        if mtu is not None:
            link.mtu = mtu
        if address is not None:
            link.address = address.lower()
        if master is not None:
            link.master = master or None
        if up is not None:
            if link.up and not up:
                # The kernel flushes IPv4 routes and all neighbours through a device going down.
                self._flush_dev(name, neighs=True)
            was_up, link.up = link.up, up
            if up and not was_up:
                for a in link.addrs:
                    self._add_connected(link, a)
        self._done("link_set")

    # -- addresses -------------------------------------------------------------------------
    def addrs(self, ifname: str) -> list[IPInterface]:
        self._check("addrs")
        return list(self._get(ifname).addrs)

    def addr_add(self, ifname: str, addr: IPInterface) -> None:
        self._check("addr_add")
        link = self._get(ifname)
        if addr not in link.addrs:
            link.addrs.append(addr)
            self._add_connected(link, addr)
            self._done("addr_add")

    def addr_delete(self, ifname: str, addr: IPInterface) -> bool:
        self._check("addr_delete")
        link = self._links.get(ifname)
        if link is None or addr not in link.addrs:
            return False
        link.addrs.remove(addr)
        key = (MAIN_TABLE, addr.network, 0)
        have = self._routes.get(key)
        if have is not None and have.proto == RTPROT_KERNEL and have.oif == ifname:
            del self._routes[key]
        self._done("addr_delete")
        return True

    # -- routes ----------------------------------------------------------------------------
    def _add_connected(self, link: _L, addr: IPInterface) -> None:
        """The kernel's prefix route for an IPv4 address on an up link (proto kernel, scope link)."""
        if not link.up or link.name == "lo" or addr.version != 4 or addr.network.prefixlen == 32:
            return
        r = Route(
            dst=addr.network,
            oif=link.name,
            proto=RTPROT_KERNEL,
            table=MAIN_TABLE,
            scope=SCOPE_LINK,
            src=addr.ip,
        )
        self._routes.setdefault(r.key, r)

    def _all_routes(self, table: int) -> list[Route]:
        return [r for r in self._routes.values() if r.table == table]

    def routes(self, *, table: int = MAIN_TABLE, proto: int | None = None) -> list[Route]:
        self._check("routes")
        return [r for r in self._all_routes(table) if proto is None or r.proto == proto]

    def _local_addrs(self) -> set[IPAddress]:
        return {a.ip for lk in self._links.values() for a in lk.addrs}

    def route_replace(self, route: Route) -> None:
        self._check("route_replace")
        if route.type == "unicast":
            if route.oif is None and route.gateway is None:
                raise NetlinkError(f"route {route.dst} needs a device or gateway", errno=errno.EINVAL)
            if route.oif is not None:
                link = self._get(route.oif)
                if not link.up:
                    raise NetlinkError(f"route {route.dst}: {route.oif} is down", errno=errno.ENETDOWN)
            if route.onlink and route.oif is None:
                raise NetlinkError(f"onlink route {route.dst} needs a device", errno=errno.EINVAL)
            if route.gateway is not None and route.onlink and route.gateway.version == 4:
                # Without a local table (lo down, no address anywhere) the kernel cannot classify
                # the gateway and rejects even an onlink next hop: "Nexthop has invalid gateway".
                if not self._links["lo"].up:
                    raise NetlinkError(f"route {route.dst}: invalid gateway (lo is down)", errno=errno.EINVAL)
            if route.gateway is not None and not route.onlink:
                gw = route.gateway
                reach = [
                    lk.name
                    for lk in self._links.values()
                    if lk.up
                    and (route.oif is None or lk.name == route.oif)
                    and (
                        any(gw in a.network for a in lk.addrs if a.version == gw.version)
                        or (gw.version == 6 and gw.is_link_local and route.oif is not None)
                    )
                ] + [
                    r.oif
                    for r in self._all_routes(MAIN_TABLE)
                    if r.type == "unicast"
                    and r.gateway is None
                    and r.oif is not None
                    and r.scope == SCOPE_LINK
                    and (route.oif is None or r.oif == route.oif)
                    and r.dst.version == gw.version
                    and gw in r.dst
                ]
                if not reach:
                    raise NetlinkError(
                        f"route {route.dst}: gateway {gw} unreachable", errno=errno.ENETUNREACH
                    )
                if route.oif is None:
                    route = replace(route, oif=reach[0])
            if route.src is not None and route.src not in self._local_addrs():
                raise NetlinkError(f"route {route.dst}: src {route.src} is not local", errno=errno.EINVAL)
        else:
            route = replace(route, oif=None, gateway=None, onlink=False, src=None)
        self._routes[route.key] = route
        self._done("route_replace")

    def route_delete(self, route: Route) -> bool:
        self._check("route_delete")
        have = self._routes.get(route.key)
        if have is None or have.proto != route.proto or have.type != route.type:
            return False
        del self._routes[route.key]
        self._done("route_delete")
        return True

    def route_get(self, dst: IPAddress) -> Route | None:
        self._check("route_get")
        cands = [r for r in self._all_routes(MAIN_TABLE) if r.dst.version == dst.version and dst in r.dst]
        if not cands:
            return None
        best = max(cands, key=lambda r: (r.dst.prefixlen, -r.metric))
        if best.type != "unicast":
            return None
        host = ipaddress.ip_network(f"{dst}/{dst.max_prefixlen}")
        src = best.src
        if src is None and best.oif is not None:
            v = [a.ip for a in self._links[best.oif].addrs if a.version == dst.version]
            src = v[0] if v else None
        return Route(
            dst=host,
            gateway=best.gateway,
            oif=best.oif,
            proto=0,
            table=MAIN_TABLE,
            src=src,
            onlink=best.onlink,
        )

    # -- neighbours ------------------------------------------------------------------------
    def neighs(self, ifname: str) -> list[Neigh]:
        self._check("neighs")
        self._get(ifname)
        return [n for k, n in self._neighs.items() if k[0] == ifname]

    def neigh_replace(self, neigh: Neigh) -> None:
        self._check("neigh_replace")
        self._get(neigh.ifname)
        self._neighs[neigh.key] = replace(neigh, lladdr=neigh.lladdr.lower())
        self._done("neigh_replace")

    def neigh_delete(self, neigh: Neigh) -> bool:
        self._check("neigh_delete")
        if self._neighs.pop(neigh.key, None) is None:
            return False
        self._done("neigh_delete")
        return True

    # -- fdb -------------------------------------------------------------------------------
    def fdbs(self, ifname: str) -> list[Fdb]:
        self._check("fdbs")
        self._get(ifname)
        return [f for k, f in self._fdbs.items() if k[0] == ifname]

    def fdb_replace(self, fdb: Fdb) -> None:
        self._check("fdb_replace")
        self._get(fdb.ifname)
        fdb = replace(fdb, lladdr=fdb.lladdr.lower())
        if fdb.lladdr != ZERO_MAC:  # one remote per MAC: replace moves it
            for k in [k for k in self._fdbs if k[0] == fdb.ifname and k[1] == fdb.lladdr]:
                del self._fdbs[k]
        self._fdbs[fdb.key] = fdb
        self._done("fdb_replace")

    def fdb_delete(self, fdb: Fdb) -> bool:
        self._check("fdb_delete")
        if self._fdbs.pop(replace(fdb, lladdr=fdb.lladdr.lower()).key, None) is None:
            return False
        self._done("fdb_delete")
        return True

    # -- sysctls ---------------------------------------------------------------------------
    def sysctl_get(self, name: str) -> str | None:
        self._check("sysctl_get")
        return self.sysctls.get(name.strip("/"))

    def sysctl_set(self, name: str, value: str) -> None:
        self._check("sysctl_set")
        key = name.strip("/")
        if key not in self.sysctls:
            raise NetlinkError(f"no sysctl {name}", errno=errno.ENOENT)
        self.sysctls[key] = str(value)
        self._done("sysctl_set")

    def close(self) -> None:
        self.closed = True

    # -- convenience for tests -------------------------------------------------------------
    def add_links(self, links: Iterable[Link]) -> None:
        for link in links:
            self.link_add(link)
