"""MemoryDatastore: the in-process datastore for unit tests and single-process labs.

It keeps etcd's semantics where consumers can observe them: one global revision, per-key
mod revisions, TTL leases measured on an injectable clock, and a bounded event history that
`compact()` truncates so watchers must relist exactly as they must against a compacted etcd.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pycni.datastore import Emit, SyncStatus, Update, Versioned
from pycni.errors import AlreadyExists, CasConflict, Invalid, LeaseExpired
from pycni.testing.clock import Clock, SystemClock


@dataclass
class _Lease:
    ttl: float
    expires: float
    keys: set[str] = field(default_factory=set)


class MemoryDatastore:
    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._cond = threading.Condition()
        self._data: dict[str, Versioned] = {}
        self._rev = 1
        self._history: list[Update] = []  # events with revision > self._compacted
        self._compacted = 1
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 1

    # -- helpers ---------------------------------------------------------------------------
    def _expire(self) -> None:
        now = self._clock.now()
        for lid, lease in list(self._leases.items()):
            if lease.expires <= now:
                del self._leases[lid]
                for key in sorted(lease.keys):
                    if key in self._data and self._data[key].lease == lid:
                        self._remove(key)

    def _remove(self, key: str) -> None:
        self._rev += 1
        del self._data[key]
        self._history.append(Update(key, None, self._rev))
        self._cond.notify_all()

    def _store(self, key: str, value: str, ttl: float | None) -> Versioned:
        if ttl is not None and ttl <= 0:
            raise Invalid(f"ttl must be positive, got {ttl}", field="ttl")  # as etcd's adapter says
        old = self._data.get(key)
        if old is not None and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        lid = 0
        if ttl is not None:
            lid = self._next_lease
            self._next_lease += 1
            self._leases[lid] = _Lease(ttl=ttl, expires=self._clock.now() + ttl, keys={key})
        self._rev += 1
        v = Versioned(key, value, self._rev, lid)
        self._data[key] = v
        self._history.append(Update(key, value, self._rev))
        self._cond.notify_all()
        return v

    # -- Datastore -------------------------------------------------------------------------
    def get(self, key: str) -> Versioned | None:
        with self._cond:
            self._expire()
            return self._data.get(key)

    def list(self, prefix: str) -> list[Versioned]:
        with self._cond:
            self._expire()
            return [v for k, v in sorted(self._data.items()) if k.startswith(prefix)]

    def create(self, key: str, value: str, *, ttl: float | None = None) -> Versioned:
        with self._cond:
            self._expire()
            if key in self._data:
                raise AlreadyExists(key)
            return self._store(key, value, ttl)

    def update(self, key: str, value: str, *, revision: int, ttl: float | None = None) -> Versioned:
        with self._cond:
            self._expire()
            cur = self._data.get(key)
            if cur is None or cur.revision != revision:
                raise CasConflict(key)
            return self._store(key, value, ttl)

    def put(self, key: str, value: str, *, ttl: float | None = None) -> Versioned:
        with self._cond:
            self._expire()
            return self._store(key, value, ttl)

    def delete(self, key: str, *, revision: int | None = None) -> bool:
        with self._cond:
            self._expire()
            cur = self._data.get(key)
            if cur is None:
                if revision is not None:
                    raise CasConflict(key)
                return False
            if revision is not None and cur.revision != revision:
                raise CasConflict(key)
            self._remove(key)
            return True

    def refresh(self, lease: int) -> float:
        with self._cond:
            self._expire()
            ls = self._leases.get(lease)
            if ls is None:
                raise LeaseExpired(f"lease {lease:x} not found")
            ls.expires = self._clock.now() + ls.ttl
            return ls.ttl

    def compact(self) -> None:
        """Drop the event history, as `etcdctl compact` does: live watchers must relist."""
        with self._cond:
            self._compacted = self._rev
            self._history.clear()
            self._cond.notify_all()

    def tick(self) -> None:
        """Expire leases whose time has come on the injected clock (wakes watchers)."""
        with self._cond:
            self._expire()

    def sync(self, prefixes: Sequence[str], emit: Emit, stop: threading.Event) -> None:
        def wanted(k: str) -> bool:
            return any(k.startswith(p) for p in prefixes)

        known: dict[str, int] = {}
        emit(SyncStatus.WAIT_FOR_DATASTORE)
        while not stop.is_set():
            # (re)list
            with self._cond:
                self._expire()
                snap = {k: v for k, v in self._data.items() if wanted(k)}
                since = self._rev
            for k in sorted(set(known) - set(snap)):
                emit(Update(k, None, since))
                del known[k]
            for k, v in sorted(snap.items()):
                if known.get(k) != v.revision:
                    emit(Update(k, v.value, v.revision))
                    known[k] = v.revision
            emit(SyncStatus.IN_SYNC)
            # watch
            lost = False
            while not stop.is_set() and not lost:
                with self._cond:
                    self._expire()
                    if since < self._compacted:
                        lost = True
                        break
                    events = [e for e in self._history if e.revision > since]
                    if not events:
                        self._cond.wait(0.05)
                        continue
                    since = events[-1].revision
                for e in events:
                    if not wanted(e.key):
                        continue
                    if e.value is None:
                        known.pop(e.key, None)
                    else:
                        known[e.key] = e.revision
                    emit(e)
            if lost:
                emit(SyncStatus.RESYNC)

    def close(self) -> None:
        pass


def watch_in_thread(ds: MemoryDatastore, prefixes: Sequence[str], emit: Emit) -> Callable[[], None]:
    """Run `ds.sync` in a daemon thread; returns a function that stops and joins it."""
    stop = threading.Event()
    t = threading.Thread(target=ds.sync, args=(prefixes, emit, stop), daemon=True, name="memory-sync")
    t.start()

    def _stop() -> None:
        stop.set()
        t.join(timeout=5)

    return _stop
