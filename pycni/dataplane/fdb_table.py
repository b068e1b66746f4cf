"""FdbTable: forwarding entries on the vxlan devices a driver owns (MAC -> underlay address).

With learning off, a vxlan device knows where to send a frame only from these entries: one per
remote VTEP MAC, pointing at that node's underlay address (flannel's and felix's scheme: no
flooding). Ownership is by device: every entry with a destination on an owned device is ours.
One MAC maps to one destination (the kernel's `replace` moves it); the all-zeros MAC, a flood list,
may have several. Entries for a device that does not exist yet wait quietly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from pycni.dataplane.netlink import Fdb, IPAddress, Netlink
from pycni.dataplane.tracked import DeviceTable

FdbKey = tuple[str, str, IPAddress]
ZERO_MAC = "00:00:00:00:00:00"


class FdbTable(DeviceTable[FdbKey, Fdb]):
    kind = "fdb"

    def __init__(self, nl: Netlink, ifnames: Iterable[str], *, name: str = "fdb") -> None:
        super().__init__(nl, ifnames, name=name)

    def set_desired(self, fdbs: Iterable[Fdb] | Mapping[Any, Fdb]) -> None:
        items = fdbs.values() if isinstance(fdbs, Mapping) else fdbs
        desired: dict[FdbKey, Fdb] = {}
        by_mac: dict[tuple[str, str], FdbKey] = {}
        for f in self._owned(items):
            f = replace(f, lladdr=f.lladdr.lower())
            if f.lladdr != ZERO_MAC:
                prev = by_mac.get((f.ifname, f.lladdr))
                if prev is not None and prev != f.key:
                    self._log.warning(
                        "two destinations for one MAC, last wins", dev=f.ifname, lladdr=f.lladdr
                    )
                    desired.pop(prev, None)
                by_mac[(f.ifname, f.lladdr)] = f.key
            desired[f.key] = f
        self.tracker.replace_desired(desired)

    def _dump_device(self, dev: str) -> dict[FdbKey, Fdb]:
        return {f.key: f for f in self.nl.fdbs(dev)}

    def _write(self, key: FdbKey, value: Fdb) -> bool | None:
        self.nl.fdb_replace(value)
        return True

    def _remove(self, key: FdbKey, value: Fdb) -> None:
        self.nl.fdb_delete(value)

    def _fields(self, key: Any, value: Fdb) -> dict[str, Any]:
        return {"lladdr": value.lladdr, "dst": str(value.dst), "dev": value.ifname}
