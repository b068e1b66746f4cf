"""The datastore seam: a versioned key-value store with TTL leases and a list-then-watch stream.

Keys are the real projects' paths (`/coreos.com/network/subnets/10.244.1.0-24`,
`/calico/ipam/v2/assignment/ipv4/block/10.244.0.0-26`, ...) and values are the JSON text those
projects write, so their tools can read ours. Decoding into model objects is the consumers' job
(`pycni.datastore.codec`), which keeps this seam small enough for three implementations
(memory, etcd, kubernetes) to satisfy one contract suite.

The stream contract is Calico's syncer contract: `sync()` lists every key under the prefixes,
emits one `Update` per key, then `SyncStatus.IN_SYNC`, then watches. When the watch is lost
(etcd compaction, a restarted server, k8s 410 Gone) it emits `RESYNC`, relists, synthesises an
`Update(value=None)` for every key that vanished meanwhile, emits only the keys whose revision
changed, and says `IN_SYNC` again. Consumers therefore never see a duplicate event and never miss
a deletion, and they must not write to the kernel before the first `IN_SYNC`.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


class SyncStatus(enum.Enum):
    WAIT_FOR_DATASTORE = "wait-for-datastore"
    RESYNC = "resync"
    IN_SYNC = "in-sync"


@dataclass(frozen=True, slots=True)
class Versioned:
    """A stored value with the revision a CAS must quote, and its TTL lease (0 = none)."""

    key: str
    value: str
    revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Update:
    """A key's new value, or `value=None` when it is gone (deleted, expired, or invalid)."""

    key: str
    value: str | None
    revision: int


@dataclass(frozen=True, slots=True)
class Batch:
    """Updates that arrived together (the routes of one BGP UPDATE), queued and applied as one event:
    the agent then wakes once per batch instead of once per key. Datastores emit single Updates."""

    updates: tuple[Update, ...]


Event = Update | SyncStatus | Batch
Emit = Callable[[Event], None]


class Datastore(Protocol):
    def get(self, key: str) -> Versioned | None: ...

    def list(self, prefix: str) -> list[Versioned]: ...

    def create(self, key: str, value: str, *, ttl: float | None = None) -> Versioned:
        """Create-if-absent; raises `AlreadyExists`. `ttl` attaches a fresh lease."""
        ...

    def update(self, key: str, value: str, *, revision: int, ttl: float | None = None) -> Versioned:
        """Compare-and-swap on the key's revision; raises `CasConflict` (also when absent).

        `ttl` attaches a fresh lease (flannel renews this way); `ttl=None` keeps no lease.
        """
        ...

    def put(self, key: str, value: str, *, ttl: float | None = None) -> Versioned:
        """Unconditional write (configuration written by tools and labs)."""
        ...

    def delete(self, key: str, *, revision: int | None = None) -> bool:
        """Delete; with `revision`, only if unchanged (raises `CasConflict`). False if absent."""
        ...

    def refresh(self, lease: int) -> float:
        """Keep a TTL lease alive; returns the remaining TTL. Raises `LeaseExpired`."""
        ...

    def sync(self, prefixes: Sequence[str], emit: Emit, stop: threading.Event) -> None:
        """Blocking: list, IN_SYNC, watch; relist on a lost watch. Returns when `stop` is set."""
        ...

    def close(self) -> None: ...


# The factory (below the protocol it returns; it imports no client until one is asked for).
from pycni.datastore.factory import open_datastore  # noqa: E402

__all__ = ["Batch", "Datastore", "Emit", "Event", "SyncStatus", "Update", "Versioned", "open_datastore"]
