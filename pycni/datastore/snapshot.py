"""Snapshot: the consumer side of the sync contract, owned by one agent thread.

It applies `Update`s from any number of named sources (the datastore, exabgp, local facts such as
the node's own lease) and knows whether every source has said IN_SYNC. A source that reports
RESYNC makes the snapshot not-in-sync until it catches up, so no calculation runs on a
half-relisted view.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from pycni.datastore import SyncStatus, Update


class Snapshot:
    def __init__(self, sources: tuple[str, ...] = ("datastore",)) -> None:
        self._values: dict[str, str] = {}
        self._revisions: dict[str, int] = {}
        self._status: dict[str, SyncStatus] = {s: SyncStatus.WAIT_FOR_DATASTORE for s in sources}
        self.generation = 0  # bumped on every change: calc memoisation and "dirty" checks
        self._sorted: list[str] | None = None  # keys in order, rebuilt after a key comes or goes

    def add_source(self, name: str) -> None:
        self._status.setdefault(name, SyncStatus.WAIT_FOR_DATASTORE)

    @property
    def in_sync(self) -> bool:
        return all(s is SyncStatus.IN_SYNC for s in self._status.values())

    def set_status(self, source: str, status: SyncStatus) -> None:
        self._status[source] = status

    def apply(self, update: Update) -> bool:
        """Apply one update; returns whether anything changed."""
        if update.value is None:
            if update.key not in self._values:
                return False
            del self._values[update.key]
            self._revisions.pop(update.key, None)
            self._sorted = None
        else:
            if self._values.get(update.key) == update.value:
                self._revisions[update.key] = update.revision
                return False
            if update.key not in self._values:
                self._sorted = None
            self._values[update.key] = update.value
            self._revisions[update.key] = update.revision
        self.generation += 1
        return True

    def get(self, key: str) -> str | None:
        return self._values.get(key)

    def revision(self, key: str) -> int | None:
        return self._revisions.get(key)

    def items(self, prefix: str = "") -> Iterator[tuple[str, str]]:
        """(key, value) pairs under a prefix, in key order (calc output must not depend on arrival order).

        The keys are sorted once per change of the key set and each prefix is a bisected range, so
        a calc reading seven prefixes of a snapshot holding a thousand learned routes does not sort
        and scan them seven times."""
        keys = self._sorted
        if keys is None:
            keys = self._sorted = sorted(self._values)
        values = self._values
        for i in range(bisect.bisect_left(keys, prefix), len(keys)):
            k = keys[i]
            if not k.startswith(prefix):
                return
            yield k, values[k]

    def range(self, prefix: str) -> dict[str, str]:
        """{key: value} under a prefix (the same objects the snapshot holds: unchanged values are
        identical, so a caller can diff two of these by identity)."""
        return dict(self.items(prefix))

    def __len__(self) -> int:
        return len(self._values)
