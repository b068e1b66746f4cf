"""The plugin's view of IPAM: one small protocol, two back ends (host-local, Calico blocks).

The CNI verbs need five things from an address manager: assign for (container, ifname), release
it (idempotently, also when everything else is gone), look it up (CHECK), release everything not
in a valid set (GC) and say whether it can still hand out addresses (STATUS). `PodIpam` is that,
and nothing more, so the verbs are written once and tested with host-local, and the Calico block
allocator (`pycni.ipam.allocator.BlockAllocator`, CAS over the datastore) plugs in unchanged.

Calico's handle for a pod is `<network>.<containerID>` (calico:cni-plugin/pkg/ipamplugin), so
calicoctl ipam and calico-node's GC understand our allocations.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pycni.cni import spec
from pycni.cni.spec import CniError
from pycni.errors import Invalid, Transient, Unavailable
from pycni.ipam import host_local
from pycni.model import IPAddress, IPInterface


@dataclass(frozen=True, slots=True)
class Assigned:
    address: IPInterface
    gateway: IPAddress | None = None


@dataclass(frozen=True, slots=True)
class Owner:
    network: str
    container_id: str
    ifname: str
    pod_namespace: str = ""
    pod_name: str = ""
    node: str = ""

    @property
    def handle(self) -> str:
        return f"{self.network}.{self.container_id}"


class PodIpam(Protocol):
    def assign(self, owner: Owner) -> list[Assigned]: ...
    def release(self, owner: Owner, hint: Iterable[IPAddress] = ()) -> None: ...
    def lookup(self, owner: Owner, hint: Iterable[IPAddress] = ()) -> list[IPAddress]: ...
    def release_except(self, network: str, valid: Iterable[tuple[str, str]]) -> list[str]: ...
    def free(self) -> int | None: ...


class HostLocalIpam:
    """host-local, over one network's directory; addresses keep the range's prefix length."""

    def __init__(self, data_dir: str, network: str, ranges: list[host_local.Range]) -> None:
        self.store = host_local.HostLocalStore(data_dir, network)
        self.ranges = ranges

    def assign(self, owner: Owner) -> list[Assigned]:
        try:
            # No duplicate scan (O(pods) file reads): a second ADD of one attachment fails on the
            # pod's existing interface, and that failure releases what it allocated.
            allocs = self.store.allocate(self.ranges, owner.container_id, owner.ifname, check_duplicate=False)
        except host_local.Exhausted as e:
            raise CniError(spec.ERR_INTERNAL, "failed to allocate address", str(e)) from None
        except host_local.DuplicateAllocation as e:
            raise CniError(spec.ERR_INTERNAL, "failed to allocate address", str(e)) from None
        return [Assigned(a.address, a.gateway) for a in allocs]

    def release(self, owner: Owner, hint: Iterable[IPAddress] = ()) -> None:
        self.store.release(owner.container_id, owner.ifname, [str(h) for h in hint])

    def lookup(self, owner: Owner, hint: Iterable[IPAddress] = ()) -> list[IPAddress]:
        names = self.store.lookup(owner.container_id, owner.ifname, [str(h) for h in hint])
        return [ipaddress.ip_address(n) for n in names]

    def release_except(self, network: str, valid: Iterable[tuple[str, str]]) -> list[str]:
        return self.store.release_except(valid)

    def free(self) -> int | None:
        return self.store.free_count(self.ranges)


class BlockIpam:
    """Calico block IPAM; the allocator does the CAS work, we name the handle and the attributes."""

    def __init__(self, allocator: Any, pools: list[str] | None = None) -> None:
        self.allocator = allocator
        self.pools = pools or None

    def assign(self, owner: Owner) -> list[Assigned]:
        attrs = {"node": owner.node, "namespace": owner.pod_namespace, "pod": owner.pod_name, "timestamp": ""}
        attrs = {k: v for k, v in attrs.items() if v}
        try:
            got = self.allocator.auto_assign(owner.handle, attrs, pools=self.pools)
        except (Transient, Unavailable) as e:
            raise CniError(spec.ERR_TRY_AGAIN_LATER, "IPAM datastore busy or unreachable", str(e)) from None
        except Invalid as e:
            raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, "invalid IPAM configuration", str(e)) from None
        except Exception as e:
            if type(e).__name__ == "NoFreeAddresses":
                raise CniError(spec.ERR_INTERNAL, "failed to allocate address", str(e)) from None
            raise
        # Calico hands the pod a /32 whatever the block size: the pod routes everything via the host.
        return [Assigned(ipaddress.ip_interface((i.ip, i.ip.max_prefixlen))) for i in got]

    def release(self, owner: Owner, hint: Iterable[IPAddress] = ()) -> None:
        try:
            self.allocator.release_by_handle(owner.handle)
        except (Transient, Unavailable) as e:
            raise CniError(spec.ERR_TRY_AGAIN_LATER, "IPAM datastore busy or unreachable", str(e)) from None

    def lookup(self, owner: Owner, hint: Iterable[IPAddress] = ()) -> list[IPAddress]:
        return list(self.allocator.ips_by_handle(owner.handle))

    def release_except(self, network: str, valid: Iterable[tuple[str, str]]) -> list[str]:
        # Handles carry only the container ID; GC of handles the cache no longer knows is
        # calico-node's job (its IPAM GC compares handles with live pods). See CniPlugin.gc.
        return []

    def free(self) -> int | None:
        try:
            return sum(p.free for p in self.allocator.usage())
        except Exception:  # usage() is informative only
            return None
