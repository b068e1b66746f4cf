"""MemoryDatastore: the datastore contract on a FakeClock (no sleeping), plus memory-only helpers."""

from __future__ import annotations

import itertools
import threading

import pytest
from contract.datastore_contract import DatastoreContract, Recorder, eventually, syncing

from pycni.datastore import Datastore, SyncStatus, Update
from pycni.datastore.memory import MemoryDatastore, watch_in_thread
from pycni.testing.clock import FakeClock

_ids = itertools.count()


class MemoryHarness:
    ttl = 10.0
    slack = 0.0
    can_restart = False

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.ds = MemoryDatastore(clock=self.clock)
        self.prefix = f"/t{next(_ids)}/"

    def key(self, name: str) -> str:
        return self.prefix + name

    def client(self) -> Datastore:
        return self.ds  # one process, one store: a second "client" is the same object

    def let_time_pass(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.ds.tick()

    def compact(self) -> None:
        self.ds.compact()

    def restart(self) -> None:
        raise NotImplementedError


@pytest.fixture
def harness() -> MemoryHarness:
    return MemoryHarness()


class TestMemoryDatastoreContract(DatastoreContract):
    pass


def test_datastore_protocol_is_satisfied() -> None:
    ds: Datastore = MemoryDatastore()
    assert ds.list("/") == []


def test_revisions_are_global_and_monotonic() -> None:
    ds = MemoryDatastore(clock=FakeClock())
    a = ds.put("/a", "1")
    b = ds.put("/b", "1")
    a2 = ds.put("/a", "2")
    assert a.revision < b.revision < a2.revision


def test_expiry_wakes_a_watcher_on_tick() -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    rec = Recorder()
    with syncing(ds, ["/x/"], rec):
        eventually(lambda: rec.in_sync_count() == 1, 5)
        v = ds.create("/x/lease", "v", ttl=5)
        clock.advance(4.9)
        ds.tick()
        assert ds.get("/x/lease") == v
        clock.advance(0.2)
        ds.tick()
        eventually(lambda: rec.has("/x/lease", None), 5)


def test_compaction_of_a_caught_up_watch_needs_no_relist() -> None:
    """Like etcd: compaction only cancels watchers that are behind it."""
    ds = MemoryDatastore(clock=FakeClock())
    rec = Recorder()
    with syncing(ds, ["/x/"], rec):
        eventually(lambda: rec.in_sync_count() == 1, 5)
        ds.put("/x/a", "1")
        eventually(lambda: rec.has("/x/a", "1"), 5)
        ds.compact()
        ds.put("/x/b", "1")
        eventually(lambda: rec.has("/x/b", "1"), 5)
    assert SyncStatus.RESYNC not in rec.statuses()


def test_watch_in_thread_stops() -> None:
    ds = MemoryDatastore(clock=FakeClock())
    events: list[object] = []
    stop = watch_in_thread(ds, ["/"], events.append)
    eventually(lambda: SyncStatus.IN_SYNC in events, 5)
    ds.put("/k", "v")
    eventually(lambda: any(isinstance(e, Update) and e.key == "/k" for e in events), 5)
    stop()
    assert not any(t.name == "memory-sync" and t.is_alive() for t in threading.enumerate())
