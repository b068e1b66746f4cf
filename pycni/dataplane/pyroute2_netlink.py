"""Pyroute2Netlink: the `Netlink` protocol over pyroute2's `IPRoute`, the only pyroute2 importer.

One instance talks to one network namespace for its whole life: the current one (`netns=None`)
or a named one (a name under /run/netns, or any nsfs path such as /proc/<pid>/ns/net). For a named
netns we open the nsfs file once and hand its fd to `IPRoute(netns=fd)`, which forks a short-lived
helper that opens the netlink socket inside the namespace and passes it back; our own process never
calls `setns`, so no other thread can be caught in the wrong namespace (the CNI `pkg/ns` hazard).
The socket is kept and reused, so the fork is paid once per instance (about 15 ms), not per call.

Sysctls are the exception netlink cannot cover: /proc/sys/net shows the namespace of the task that
opens the file. So a named-netns `sysctl_get/set` runs in a short-lived thread that `setns`es only
itself (setns affects the calling thread alone) and then touches /proc/sys; the thread exits and
takes the namespace with it.

Everything crosses the seam as our frozen types (`Route`, `Link`, ...), interfaces by name.
Kernel errors become `NetlinkError(errno=...)`; "already gone" on delete is `False`, not an error.

Normalisations (so that a dump compares equal to what was written):
- IPv6 routes written with metric 0 get the kernel default 1024; a dump reports 1024 as 0.
- Blackhole/unreachable routes report `oif=None` (IPv6 ones are attached to `lo` in the kernel).
- Only the ONLINK bit of the route flags is kept (LINKDOWN etc. are state, not configuration).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as PyNetlinkError
from pyroute2.netlink.rtnl import rt_type as RT_TYPES

from pycni.constants import IPIP_DEV, MAIN_TABLE
from pycni.dataplane.netlink import (
    Fdb,
    IPAddress,
    IPInterface,
    Link,
    Neigh,
    NetlinkError,
    Route,
    VxlanInfo,
)

T = TypeVar("T")

NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
IFF_UP = 0x1
CLONE_NEWNET = 0x40000000
IPV6_DEFAULT_METRIC = 1024
NETNS_RUN_DIR = "/run/netns"
ZERO_MAC = "00:00:00:00:00:00"

_RT_TYPE_NAMES = {v: k for k, v in RT_TYPES.items() if isinstance(k, str)}


def netns_path(netns: str) -> str:
    """A netns given as a name under /run/netns, or as a path (anything with a '/')."""
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except PyNetlinkError as e:
        raise NetlinkError(f"{what}: {e}", errno=e.code) from None
    except OSError as e:
        raise NetlinkError(f"{what}: {e}", errno=e.errno or 0) from None


def _family(addr: IPAddress | ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


class Pyroute2Netlink:
    """The real kernel seam; see the module docstring."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._lock = threading.RLock()
        self._nsfd: int | None = None
        try:
            if netns is None:
                self._ipr = IPRoute()
            else:
                self._nsfd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
                self._ipr = IPRoute(netns=self._nsfd, flags=0)
        except OSError as e:
            if self._nsfd is not None:
                os.close(self._nsfd)
            raise NetlinkError(f"cannot open netns {netns!r}: {e}", errno=e.errno or 0) from None
        self._closed = False

    def __repr__(self) -> str:
        return f"Pyroute2Netlink(netns={self.netns!r})"

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(Exception):
                self._ipr.close()
            if self._nsfd is not None:
                os.close(self._nsfd)
                self._nsfd = None

    def __enter__(self) -> Pyroute2Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        with self._lock, _errors(what):
            return fn()

    # -- links -----------------------------------------------------------------------------
    def _index(self, name: str) -> int:
        idx = self._index_or_none(name)
        if idx is None:
            raise NetlinkError(f"no such device: {name}", errno=errno_mod.ENODEV)
        return idx

    def _index_or_none(self, name: str) -> int | None:
        found = self._call(f"lookup {name}", lambda: self._ipr.link_lookup(ifname=name))
        return int(found[0]) if found else None

    def _names(self) -> dict[int, str]:
        msgs = self._call("dump links", lambda: list(self._ipr.get_links()))
        return {int(m["index"]): str(m.get("ifname")) for m in msgs}

    def _to_link(self, msg: Any, names: dict[int, str]) -> Link:
        kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""
        vx: VxlanInfo | None = None
        if kind == "vxlan":

            def d(attr: str) -> Any:
                return msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", attr)

            local = d("IFLA_VXLAN_LOCAL") or d("IFLA_VXLAN_LOCAL6")
            underlay_idx = d("IFLA_VXLAN_LINK")
            vx = VxlanInfo(
                vni=int(d("IFLA_VXLAN_ID") or 0),
                port=int(d("IFLA_VXLAN_PORT") or 0),
                local=ipaddress.ip_address(local) if local else None,
                underlay=names.get(int(underlay_idx)) if underlay_idx else None,
                learning=bool(d("IFLA_VXLAN_LEARNING")),
            )
        master = msg.get("IFLA_MASTER")
        return Link(
            name=str(msg.get("IFLA_IFNAME")),
            kind=str(kind),
            index=int(msg["index"]),
            mtu=int(msg.get("IFLA_MTU") or 0),
            address=str(msg.get("IFLA_ADDRESS") or "").lower(),
            up=bool(int(msg["flags"]) & IFF_UP),
            master=names.get(int(master)) if master else None,
            vxlan=vx,
        )

    def links(self) -> list[Link]:
        msgs = self._call("dump links", lambda: list(self._ipr.get_links()))
        names = {int(m["index"]): str(m.get("IFLA_IFNAME")) for m in msgs}
        return [self._to_link(m, names) for m in msgs]

    def link(self, name: str) -> Link | None:
        try:
            msgs = self._call(f"get link {name}", lambda: list(self._ipr.link("get", ifname=name)))
        except NetlinkError as e:
            if e.errno == errno_mod.ENODEV:
                return None
            raise
        if not msgs:
            return None
        m = msgs[0]
        wants_names = m.get("IFLA_MASTER") or m.get_nested(
            "IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_VXLAN_LINK"
        )
        return self._to_link(m, self._names() if wants_names else {})

    def link_add(self, link: Link) -> Link:
        spec: dict[str, Any] = {"ifname": link.name, "kind": link.kind}
        if link.mtu and link.kind != "vxlan":
            spec["mtu"] = link.mtu
        if link.address:
            spec["address"] = link.address
        peer_fd: int | None = None
        try:
            if link.kind == "veth":
                peer: dict[str, Any] = {"ifname": link.peer} if link.peer else {}
                if link.mtu:
                    peer["mtu"] = link.mtu
                if link.peer_netns is not None:
                    with _errors(f"open netns {link.peer_netns}"):
                        peer_fd = os.open(netns_path(link.peer_netns), os.O_RDONLY | os.O_CLOEXEC)
                    peer["net_ns_fd"] = peer_fd
                spec["peer"] = peer
            elif link.kind == "vxlan":
                if link.vxlan is None:
                    raise NetlinkError(f"vxlan {link.name} needs VxlanInfo", errno=errno_mod.EINVAL)
                vx = link.vxlan
                spec["vxlan_id"] = vx.vni
                spec["vxlan_port"] = vx.port
                spec["vxlan_learning"] = 1 if vx.learning else 0
                if vx.local is not None:
                    spec["vxlan_local" if vx.local.version == 4 else "vxlan_local6"] = str(vx.local)
                if vx.underlay:
                    spec["vxlan_link"] = self._index(vx.underlay)
                if link.mtu:
                    spec["mtu"] = link.mtu
            if link.master:
                spec["master"] = self._index(link.master)
            try:
                self._call(f"add link {link.name}", lambda: self._ipr.link("add", **spec))
            except NetlinkError as e:
                # With the ipip module loaded the kernel makes `tunl0` in every netns itself.
                if not (e.errno == errno_mod.EEXIST and link.kind == "ipip" and link.name == IPIP_DEV):
                    raise
                if link.mtu:
                    self.link_set(link.name, mtu=link.mtu)
        finally:
            if peer_fd is not None:
                os.close(peer_fd)
        if link.up:
            self.link_set(link.name, up=True)
        got = self.link(link.name)
        if got is None:  # raced with a delete; report as the kernel would
            raise NetlinkError(f"link {link.name} vanished after add", errno=errno_mod.ENODEV)
        return got

    def link_delete(self, name: str) -> bool:
        idx = self._index_or_none(name)
        if idx is None:
            return False
        try:
            self._call(f"delete link {name}", lambda: self._ipr.link("del", index=idx))
        except NetlinkError as e:
            if e.errno in (errno_mod.ENODEV, errno_mod.ENOENT):
                return False
            raise
        return True

    def link_set(
        self,
        name: str,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        address: str | None = None,
        master: str | None = None,
    ) -> None:
        idx = self._index(name)
        spec: dict[str, Any] = {}
        if mtu is not None:
            spec["mtu"] = mtu
        if address is not None:
            spec["address"] = address
        if master is not None:
            spec["master"] = self._index(master) if master else 0
        if up is not None:
            spec["state"] = "up" if up else "down"
        if spec:
            self._call(f"set link {name}", lambda: self._ipr.link("set", index=idx, **spec))

    # -- addresses -------------------------------------------------------------------------
    def addrs(self, ifname: str) -> list[IPInterface]:
        idx = self._index(ifname)
        out: list[IPInterface] = []
        for m in self._call(f"dump addrs {ifname}", lambda: list(self._ipr.get_addr(index=idx))):
            if int(m.get("index", idx)) != idx:
                continue
            a = m.get("IFA_LOCAL") or m.get("IFA_ADDRESS")
            if a:
                out.append(ipaddress.ip_interface(f"{a}/{m['prefixlen']}"))
        return out

    def addr_add(self, ifname: str, addr: IPInterface) -> None:
        idx = self._index(ifname)
        try:
            self._call(
                f"add addr {addr} {ifname}",
                lambda: self._ipr.addr(
                    "add", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen
                ),
            )
        except NetlinkError as e:
            if e.errno != errno_mod.EEXIST:
                raise

    def addr_delete(self, ifname: str, addr: IPInterface) -> bool:
        idx = self._index_or_none(ifname)
        if idx is None:
            return False
        try:
            self._call(
                f"delete addr {addr} {ifname}",
                lambda: self._ipr.addr(
                    "del", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen
                ),
            )
        except NetlinkError as e:
            if e.errno in (errno_mod.EADDRNOTAVAIL, errno_mod.ENOENT, errno_mod.ENODEV, errno_mod.ESRCH):
                return False
            raise
        return True

    # -- routes ----------------------------------------------------------------------------
    def _to_route(self, m: Any, names: dict[int, str]) -> Route:
        fam = int(m["family"])
        dst_s = m.get("RTA_DST")
        plen = int(m["dst_len"])
        if dst_s is None:
            dst_s = "0.0.0.0" if fam == socket.AF_INET else "::"
        dst = ipaddress.ip_network(f"{dst_s}/{plen}", strict=False)
        rtype = _RT_TYPE_NAMES.get(int(m["type"]), str(m["type"]))
        oif_idx = m.get("RTA_OIF")
        gw = m.get("RTA_GATEWAY")
        src = m.get("RTA_PREFSRC")
        metric = int(m.get("RTA_PRIORITY") or 0)
        if fam == socket.AF_INET6 and metric == IPV6_DEFAULT_METRIC:
            metric = 0
        mtu = 0
        metrics = m.get("RTA_METRICS")
        if metrics is not None:
            mtu = int(metrics.get("RTAX_MTU") or 0)
        return Route(
            dst=dst,
            gateway=ipaddress.ip_address(gw) if gw else None,
            oif=names.get(int(oif_idx)) if (oif_idx and rtype == "unicast") else None,
            proto=int(m["proto"]),
            table=int(m.get("RTA_TABLE") or m["table"]),
            scope=int(m["scope"]),
            type=rtype,
            onlink=bool(int(m["flags"]) & RTNH_F_ONLINK),
            src=ipaddress.ip_address(src) if src else None,
            metric=metric,
            mtu=mtu,
        )

    def routes(self, *, table: int = MAIN_TABLE, proto: int | None = None) -> list[Route]:
        flt: dict[str, Any] = {"family": socket.AF_UNSPEC, "table": table}
        if proto is not None:
            flt["proto"] = proto
        msgs = self._call("dump routes", lambda: list(self._ipr.route("dump", **flt)))
        names = self._names()
        out: list[Route] = []
        for m in msgs:
            if int(m.get("RTA_TABLE") or m["table"]) != table:
                continue
            if proto is not None and int(m["proto"]) != proto:
                continue
            if int(m["type"]) not in (
                RT_TYPES["unicast"],
                RT_TYPES["blackhole"],
                RT_TYPES["unreachable"],
                RT_TYPES["prohibit"],
                RT_TYPES["local"],
            ):
                continue
            out.append(self._to_route(m, names))
        return out

    def _route_spec(self, route: Route) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "family": _family(route.dst),
            "dst": str(route.dst),
            "table": route.table,
            "proto": route.proto,
            "type": route.type,
            "scope": route.scope,
        }
        if route.metric:
            spec["priority"] = route.metric
        if route.type == "unicast":
            if route.oif:
                spec["oif"] = self._index(route.oif)
            if route.gateway is not None:
                spec["gateway"] = str(route.gateway)
            if route.onlink:
                spec["flags"] = RTNH_F_ONLINK
            if route.src is not None:
                spec["prefsrc"] = str(route.src)
        if route.mtu:
            spec["metrics"] = {"mtu": route.mtu}
        return spec

    def route_replace(self, route: Route) -> None:
        spec = self._route_spec(route)
        self._call(f"replace route {route.dst}", lambda: self._ipr.route("replace", **spec))

    def route_delete(self, route: Route) -> bool:
        # Only identity attributes: the kernel matches a delete on whatever we pass, and proto
        # guarantees we never delete another writer's route with the same prefix.
        spec: dict[str, Any] = {
            "family": _family(route.dst),
            "dst": str(route.dst),
            "table": route.table,
            "proto": route.proto,
            "type": route.type,
        }
        if route.metric:
            spec["priority"] = route.metric
        try:
            self._call(f"delete route {route.dst}", lambda: self._ipr.route("del", **spec))
        except NetlinkError as e:
            if e.errno in (errno_mod.ESRCH, errno_mod.ENOENT):
                return False
            raise
        return True

    def route_get(self, dst: IPAddress) -> Route | None:
        try:
            msgs = self._call(
                f"get route {dst}",
                lambda: list(self._ipr.route("get", family=_family(dst), dst=str(dst))),
            )
        except NetlinkError as e:
            # EINVAL: the best match is a blackhole/unreachable route, i.e. no usable path.
            if e.errno in (errno_mod.ENETUNREACH, errno_mod.EHOSTUNREACH, errno_mod.ESRCH, errno_mod.EINVAL):
                return None
            raise
        if not msgs:
            return None
        return self._to_route(msgs[0], self._names())

    # -- neighbours ------------------------------------------------------------------------
    def neighs(self, ifname: str) -> list[Neigh]:
        idx = self._index(ifname)
        out: list[Neigh] = []
        for fam in (socket.AF_INET, socket.AF_INET6):

            def dump(fam: int = fam) -> list[Any]:
                return list(self._ipr.neigh("dump", ifindex=idx, family=fam))

            msgs = self._call(f"dump neighs {ifname}", dump)
            for m in msgs:
                if int(m["ifindex"]) != idx:
                    continue
                dst, ll = m.get("NDA_DST"), m.get("NDA_LLADDR")
                if not dst or not ll:
                    continue
                out.append(
                    Neigh(
                        ifname=ifname,
                        dst=ipaddress.ip_address(dst),
                        lladdr=str(ll).lower(),
                        permanent=bool(int(m["state"]) & NUD_PERMANENT),
                    )
                )
        return out

    def neigh_replace(self, neigh: Neigh) -> None:
        idx = self._index(neigh.ifname)
        self._call(
            f"replace neigh {neigh.dst} {neigh.ifname}",
            lambda: self._ipr.neigh(
                "replace",
                ifindex=idx,
                family=_family(neigh.dst),
                dst=str(neigh.dst),
                lladdr=neigh.lladdr,
                state=NUD_PERMANENT if neigh.permanent else 0x02,  # NUD_REACHABLE
            ),
        )

    def neigh_delete(self, neigh: Neigh) -> bool:
        idx = self._index_or_none(neigh.ifname)
        if idx is None:
            return False
        try:
            self._call(
                f"delete neigh {neigh.dst} {neigh.ifname}",
                lambda: self._ipr.neigh("del", ifindex=idx, family=_family(neigh.dst), dst=str(neigh.dst)),
            )
        except NetlinkError as e:
            if e.errno in (errno_mod.ENOENT, errno_mod.ESRCH, errno_mod.ENODEV):
                return False
            raise
        return True

    # -- fdb (vxlan forwarding entries: AF_BRIDGE, NTF_SELF, with an underlay dst) ---------
    def fdbs(self, ifname: str) -> list[Fdb]:
        idx = self._index(ifname)
        msgs = self._call(f"dump fdb {ifname}", lambda: list(self._ipr.fdb("dump", ifindex=idx)))
        out: list[Fdb] = []
        for m in msgs:
            if int(m["ifindex"]) != idx:
                continue
            ll, dst = m.get("NDA_LLADDR"), m.get("NDA_DST")
            if not ll or not dst:
                continue
            out.append(Fdb(ifname=ifname, lladdr=str(ll).lower(), dst=ipaddress.ip_address(dst)))
        return out

    def fdb_replace(self, fdb: Fdb) -> None:
        idx = self._index(fdb.ifname)
        # One dst per MAC (flannel/Calico style) except the all-zeros MAC, whose entries form a
        # flood list: those are appended.
        op = "append" if fdb.lladdr == ZERO_MAC else "replace"
        try:
            self._call(
                f"{op} fdb {fdb.lladdr} {fdb.ifname}",
                lambda: self._ipr.fdb(
                    op,
                    ifindex=idx,
                    lladdr=fdb.lladdr,
                    dst=str(fdb.dst),
                    state=NUD_PERMANENT | NUD_NOARP,
                    flags=NTF_SELF,
                ),
            )
        except NetlinkError as e:
            if not (op == "append" and e.errno == errno_mod.EEXIST):
                raise

    def fdb_delete(self, fdb: Fdb) -> bool:
        idx = self._index_or_none(fdb.ifname)
        if idx is None:
            return False
        try:
            self._call(
                f"delete fdb {fdb.lladdr} {fdb.ifname}",
                lambda: self._ipr.fdb(
                    "del", ifindex=idx, lladdr=fdb.lladdr, dst=str(fdb.dst), flags=NTF_SELF
                ),
            )
        except NetlinkError as e:
            if e.errno in (errno_mod.ENOENT, errno_mod.ESRCH, errno_mod.ENODEV):
                return False
            raise
        return True

    # -- sysctls ---------------------------------------------------------------------------
    def _in_netns(self, fn: Callable[[], T]) -> T:
        """Run `fn` in this object's netns: directly for the current one, else in a thread that
        setns()es only itself (so /proc/sys/net resolves to the target namespace)."""
        if self._nsfd is None:
            return fn()
        box: dict[str, Any] = {}
        nsfd = self._nsfd

        def worker() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(nsfd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns: {os.strerror(err)}")
                box["value"] = fn()
            except BaseException as e:  # handed to the caller
                box["error"] = e

        t = threading.Thread(target=worker, name=f"pycni-netns-{self.netns}", daemon=True)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    @staticmethod
    def _sysctl_path(name: str) -> str:
        parts = name.strip("/").split("/")
        if not parts or any(p in ("", ".", "..") for p in parts):
            raise NetlinkError(f"bad sysctl name {name!r}", errno=errno_mod.EINVAL)
        return os.path.join("/proc/sys", *parts)

    def sysctl_get(self, name: str) -> str | None:
        path = self._sysctl_path(name)

        def read() -> str | None:
            try:
                with open(path) as f:
                    return f.read().strip()
            except FileNotFoundError:
                return None

        with _errors(f"read sysctl {name}"):
            return self._in_netns(read)

    def sysctl_set(self, name: str, value: str) -> None:
        path = self._sysctl_path(name)

        def write() -> None:
            with open(path, "w") as f:
                f.write(str(value))

        with _errors(f"write sysctl {name}"):
            self._in_netns(write)
