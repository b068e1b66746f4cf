"""Snapshot: the consumer side of the sync contract (apply, in-sync across sources, key order)."""

from __future__ import annotations

import random

from contract.datastore_contract import Recorder, eventually, syncing

from pycni.datastore import SyncStatus, Update
from pycni.datastore.memory import MemoryDatastore
from pycni.datastore.snapshot import Snapshot
from pycni.testing.clock import FakeClock


def test_apply_reports_changes_and_bumps_generation() -> None:
    s = Snapshot()
    g0 = s.generation
    assert s.apply(Update("/a", "1", 2)) is True
    assert s.get("/a") == "1" and s.revision("/a") == 2 and len(s) == 1
    assert s.generation == g0 + 1
    # same value, newer revision: no change for calc, but the revision is tracked
    assert s.apply(Update("/a", "1", 5)) is False
    assert s.revision("/a") == 5 and s.generation == g0 + 1
    assert s.apply(Update("/a", "2", 6)) is True
    assert s.generation == g0 + 2
    assert s.apply(Update("/a", None, 7)) is True
    assert s.get("/a") is None and s.revision("/a") is None and len(s) == 0
    # deleting what is not there changes nothing (a synthesised deletion may repeat a known fact)
    assert s.apply(Update("/a", None, 8)) is False
    assert s.generation == g0 + 3


def test_items_are_in_key_order_under_a_prefix() -> None:
    s = Snapshot()
    for k in ["/x/c", "/y/a", "/x/a", "/x/b"]:
        s.apply(Update(k, k.upper(), 1))
    assert [k for k, _ in s.items("/x/")] == ["/x/a", "/x/b", "/x/c"]
    assert dict(s.items("/y/")) == {"/y/a": "/Y/A"}
    assert len(list(s.items())) == 4


def test_in_sync_needs_every_source() -> None:
    s = Snapshot(("datastore", "bgp"))
    assert not s.in_sync
    s.set_status("datastore", SyncStatus.IN_SYNC)
    assert not s.in_sync
    s.set_status("bgp", SyncStatus.IN_SYNC)
    assert s.in_sync
    s.add_source("local")
    assert not s.in_sync
    s.set_status("local", SyncStatus.IN_SYNC)
    assert s.in_sync
    s.add_source("local")  # adding again keeps its status
    assert s.in_sync


def test_resync_drops_in_sync_until_the_source_catches_up() -> None:
    s = Snapshot()
    s.set_status("datastore", SyncStatus.IN_SYNC)
    assert s.in_sync
    s.set_status("datastore", SyncStatus.RESYNC)
    assert not s.in_sync
    s.set_status("datastore", SyncStatus.IN_SYNC)
    assert s.in_sync


def _feed(s: Snapshot, rec: Recorder) -> None:
    for ev in rec.snapshot():
        if isinstance(ev, SyncStatus):
            s.set_status("datastore", ev)
        else:
            s.apply(ev)


def test_snapshot_fed_by_sync_equals_the_store_across_compactions() -> None:
    """Random writes, deletions, expiries and compactions: the consumer's view ends equal to the store."""
    rnd = random.Random(7)
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    rec = Recorder()
    keys = [f"/r/{i}" for i in range(12)]
    with syncing(ds, ["/r/"], rec):
        eventually(lambda: rec.in_sync_count() == 1, 5)
        for step in range(300):
            k = rnd.choice(keys)
            op = rnd.random()
            if op < 0.5:
                ds.put(k, f"v{step}", ttl=rnd.choice([None, None, 3.0]))
            elif op < 0.8:
                ds.delete(k)
            elif op < 0.9:
                clock.advance(1.0)
                ds.tick()
            else:
                ds.compact()
        want = {v.key: v.value for v in ds.list("/r/")}
        eventually(lambda: rec.view() == want, 5, "the consumer to converge")
    s = Snapshot()
    _feed(s, rec)
    assert dict(s.items("/r/")) == want
    assert s.in_sync
