"""Sysctls: desired kernel parameters of one network namespace, re-applied when they drift.

Names are /proc/sys paths below /proc/sys with slashes ("net/ipv4/conf/cali1234/proxy_arp"), never
dotted, since interface names may contain dots ("flannel.1"). There is nothing to delete: a value we
stop wanting is left as it is. Each pending name is read before it is written, so a value already
right costs no write and no INFO line. A name that does not exist (its interface is not there yet)
stays pending quietly and is written once the interface appears. A resync forgets what we believe
and re-reads every desired name, which is how drift made by hand is repaired.

Why felix sets what it sets on a workload's host veth: `proxy_arp=1` and `neigh/<if>/proxy_delay=0`
make the host answer the pod's ARP for its 169.254.1.1 gateway at once (the default delay is up to
0.8 s of random wait per ARP request); `forwarding=1` routes its traffic; IPv6 `accept_ra=0`.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping
from typing import Any

from pycni.dataplane.netlink import Netlink
from pycni.dataplane.tracked import TrackedDriver


def _same(a: str, b: str) -> bool:
    return a.split() == b.split()


class Sysctls(TrackedDriver[str, str]):
    kind = "sysctl"
    waiting_errnos = frozenset({errno.ENOENT, errno.ENODEV})

    def __init__(self, nl: Netlink, *, name: str = "sysctls") -> None:
        super().__init__(nl, name)
        self._missing: set[str] = set()

    def set_desired(self, values: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        items = values.items() if isinstance(values, Mapping) else values
        self.tracker.replace_desired({k.strip("/"): str(v) for k, v in items})

    def _dump(self) -> dict[str, str]:
        return {}  # read lazily per pending name in _write

    def apply(self) -> bool:
        # Nothing is ever deleted: forget believed values that are no longer desired.
        for key, _ in list(self.tracker.pending_deletions()):
            self.tracker.on_dataplane_deleted(key)
        return super().apply()

    def _begin_apply(self, deletions: list[tuple[str, str]], updates: list[tuple[str, str]]) -> None:
        self._missing = set()
        for key, _ in updates:
            cur = self.nl.sysctl_get(key)
            if cur is None:
                self._missing.add(key)
            else:
                self.tracker.on_dataplane_set(key, cur)

    def _blocked(self, key: str, value: str) -> str | None:
        return "does not exist" if key in self._missing else None

    def _write(self, key: str, value: str) -> bool | None:
        cur = self.tracker.dataplane.get(key)
        if cur is not None and _same(cur, value):
            return False
        self.nl.sysctl_set(key, value)
        self._log.debug("sysctl set", name=key, value=value, was=cur)
        return True

    def _fields(self, key: Any, value: str) -> dict[str, Any]:
        return {"name": key, "value": value}
