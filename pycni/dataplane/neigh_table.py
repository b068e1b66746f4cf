"""NeighTable: permanent neighbour (ARP/ND) entries on the devices a driver owns, reconciled.

flannel's vxlan backend and felix's VXLAN manager give each remote VTEP address a permanent
neighbour on the vxlan device, so the kernel never has to resolve it (the device has no learning
and answers no ARP). Ownership is by device: every permanent entry on an owned device is ours, and
one that is not desired is deleted; non-permanent (learned) entries are the kernel's and left alone.
Entries for a device that does not exist yet wait quietly. A device going down makes the kernel
flush even permanent entries; the next resync notices and writes them again.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from pycni.dataplane.netlink import IPAddress, Neigh, Netlink, NetlinkError
from pycni.dataplane.tracked import TrackedDriver

NeighKey = tuple[str, IPAddress]


class NeighTable(TrackedDriver[NeighKey, Neigh]):
    kind = "neigh"

    def __init__(self, nl: Netlink, ifnames: Iterable[str], *, name: str = "neighs") -> None:
        super().__init__(nl, name)
        self.ifnames: frozenset[str] = frozenset(ifnames)
        self._links: set[str] = set()

    def set_devices(self, ifnames: Iterable[str]) -> None:
        """Change the owned devices (no I/O); a resync re-reads them."""
        new = frozenset(ifnames)
        if new != self.ifnames:
            self.ifnames = new
            self.queue_resync()

    def set_desired(self, neighs: Iterable[Neigh] | Mapping[Any, Neigh]) -> None:
        items = neighs.values() if isinstance(neighs, Mapping) else neighs
        desired: dict[NeighKey, Neigh] = {}
        for n in items:
            if n.ifname not in self.ifnames:
                self._log.warning("neigh on a device we do not own ignored", dev=n.ifname, dst=str(n.dst))
                continue
            n = replace(n, lladdr=n.lladdr.lower(), permanent=True)
            desired[n.key] = n
        self.tracker.replace_desired(desired)

    def _dump(self) -> dict[NeighKey, Neigh]:
        out: dict[NeighKey, Neigh] = {}
        for dev in sorted(self.ifnames):
            try:
                entries = self.nl.neighs(dev)
            except NetlinkError as e:
                if e.errno == errno.ENODEV:  # nothing of ours there yet
                    continue
                raise
            out.update({n.key: n for n in entries if n.permanent})
        return out

    def _begin_apply(
        self, deletions: list[tuple[NeighKey, Neigh]], updates: list[tuple[NeighKey, Neigh]]
    ) -> None:
        self._links = {lk.name for lk in self.nl.links()}

    def _blocked(self, key: NeighKey, value: Neigh) -> str | None:
        return None if value.ifname in self._links else "device missing"

    def _write(self, key: NeighKey, value: Neigh) -> bool | None:
        self.nl.neigh_replace(value)
        return True

    def _remove(self, key: NeighKey, value: Neigh) -> None:
        self.nl.neigh_delete(value)

    def _fields(self, key: Any, value: Neigh) -> dict[str, Any]:
        return {"dst": str(value.dst), "lladdr": value.lladdr, "dev": value.ifname}
