"""NeighTable: permanent neighbour (ARP/ND) entries on the devices a driver owns, reconciled.

flannel's vxlan backend and felix's VXLAN manager give each remote VTEP address a permanent
neighbour on the vxlan device, so the kernel never has to resolve it (the device has no learning
and answers no ARP). Ownership is by device: every permanent entry on an owned device is ours, and
one that is not desired is deleted; non-permanent (learned) entries are the kernel's and left alone.
Entries for a device that does not exist yet wait quietly. A device going down makes the kernel
flush even permanent entries; the next resync notices and writes them again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from pycni.dataplane.netlink import IPAddress, Neigh, Netlink
from pycni.dataplane.tracked import DeviceTable

NeighKey = tuple[str, IPAddress]


class NeighTable(DeviceTable[NeighKey, Neigh]):
    kind = "neigh"

    def __init__(self, nl: Netlink, ifnames: Iterable[str], *, name: str = "neighs") -> None:
        super().__init__(nl, ifnames, name=name)

    def set_desired(self, neighs: Iterable[Neigh] | Mapping[Any, Neigh]) -> None:
        items = neighs.values() if isinstance(neighs, Mapping) else neighs
        desired: dict[NeighKey, Neigh] = {}
        for n in self._owned(items):
            n = replace(n, lladdr=n.lladdr.lower(), permanent=True)
            desired[n.key] = n
        self.tracker.replace_desired(desired)

    def _dump_device(self, dev: str) -> dict[NeighKey, Neigh]:
        return {n.key: n for n in self.nl.neighs(dev) if n.permanent}  # learned ones are the kernel's

    def _write(self, key: NeighKey, value: Neigh) -> bool | None:
        self.nl.neigh_replace(value)
        return True

    def _remove(self, key: NeighKey, value: Neigh) -> None:
        self.nl.neigh_delete(value)

    def _fields(self, key: Any, value: Neigh) -> dict[str, Any]:
        return {"dst": str(value.dst), "lladdr": value.lladdr, "dev": value.ifname}
