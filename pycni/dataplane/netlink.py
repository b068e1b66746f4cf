"""The netlink seam: our own kernel object types and the `Netlink` protocol over them.

Only `pycni.dataplane.pyroute2_netlink` imports pyroute2; `pycni.testing.fake_netlink` is the
stateful fake. One contract suite (`tests/contract/netlink_contract.py`) runs against both, so the
fake stays honest. Objects are frozen dataclasses with `ipaddress` types; interfaces are named,
not indexed, because indexes differ between namespaces and across restarts.

Every call operates on one network namespace fixed at construction (a named netns is entered by
the adapter without `setns` in our own process, or the current one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pycni.constants import MAIN_TABLE, RTPROT_BOOT
from pycni.model import IPAddress, IPInterface, IPNetwork  # noqa: F401

SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
SCOPE_HOST = 254


class NetlinkError(Exception):
    """A kernel operation failed; `errno` is the kernel's (EEXIST, ENOENT, ENODEV, ...)."""

    def __init__(self, msg: str, errno: int = 0) -> None:
        super().__init__(msg)
        self.errno = errno


@dataclass(frozen=True, slots=True)
class Route:
    dst: IPNetwork
    gateway: IPAddress | None = None
    oif: str | None = None  # output interface name; None for blackholes
    proto: int = RTPROT_BOOT
    table: int = MAIN_TABLE
    scope: int = SCOPE_UNIVERSE
    type: str = "unicast"  # "unicast" | "blackhole" | "unreachable" | "local"
    onlink: bool = False
    src: IPAddress | None = None
    metric: int = 0
    mtu: int = 0

    @property
    def key(self) -> tuple[int, IPNetwork, int]:
        """Identity in a table: (table, dst, metric). Two routes with one key cannot coexist."""
        return (self.table, self.dst, self.metric)


@dataclass(frozen=True, slots=True)
class Neigh:
    """A neighbour (ARP/ND) entry; ours are always NUD_PERMANENT."""

    ifname: str
    dst: IPAddress
    lladdr: str  # lower-case "aa:bb:cc:dd:ee:ff"
    permanent: bool = True

    @property
    def key(self) -> tuple[str, IPAddress]:
        return (self.ifname, self.dst)


@dataclass(frozen=True, slots=True)
class Fdb:
    """A bridge forwarding entry on a vxlan device: frames to `lladdr` go to underlay `dst`."""

    ifname: str
    lladdr: str
    dst: IPAddress

    @property
    def key(self) -> tuple[str, str, IPAddress]:
        return (self.ifname, self.lladdr, self.dst)


@dataclass(frozen=True, slots=True)
class VxlanInfo:
    vni: int
    port: int = 8472
    local: IPAddress | None = None
    underlay: str | None = None  # device name the tunnel is bound to
    learning: bool = False


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    kind: str = ""  # "veth", "bridge", "vxlan", "ipip", "dummy", "" (physical/unknown)
    index: int = 0
    mtu: int = 1500
    address: str = ""  # MAC, lower-case
    up: bool = False
    master: str | None = None
    vxlan: VxlanInfo | None = None
    peer: str | None = None  # veth: the peer's name, when creating
    peer_netns: str | None = None  # veth: netns path or name for the peer, when creating
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


class Netlink(Protocol):
    # links
    def links(self) -> list[Link]: ...
    def link(self, name: str) -> Link | None: ...
    def link_add(self, link: Link) -> Link: ...  # raises NetlinkError(errno=EEXIST)
    def link_delete(self, name: str) -> bool: ...  # False when absent
    def link_set(
        self,
        name: str,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        address: str | None = None,
        master: str | None = None,
    ) -> None: ...

    # addresses
    def addrs(self, ifname: str) -> list[IPInterface]: ...
    def addr_add(self, ifname: str, addr: IPInterface) -> None: ...  # EEXIST tolerated
    def addr_delete(self, ifname: str, addr: IPInterface) -> bool: ...

    # routes: `routes()` dumps one table (optionally only one protocol's routes)
    def routes(self, *, table: int = MAIN_TABLE, proto: int | None = None) -> list[Route]: ...
    def route_replace(self, route: Route) -> None: ...
    def route_delete(self, route: Route) -> bool: ...
    def route_get(self, dst: IPAddress) -> Route | None: ...  # the kernel's lookup (for DirectRouting)

    # neighbours and fdb
    def neighs(self, ifname: str) -> list[Neigh]: ...
    def neigh_replace(self, neigh: Neigh) -> None: ...
    def neigh_delete(self, neigh: Neigh) -> bool: ...
    def fdbs(self, ifname: str) -> list[Fdb]: ...
    def fdb_replace(self, fdb: Fdb) -> None: ...
    def fdb_delete(self, fdb: Fdb) -> bool: ...

    # sysctls of this namespace ("net/ipv4/conf/cali123/proxy_arp")
    def sysctl_get(self, name: str) -> str | None: ...
    def sysctl_set(self, name: str, value: str) -> None: ...

    def close(self) -> None: ...


class Driver(Protocol):
    """A reconciling driver: desired state in, minimal kernel changes out.

    `set_desired` does no I/O; `apply` dumps the kernel when a resync is queued (or on first
    use), makes the minimal changes, and returns True when nothing is left pending (False means
    "call me again after a back-off").
    """

    name: str

    def queue_resync(self) -> None: ...
    def apply(self) -> bool: ...
