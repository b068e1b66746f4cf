"""TrackedDriver: the apply loop every kernel-object driver shares (routes, neighbours, FDB).

A driver is a `DeltaTracker` plus four small hooks: `_dump` (what the kernel holds of ours), `_write`,
`_remove`, and `_blocked` (why a desired entry cannot be written yet, e.g. its device does not exist).
`apply()` then follows Calico felix's route table:

1. on a queued resync (and on first use) dump the kernel and `replace_dataplane`;
2. delete what is ours and no longer desired, then write what is desired and missing or different;
3. each operation stands alone: a failure leaves that one entry pending (felix's "minimise the blast
   radius") and queues a resync, since the kernel's state for it is now unknown; entries waiting
   for a device are pending too but are no error (DEBUG, not a warning storm);
4. one INFO summary per apply that changed something, DEBUG otherwise; a failure is a WARNING the
   first time an entry fails with a given errno, DEBUG while it keeps failing the same way.

`apply()` returns True when nothing is left pending, so the Agent can back off and retry.

`DeviceTable` adds ownership by device for the entries that live on a device (neighbours, FDB
entries): every entry on an owned device is ours, devices are dumped one by one (one that does not
exist holds nothing of ours yet), and an entry whose device is missing waits without an error.
"""

from __future__ import annotations

import errno
from collections.abc import Hashable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import structlog

from pycni.dataplane.delta import DeltaTracker
from pycni.dataplane.netlink import Netlink, NetlinkError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = structlog.get_logger(__name__)

#: errnos that mean "not yet" (the device is missing or down), not "broken".
WAITING_ERRNOS = frozenset({errno.ENODEV, errno.ENETDOWN})


class TrackedDriver(Generic[K, V]):
    """Base for drivers over one `DeltaTracker`; see the module docstring."""

    kind = "entry"  # used in log event names: "route written", "routes applied", ...
    waiting_errnos: frozenset[int] = WAITING_ERRNOS

    def __init__(self, nl: Netlink, name: str) -> None:
        self.nl = nl
        self.name = name
        self.tracker: DeltaTracker[K, V] = DeltaTracker()
        self._resync_needed = True
        self._last_errno: dict[K, int] = {}
        self._log = log.bind(driver=name)
        self.last_stats: dict[str, int] = {}

    # -- the Driver protocol ---------------------------------------------------------------
    def queue_resync(self) -> None:
        self._resync_needed = True

    def in_sync(self) -> bool:
        return not self._resync_needed and self.tracker.in_sync()

    def apply(self) -> bool:
        if self._resync_needed:
            try:
                self.tracker.replace_dataplane(self._dump())
            except NetlinkError as e:
                self._log.warning(f"{self.kind} dump failed", error=str(e), errno=e.errno)
                return False
            self._resync_needed = False
        stats = {"deleted": 0, "written": 0, "waiting": 0, "failed": 0}
        deletions = list(self.tracker.pending_deletions())
        updates = list(self.tracker.pending_updates())
        if deletions or updates:
            try:
                self._begin_apply(deletions, updates)
            except NetlinkError as e:
                self._log.warning(f"{self.kind} apply failed", error=str(e), errno=e.errno)
                self._resync_needed = True
                return False
        for key, value in deletions:
            if not self._may_delete(key, value):
                stats["waiting"] += 1
                continue
            try:
                self._remove(key, value)
            except NetlinkError as e:
                self._failed("delete", key, value, e, stats)
                continue
            self.tracker.on_dataplane_deleted(key)
            self._last_errno.pop(key, None)
            stats["deleted"] += 1
            self._log.debug(f"{self.kind} deleted", **self._fields(key, value))
        for key, value in updates:
            why = self._blocked(key, value)
            if why:
                stats["waiting"] += 1
                self._log.debug(f"{self.kind} waiting", reason=why, **self._fields(key, value))
                continue
            try:
                changed = self._write(key, value)
            except NetlinkError as e:
                self._failed("write", key, value, e, stats)
                continue
            self.tracker.on_dataplane_set(key, value)
            self._last_errno.pop(key, None)
            if changed is not False:
                stats["written"] += 1
                self._log.debug(f"{self.kind} written", **self._fields(key, value))
        self.last_stats = stats
        fields: dict[str, Any] = {**self._summary_fields(), **stats}
        if stats["deleted"] or stats["written"] or stats["failed"]:
            self._log.info(f"{self.kind}s applied", **fields)
        else:
            self._log.debug(f"{self.kind}s applied", **fields)
        return self.tracker.in_sync()

    # -- failure bookkeeping ---------------------------------------------------------------
    def _failed(self, op: str, key: K, value: V, e: NetlinkError, stats: dict[str, int]) -> None:
        if e.errno in self.waiting_errnos:
            stats["waiting"] += 1
            self._log.debug(f"{self.kind} waiting", op=op, error=str(e), **self._fields(key, value))
            return
        stats["failed"] += 1
        self._resync_needed = True
        level = self._log.debug if self._last_errno.get(key) == e.errno else self._log.warning
        self._last_errno[key] = e.errno
        level(f"{self.kind} {op} failed", error=str(e), errno=e.errno, **self._fields(key, value))

    # -- hooks -----------------------------------------------------------------------------
    def _dump(self) -> dict[K, V]:
        raise NotImplementedError

    def _write(self, key: K, value: V) -> bool | None:
        """Make the kernel hold `value`; return False when nothing had to change."""
        raise NotImplementedError

    def _remove(self, key: K, value: V) -> None:
        raise NotImplementedError

    def _begin_apply(self, deletions: list[tuple[K, V]], updates: list[tuple[K, V]]) -> None:
        """Called once per apply with work to do (e.g. to read the device list once)."""

    def _blocked(self, key: K, value: V) -> str | None:
        return None

    def _may_delete(self, key: K, value: V) -> bool:
        return True

    def _fields(self, key: K, value: V) -> dict[str, Any]:
        return {"entry": str(value)}

    def _summary_fields(self) -> dict[str, Any]:
        return {}


class OnDevice(Protocol):
    """An entry that lives on one network device (a neighbour, an FDB entry)."""

    @property
    def ifname(self) -> str: ...

    @property
    def key(self) -> Any: ...


DV = TypeVar("DV", bound=OnDevice)


class DeviceTable(TrackedDriver[K, DV]):
    """A `TrackedDriver` owning every entry on its devices (`ifnames`); see the module docstring."""

    def __init__(self, nl: Netlink, ifnames: Iterable[str], *, name: str) -> None:
        super().__init__(nl, name)
        self.ifnames: frozenset[str] = frozenset(ifnames)
        self._links: set[str] = set()

    def set_devices(self, ifnames: Iterable[str]) -> None:
        """Change the owned devices (no I/O); a resync re-reads them."""
        new = frozenset(ifnames)
        if new != self.ifnames:
            self.ifnames = new
            self.queue_resync()

    def _owned(self, entries: Iterable[DV]) -> Iterator[DV]:
        """The desired entries on owned devices; the others are logged and dropped."""
        for e in entries:
            if e.ifname in self.ifnames:
                yield e
            else:
                self._log.warning(f"{self.kind} on a device we do not own ignored", **self._fields(e.key, e))

    def _dump_device(self, dev: str) -> dict[K, DV]:
        """Our entries on one device (raises NetlinkError ENODEV when it does not exist)."""
        raise NotImplementedError

    def _dump(self) -> dict[K, DV]:
        out: dict[K, DV] = {}
        for dev in sorted(self.ifnames):
            try:
                out.update(self._dump_device(dev))
            except NetlinkError as e:
                if e.errno == errno.ENODEV:  # nothing of ours there yet
                    continue
                raise
        return out

    def _begin_apply(self, deletions: list[tuple[K, DV]], updates: list[tuple[K, DV]]) -> None:
        self._links = {lk.name for lk in self.nl.links()}

    def _blocked(self, key: K, value: DV) -> str | None:
        return None if value.ifname in self._links else "device missing"
