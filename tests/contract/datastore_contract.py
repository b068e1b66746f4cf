"""The one contract every `Datastore` must keep: run against MemoryDatastore and EtcdDatastore.

A test module subclasses `DatastoreContract` and provides a `harness` fixture (see `Harness`):
the datastore under test, a way to make a second independent client, a way to let time pass (a
FakeClock for memory, a real wait for etcd), compaction, and (where it means something) a
server restart. Keys are namespaced per test, so one etcd serves a whole module.

What is pinned here is what consumers rely on: create-if-absent has exactly one winner under a race,
CAS never loses an update, TTL keys vanish (and say so on the watch) unless refreshed, and `sync`
keeps Calico's syncer contract across compaction and restarts: RESYNC, synthesised deletions, no
duplicate events, IN_SYNC again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import pytest

from pycni.datastore import Datastore, Event, SyncStatus, Update
from pycni.errors import AlreadyExists, CasConflict, Invalid, LeaseExpired


class Harness(Protocol):
    ds: Datastore
    ttl: float  # a TTL the backend honours (memory: anything; etcd: whole seconds >= 1)
    slack: float  # how long effects may take to show (memory: ~0; etcd: lease checker period etc.)
    can_restart: bool

    def key(self, name: str) -> str: ...

    def client(self) -> Datastore: ...

    def let_time_pass(self, seconds: float) -> None: ...

    def compact(self) -> None: ...

    def restart(self) -> None: ...


def eventually(pred: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    deadline = time.monotonic() + max(timeout, 0.5)
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.01)
    assert pred(), f"timed out after {timeout}s waiting for {what}"


@dataclass
class Recorder:
    """Collects sync events; can hold the sync thread at its first IN_SYNC (before it watches)."""

    events: list[Event] = field(default_factory=list)
    hold_first_in_sync: bool = False
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, ev: Event) -> None:
        with self._lock:
            self.events.append(ev)
        if ev is SyncStatus.IN_SYNC and self.hold_first_in_sync and not self.held.is_set():
            self.held.set()
            self.release.wait(30)

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def updates(self) -> list[Update]:
        return [e for e in self.snapshot() if isinstance(e, Update)]

    def statuses(self) -> list[SyncStatus]:
        return [e for e in self.snapshot() if isinstance(e, SyncStatus)]

    def in_sync_count(self) -> int:
        return self.statuses().count(SyncStatus.IN_SYNC)

    def view(self) -> dict[str, str]:
        """The state a consumer would hold after applying every update so far."""
        out: dict[str, str] = {}
        for u in self.updates():
            if u.value is None:
                out.pop(u.key, None)
            else:
                out[u.key] = u.value
        return out

    def has(self, key: str, value: str | None) -> bool:
        return any(u.key == key and u.value == value for u in self.updates())


@contextmanager
def syncing(ds: Datastore, prefixes: Sequence[str], rec: Recorder) -> Iterator[threading.Thread]:
    stop = threading.Event()
    t = threading.Thread(target=ds.sync, args=(list(prefixes), rec, stop), daemon=True, name="test-sync")
    t.start()
    try:
        yield t
    finally:
        rec.release.set()
        stop.set()
        t.join(timeout=5)
        assert not t.is_alive(), "sync did not return after stop was set"


def _race_creates(
    clients: Sequence[Datastore], key: str, contenders: int
) -> tuple[list[str], list[str], list[BaseException]]:
    """`contenders` threads (spread over the clients) create `key` at once, released by a barrier."""
    barrier = threading.Barrier(contenders)
    wins: list[str] = []
    losses: list[str] = []
    errors: list[BaseException] = []

    def contender(ds: Datastore, name: str) -> None:
        barrier.wait()
        try:
            ds.create(key, name)
            wins.append(name)
        except AlreadyExists:
            losses.append(name)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)

    threads = [
        threading.Thread(target=contender, args=(clients[i % len(clients)], f"c{i}"))
        for i in range(contenders)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return wins, losses, errors


class DatastoreContract:
    # -- basics --------------------------------------------------------------------------------
    def test_get_put_list(self, harness: Harness) -> None:
        ds, k = harness.ds, harness.key
        assert ds.get(k("a")) is None
        v1 = ds.put(k("a"), '{"x":1}')
        assert (v1.key, v1.value, v1.lease) == (k("a"), '{"x":1}', 0)
        assert ds.get(k("a")) == v1
        v2 = ds.put(k("a"), "two")
        assert v2.revision > v1.revision
        ds.put(k("b/1"), "b1")
        ds.put(k("b/0"), "b0")
        ds.put(k("c"), "c")
        assert [v.key for v in ds.list(k("b/"))] == [k("b/0"), k("b/1")]
        assert [v.value for v in ds.list(k(""))] == ["two", "b0", "b1", "c"]
        assert ds.list(k("nothing/")) == []

    def test_create_is_create_if_absent(self, harness: Harness) -> None:
        ds, k = harness.ds, harness.key
        v = ds.create(k("a"), "first")
        assert ds.get(k("a")) == v
        with pytest.raises(AlreadyExists):
            ds.create(k("a"), "second")
        assert ds.get(k("a")) == v

    def test_racing_creates_have_exactly_one_winner(self, harness: Harness) -> None:
        clients = [harness.ds, harness.client()]
        for round_ in range(5):
            key = harness.key(f"race/{round_}")
            wins, losses, errors = _race_creates(clients, key, contenders=8)
            assert not errors, errors
            assert len(wins) == 1 and len(losses) == 7, (wins, losses)
            got = harness.ds.get(key)
            assert got is not None and got.value == wins[0]

    # -- compare-and-swap ----------------------------------------------------------------------
    def test_cas_update(self, harness: Harness) -> None:
        ds, k = harness.ds, harness.key
        v1 = ds.create(k("a"), "1")
        v2 = ds.update(k("a"), "2", revision=v1.revision)
        assert v2.value == "2" and v2.revision > v1.revision
        with pytest.raises(CasConflict):
            ds.update(k("a"), "stale", revision=v1.revision)
        assert ds.get(k("a")) == v2
        with pytest.raises(CasConflict):
            ds.update(k("absent"), "x", revision=v1.revision)
        assert ds.get(k("absent")) is None

    def test_cas_delete(self, harness: Harness) -> None:
        ds, k = harness.ds, harness.key
        v1 = ds.create(k("a"), "1")
        v2 = ds.put(k("a"), "2")
        with pytest.raises(CasConflict):
            ds.delete(k("a"), revision=v1.revision)
        assert ds.get(k("a")) == v2
        assert ds.delete(k("a"), revision=v2.revision) is True
        assert ds.get(k("a")) is None
        assert ds.delete(k("a")) is False
        with pytest.raises(CasConflict):
            ds.delete(k("a"), revision=v2.revision)
        ds.put(k("b"), "b")
        assert ds.delete(k("b")) is True

    def test_cas_loop_never_loses_an_update(self, harness: Harness) -> None:
        key = harness.key("counter")
        harness.ds.create(key, "0")
        clients = [harness.ds, harness.client()]
        per_thread, nthreads = 10, 4
        errors: list[BaseException] = []

        def worker(ds: Datastore) -> None:
            try:
                for _ in range(per_thread):
                    while True:
                        cur = ds.get(key)
                        assert cur is not None
                        try:
                            ds.update(key, str(int(cur.value) + 1), revision=cur.revision)
                            break
                        except CasConflict:
                            continue
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(clients[i % 2],)) for i in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        final = harness.ds.get(key)
        assert final is not None and final.value == str(per_thread * nthreads)

    # -- TTL leases ----------------------------------------------------------------------------
    def test_ttl_key_expires(self, harness: Harness) -> None:
        ds, k = harness.ds, harness.key
        v = ds.create(k("lease"), "x", ttl=harness.ttl)
        keep = ds.put(k("keep"), "y")
        assert v.lease != 0 and keep.lease == 0
        assert ds.get(k("lease")) == v
        harness.let_time_pass(harness.ttl + 0.2)
        eventually(lambda: ds.get(k("lease")) is None, harness.slack, "the TTL key to expire")
        assert [x.key for x in ds.list(k(""))] == [k("keep")]
        with pytest.raises(LeaseExpired):
            ds.refresh(v.lease)

    def test_refresh_keeps_key_alive(self, harness: Harness) -> None:
        ds, k = harness.ds, harness.key
        v = ds.create(k("lease"), "x", ttl=harness.ttl)
        step = harness.ttl / 3
        for _ in range(8):  # 8/3 TTLs in total, refreshed every third of one
            harness.let_time_pass(step)
            assert ds.refresh(v.lease) > 0
        assert ds.get(k("lease")) == v
        harness.let_time_pass(harness.ttl + 0.2)
        eventually(lambda: ds.get(k("lease")) is None, harness.slack, "expiry once refreshes stop")

    def test_update_with_and_without_ttl(self, harness: Harness) -> None:
        ds, k = harness.ds, harness.key
        v1 = ds.create(k("a"), "1", ttl=harness.ttl)
        v2 = ds.update(k("a"), "2", revision=v1.revision, ttl=harness.ttl)
        assert v2.lease not in (0, v1.lease)  # a fresh lease, flannel's renewal
        v3 = ds.update(k("a"), "3", revision=v2.revision)  # no ttl: no lease, lives on
        assert v3.lease == 0
        p = ds.put(k("b"), "b", ttl=harness.ttl)
        assert p.lease != 0
        harness.let_time_pass(harness.ttl + 0.2)
        eventually(lambda: ds.get(k("b")) is None, harness.slack, "the put-with-ttl key to expire")
        got = ds.get(k("a"))
        assert got is not None and got.value == "3"

    def test_non_positive_ttl_is_invalid(self, harness: Harness) -> None:
        ds, k = harness.ds, harness.key
        for ttl in (0, -1.0):
            with pytest.raises(Invalid):
                ds.create(k("a"), "x", ttl=ttl)
            with pytest.raises(Invalid):
                ds.put(k("a"), "x", ttl=ttl)
        assert ds.get(k("a")) is None

    # -- sync ----------------------------------------------------------------------------------
    def test_sync_lists_then_watches(self, harness: Harness) -> None:
        ds, k = harness.ds, harness.key
        a0 = ds.put(k("a/0"), "a0")
        ds.put(k("b/0"), "b0")
        ds.put(k("c/0"), "not watched")
        rec = Recorder()
        with syncing(ds, [k("a/"), k("b/")], rec):
            eventually(lambda: rec.in_sync_count() == 1, 5, "IN_SYNC")
            first = rec.snapshot()
            assert first[0] is SyncStatus.WAIT_FOR_DATASTORE
            assert first[-1] is SyncStatus.IN_SYNC
            assert set(rec.view()) == {k("a/0"), k("b/0")}
            assert Update(k("a/0"), "a0", a0.revision) in first
            a1 = ds.put(k("a/1"), "a1")
            a0b = ds.update(k("a/0"), "a0'", revision=a0.revision)
            ds.put(k("c/1"), "not watched")
            ds.delete(k("b/0"))
            eventually(lambda: k("b/0") not in rec.view() and k("a/1") in rec.view(), 5, "live events")
            live = rec.updates()[2:]
            assert Update(k("a/1"), "a1", a1.revision) in live
            assert Update(k("a/0"), "a0'", a0b.revision) in live
            assert [u.key for u in live if u.value is None] == [k("b/0")]
            assert not any(u.key.startswith(k("c/")) for u in rec.updates())
            assert rec.statuses() == [SyncStatus.WAIT_FOR_DATASTORE, SyncStatus.IN_SYNC]

    def test_sync_reports_ttl_expiry_as_deletion(self, harness: Harness) -> None:
        ds, k = harness.ds, harness.key
        rec = Recorder()
        with syncing(ds, [k("")], rec):
            eventually(lambda: rec.in_sync_count() == 1, 5, "IN_SYNC")
            ds.create(k("lease"), "x", ttl=harness.ttl)
            eventually(lambda: rec.has(k("lease"), "x"), 5, "the TTL key on the watch")
            harness.let_time_pass(harness.ttl + 0.2)
            eventually(lambda: rec.has(k("lease"), None), harness.slack + 1, "the expiry on the watch")
        assert rec.view() == {}

    def test_sync_stops_promptly(self, harness: Harness) -> None:
        rec = Recorder()
        stop = threading.Event()
        t = threading.Thread(target=harness.ds.sync, args=([harness.key("")], rec, stop), daemon=True)
        t.start()
        eventually(lambda: rec.in_sync_count() == 1, 5, "IN_SYNC")
        t0 = time.monotonic()
        stop.set()
        t.join(5)
        assert not t.is_alive()
        assert time.monotonic() - t0 < 1.0

    def test_sync_relists_after_compaction(self, harness: Harness) -> None:
        """The watch starts behind a compaction: RESYNC, deletions synthesised, no duplicates."""
        ds, k = harness.ds, harness.key
        ds.put(k("same"), "s")
        ds.put(k("gone"), "g")
        ds.put(k("changed"), "c1")
        rec = Recorder(hold_first_in_sync=True)
        with syncing(ds, [k("")], rec):
            assert rec.held.wait(5), "sync never said IN_SYNC"
            # The syncer has listed but not yet watched; change things and compact past its revision.
            ds.delete(k("gone"))
            changed = ds.put(k("changed"), "c2")
            ds.put(k("changed"), "c3")
            new = ds.put(k("new"), "n")
            ds.put(k("flash"), "f")
            ds.delete(k("flash"))
            harness.compact()
            rec.release.set()
            eventually(lambda: rec.in_sync_count() == 2, 10, "IN_SYNC after the relist")
            after = rec.snapshot()
            i = after.index(SyncStatus.RESYNC)
            relist = after[i + 1 : after.index(SyncStatus.IN_SYNC, i)]
            assert relist and all(isinstance(e, Update) for e in relist)
            by_key = {e.key: e for e in relist if isinstance(e, Update)}
            assert by_key[k("gone")].value is None
            assert by_key[k("changed")].value == "c3" and by_key[k("changed")].revision > changed.revision
            assert by_key[k("new")] == Update(k("new"), "n", new.revision)
            assert k("same") not in by_key  # unchanged: not re-emitted
            assert k("flash") not in by_key  # came and went while we were away: nothing to say
            late = ds.put(k("late"), "l")
            eventually(lambda: rec.has(k("late"), "l"), 5, "a live event after the relist")
        ups = rec.updates()
        assert [u.key for u in ups].count(k("same")) == 1
        assert [u.key for u in ups].count(k("new")) == 1
        assert Update(k("late"), "l", late.revision) in ups
        assert rec.view() == {k("same"): "s", k("changed"): "c3", k("new"): "n", k("late"): "l"}
        assert rec.statuses() == [
            SyncStatus.WAIT_FOR_DATASTORE,
            SyncStatus.IN_SYNC,
            SyncStatus.RESYNC,
            SyncStatus.IN_SYNC,
        ]

    def test_sync_survives_server_restart(self, harness: Harness) -> None:
        if not harness.can_restart:
            pytest.skip("this datastore has no server to restart")
        ds, k = harness.ds, harness.key
        ds.put(k("a"), "a")
        rec = Recorder()
        with syncing(ds, [k("")], rec):
            eventually(lambda: rec.in_sync_count() == 1, 5, "IN_SYNC")
            harness.restart()
            eventually(lambda: rec.in_sync_count() == 2, 15, "IN_SYNC after the restart")
            assert SyncStatus.RESYNC in rec.statuses()
            b = ds.put(k("b"), "b")
            ds.delete(k("a"))
            eventually(lambda: rec.view() == {k("b"): "b"}, 10, "events after the restart")
            assert Update(k("b"), "b", b.revision) in rec.updates()
        keys = [u.key for u in rec.updates()]
        assert keys.count(k("a")) == 2  # its value once, its deletion once: nothing replayed
        assert keys.count(k("b")) == 1
