"""FdbTable: forwarding entries on the vxlan devices a driver owns (MAC -> underlay address).

With learning off, a vxlan device knows where to send a frame only from these entries: one per
remote VTEP MAC, pointing at that node's underlay address (flannel's and felix's scheme: no
flooding). Ownership is by device: every entry with a destination on an owned device is ours.
One MAC maps to one destination (the kernel's `replace` moves it); the all-zeros MAC, a flood list,
may have several. Entries for a device that does not exist yet wait quietly.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from pycni.dataplane.netlink import Fdb, IPAddress, Netlink, NetlinkError
from pycni.dataplane.tracked import TrackedDriver

FdbKey = tuple[str, str, IPAddress]
ZERO_MAC = "00:00:00:00:00:00"


class FdbTable(TrackedDriver[FdbKey, Fdb]):
    kind = "fdb"

    def __init__(self, nl: Netlink, ifnames: Iterable[str], *, name: str = "fdb") -> None:
        super().__init__(nl, name)
        self.ifnames: frozenset[str] = frozenset(ifnames)
        self._links: set[str] = set()

    def set_devices(self, ifnames: Iterable[str]) -> None:
        new = frozenset(ifnames)
        if new != self.ifnames:
            self.ifnames = new
            self.queue_resync()

    def set_desired(self, fdbs: Iterable[Fdb] | Mapping[Any, Fdb]) -> None:
        items = fdbs.values() if isinstance(fdbs, Mapping) else fdbs
        desired: dict[FdbKey, Fdb] = {}
        by_mac: dict[tuple[str, str], FdbKey] = {}
        for f in items:
            if f.ifname not in self.ifnames:
                self._log.warning("fdb on a device we do not own ignored", dev=f.ifname, lladdr=f.lladdr)
                continue
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

    def _dump(self) -> dict[FdbKey, Fdb]:
        out: dict[FdbKey, Fdb] = {}
        for dev in sorted(self.ifnames):
            try:
                entries = self.nl.fdbs(dev)
            except NetlinkError as e:
                if e.errno == errno.ENODEV:
                    continue
                raise
            out.update({f.key: f for f in entries})
        return out

    def _begin_apply(self, deletions: list[tuple[FdbKey, Fdb]], updates: list[tuple[FdbKey, Fdb]]) -> None:
        self._links = {lk.name for lk in self.nl.links()}

    def _blocked(self, key: FdbKey, value: Fdb) -> str | None:
        return None if value.ifname in self._links else "device missing"

    def _write(self, key: FdbKey, value: Fdb) -> bool | None:
        self.nl.fdb_replace(value)
        return True

    def _remove(self, key: FdbKey, value: Fdb) -> None:
        self.nl.fdb_delete(value)

    def _fields(self, key: Any, value: Fdb) -> dict[str, Any]:
        return {"lladdr": value.lladdr, "dst": str(value.dst), "dev": value.ifname}
