"""DeltaTracker: desired state versus what we believe the kernel holds, and the difference.

This is Calico felix's `deltatracker` in Python and the one reconciliation primitive every driver
shares (routes, neighbours, FDB entries, sysctls, BGP announcements). Drivers:

1. `set_desired(key, value)` / `delete_desired(key)` / `replace_desired(mapping)` as the spec changes;
2. on resync, `replace_dataplane(mapping)` with what a dump of the kernel shows (only the objects
   the driver owns);
3. iterate `pending_updates()` and `pending_deletions()`, applying each and confirming with
   `on_dataplane_set` / `on_dataplane_deleted`. A failed operation is simply left pending, so the
   next apply retries it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class DeltaTracker(Generic[K, V]):
    def __init__(self) -> None:
        self.desired: dict[K, V] = {}
        self.dataplane: dict[K, V] = {}

    # desired side
    def set_desired(self, key: K, value: V) -> None:
        self.desired[key] = value

    def delete_desired(self, key: K) -> None:
        self.desired.pop(key, None)

    def replace_desired(self, desired: Mapping[K, V]) -> None:
        self.desired = dict(desired)

    # dataplane side
    def replace_dataplane(self, actual: Mapping[K, V]) -> None:
        self.dataplane = dict(actual)

    def on_dataplane_set(self, key: K, value: V) -> None:
        self.dataplane[key] = value

    def on_dataplane_deleted(self, key: K) -> None:
        self.dataplane.pop(key, None)

    # the difference
    def pending_updates(self) -> Iterator[tuple[K, V]]:
        """Desired entries the kernel lacks or holds with another value (a snapshot: safe to mutate)."""
        dp = self.dataplane
        # identity first: a spec that kept an unchanged value object (calc memoises) costs no __eq__
        return iter([(k, v) for k, v in self.desired.items()
                     if (d := dp.get(k, _MISSING)) is not v and d != v])

    def pending_deletions(self) -> Iterator[tuple[K, V]]:
        """Kernel entries that are ours but no longer desired."""
        # set(dict).difference(dict) reuses the hashes the dicts already store: no __hash__ calls
        # (a thousand address-keyed entries cost ~1 ms to hash in Python per pass)
        gone = set(self.dataplane).difference(self.desired)
        return iter([(k, v) for k, v in self.dataplane.items() if k in gone]) if gone else iter(())

    def in_sync(self) -> bool:
        return next(self.pending_updates(), None) is None and next(self.pending_deletions(), None) is None


_MISSING = object()
