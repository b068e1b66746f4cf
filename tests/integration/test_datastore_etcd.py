"""EtcdDatastore against a real etcd 3.4 on loopback: the shared datastore contract plus etcd-only
behaviour (Unavailable while down, ordered failover, the on-the-wire key layout).

One etcd serves the module (keys are namespaced per test); the restart test restarts it in place.
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from collections.abc import Iterator

import pytest
from contract.datastore_contract import DatastoreContract, Recorder, eventually, syncing

from pycni.datastore import Datastore, SyncStatus
from pycni.datastore.etcd import EtcdDatastore, parse_endpoints
from pycni.errors import Invalid, Unavailable
from pycni.testing.etcd import EtcdServer, etcd_fixture, free_port

pytestmark = [pytest.mark.etcd]

etcd = pytest.fixture(etcd_fixture, scope="module", name="etcd")

_ids = itertools.count()


class EtcdHarness:
    ttl = 1.0
    slack = 3.0  # etcd's lessor checks expiry every 500 ms; leases may run up to ~1 s over
    can_restart = True

    def __init__(self, server: EtcdServer) -> None:
        self.server = server
        self.ds = EtcdDatastore(server.endpoint, timeout=2)
        self.prefix = f"/pycni-test/{next(_ids)}-{time.monotonic_ns()}/"
        self._clients: list[EtcdDatastore] = [self.ds]

    def key(self, name: str) -> str:
        return self.prefix + name

    def client(self) -> Datastore:
        c = EtcdDatastore(self.server.endpoint, timeout=2)
        self._clients.append(c)
        return c

    def let_time_pass(self, seconds: float) -> None:
        time.sleep(seconds)

    def compact(self) -> None:
        self.server.compact()

    def restart(self) -> None:
        self.server.restart(down_for=0.3)

    def close(self) -> None:
        for c in self._clients:
            c.close()


@pytest.fixture
def harness(etcd: EtcdServer) -> Iterator[EtcdHarness]:
    if not etcd.running:
        etcd.start()
    h = EtcdHarness(etcd)
    try:
        yield h
    finally:
        h.close()


class TestEtcdDatastoreContract(DatastoreContract):
    pass


def test_values_are_stored_verbatim(etcd: EtcdServer) -> None:
    """flannel and calicoctl read what we write: the key and the JSON text are exactly ours."""
    ds = EtcdDatastore(etcd.endpoint)
    try:
        value = '{"PublicIP":"10.99.0.1","BackendType":"vxlan","BackendData":{"VNI":1}}'
        ds.create("/coreos.com/network/subnets/10.244.1.0-24", value, ttl=60)
        out = etcd.etcdctl("get", "/coreos.com/network/subnets/10.244.1.0-24", "--print-value-only")
        assert out.strip() == value
        lease = ds.get("/coreos.com/network/subnets/10.244.1.0-24")
        assert lease is not None
        ttl = etcd.etcdctl("lease", "timetolive", f"{lease.lease:x}")
        assert "granted with TTL(60s)" in ttl
        etcd.etcdctl("put", "/coreos.com/network/config", '{"Network":"10.244.0.0/16"}')
        cfg = ds.get("/coreos.com/network/config")
        assert cfg is not None and cfg.value == '{"Network":"10.244.0.0/16"}' and cfg.lease == 0
    finally:
        ds.delete("/coreos.com/network/subnets/10.244.1.0-24")
        ds.delete("/coreos.com/network/config")
        ds.close()


def test_unavailable_while_down_then_recovers(etcd: EtcdServer) -> None:
    ds = EtcdDatastore(etcd.endpoint, timeout=1)
    try:
        ds.put("/pycni-test/down/k", "v")
        etcd.stop()
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            ds.get("/pycni-test/down/k")
        with pytest.raises(Unavailable):
            ds.create("/pycni-test/down/k2", "v")
        assert time.monotonic() - t0 < 3
        etcd.start()
        eventually(lambda: _get_or_none(ds, "/pycni-test/down/k") == "v", 10, "the client to reconnect")
    finally:
        if not etcd.running:
            etcd.start()
        ds.close()


def _get_or_none(ds: EtcdDatastore, key: str) -> str | None:
    try:
        v = ds.get(key)
    except Unavailable:
        return None
    return v.value if v else None


def test_sync_waits_for_an_unreachable_etcd(etcd: EtcdServer) -> None:
    """Started while etcd is down: WAIT_FOR_DATASTORE only, then the list and IN_SYNC once it is up."""
    etcd.stop()
    ds = EtcdDatastore(etcd.endpoint, timeout=1)
    rec = Recorder()
    try:
        with syncing(ds, ["/pycni-test/late/"], rec):
            time.sleep(0.5)
            assert rec.statuses() == [SyncStatus.WAIT_FOR_DATASTORE]
            etcd.start()
            eventually(lambda: rec.in_sync_count() == 1, 10, "IN_SYNC once etcd is up")
            ds.put("/pycni-test/late/k", "v")
            eventually(lambda: rec.has("/pycni-test/late/k", "v"), 5)
        assert SyncStatus.RESYNC not in rec.statuses()
    finally:
        if not etcd.running:
            etcd.start()
        ds.close()


def test_endpoints_are_tried_in_order(etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    ds = EtcdDatastore([dead, etcd.endpoint], timeout=1)
    try:
        v = ds.put("/pycni-test/failover/k", "v")
        assert ds.get("/pycni-test/failover/k") == v
        rec = Recorder()
        with syncing(ds, ["/pycni-test/failover/"], rec):
            eventually(lambda: rec.has("/pycni-test/failover/k", "v"), 5)
    finally:
        ds.close()
    with pytest.raises(Unavailable):
        lonely = EtcdDatastore(f"{dead},{dead}", timeout=0.5)
        try:
            lonely.get("/x")
        finally:
            lonely.close()


def test_parse_endpoints() -> None:
    assert parse_endpoints("http://10.0.0.1:2379,127.0.0.1:4001") == [("10.0.0.1", 2379), ("127.0.0.1", 4001)]
    assert parse_endpoints(["http://[::1]:2379", "etcd"]) == [("::1", 2379), ("etcd", 2379)]
    for bad in ("https://10.0.0.1:2379", "", "http://h:notaport"):
        with pytest.raises(Invalid):
            parse_endpoints(bad)


def test_sync_detects_a_hung_etcd_and_recovers(etcd: EtcdServer) -> None:
    """SIGSTOP: the TCP connection stays up but nothing answers; keepalive pings break the watch."""
    ds = EtcdDatastore(etcd.endpoint, timeout=1, keepalive=0.5)
    writer = EtcdDatastore(etcd.endpoint, timeout=2)
    rec = Recorder()
    try:
        with syncing(ds, ["/pycni-test/hung/"], rec):
            eventually(lambda: rec.in_sync_count() == 1, 5)
            etcd.pause()
            try:
                eventually(lambda: SyncStatus.RESYNC in rec.statuses(), 10, "RESYNC while etcd hangs")
            finally:
                etcd.resume()
            eventually(lambda: rec.in_sync_count() == 2, 15, "IN_SYNC after etcd thaws")
            writer.put("/pycni-test/hung/k", "v")
            eventually(lambda: rec.has("/pycni-test/hung/k", "v"), 5)
    finally:
        etcd.resume()
        ds.close()
        writer.close()


def test_sync_returns_when_the_client_is_closed(etcd: EtcdServer) -> None:
    ds = EtcdDatastore(etcd.endpoint, timeout=1)
    rec = Recorder()
    stop = threading.Event()
    t = threading.Thread(target=ds.sync, args=(["/pycni-test/closed/"], rec, stop), daemon=True)
    t.start()
    eventually(lambda: rec.in_sync_count() == 1, 5)
    ds.close()
    t.join(5)
    assert not t.is_alive()
    with pytest.raises(Unavailable):
        ds.get("/pycni-test/closed/k")
    stop.set()


def test_relist_after_the_store_went_back_in_time() -> None:
    """A wiped etcd reuses revisions: equal revisions must not hide new values."""
    with EtcdServer() as server:
        ds = EtcdDatastore(server.endpoint, timeout=1)
        rec = Recorder()
        try:
            for i in range(5):
                ds.put(f"/w/{i}", f"old{i}")
            with syncing(ds, ["/w/"], rec):
                eventually(lambda: rec.in_sync_count() == 1, 5)
                server.kill()
                shutil.rmtree(server.data_dir)
                server.start()
                fresh = EtcdDatastore(server.endpoint, timeout=2)
                try:
                    eventually(lambda: _put_ok(fresh, "/w/0", "new0"), 10, "a write to the new store")
                    assert fresh.get("/w/0") is not None and fresh.get("/w/0").revision == 2  # type: ignore[union-attr]
                finally:
                    fresh.close()
                eventually(lambda: rec.view() == {"/w/0": "new0"}, 15, "the consumer to see the new store")
        finally:
            ds.close()


def _put_ok(ds: EtcdDatastore, key: str, value: str) -> bool:
    try:
        ds.put(key, value)
    except Unavailable:
        return False
    return True


def test_empty_prefix_is_the_whole_keyspace() -> None:
    with EtcdServer() as server:
        ds = EtcdDatastore(server.endpoint, timeout=2)
        rec = Recorder()
        try:
            ds.put("/a", "1")
            ds.put("z", "2")
            assert [v.key for v in ds.list("")] == ["/a", "z"]
            with syncing(ds, [""], rec):
                eventually(lambda: rec.in_sync_count() == 1, 5)
                ds.put("\x7f", "3")
                eventually(lambda: rec.view() == {"/a": "1", "z": "2", "\x7f": "3"}, 5)
        finally:
            ds.close()


def test_empty_key_is_invalid(etcd: EtcdServer) -> None:
    ds = EtcdDatastore(etcd.endpoint)
    try:
        with pytest.raises(Invalid):
            ds.put("", "v")
    finally:
        ds.close()


def test_memory_and_etcd_agree_on_a_random_workload(etcd: EtcdServer) -> None:
    """Differential check: the same 400 random operations on MemoryDatastore and on etcd give the
    same results (values, which calls fail and with which error), so the fake stays honest beyond
    the cases the contract names. Revisions differ in number, so a stale one is the key's previous
    revision in each store."""
    import random

    from pycni.datastore.memory import MemoryDatastore
    from pycni.errors import PycniError

    rnd = random.Random(2026)
    prefix = f"/pycni-test/diff-{time.monotonic_ns()}/"
    mem = MemoryDatastore()
    real = EtcdDatastore(etcd.endpoint, timeout=2)
    stores: dict[str, Datastore] = {"memory": mem, "etcd": real}
    history: dict[str, dict[str, list[int]]] = {"memory": {}, "etcd": {}}  # key -> revisions seen
    keys = [prefix + c for c in "abcde"]
    try:
        for step in range(400):
            key = rnd.choice(keys)
            op = rnd.choice(["put", "create", "update", "update-stale", "delete", "delete-rev", "get"])
            results = {}
            for name, ds in stores.items():
                revs = history[name].setdefault(key, [])
                cur = ds.get(key)
                try:
                    if op == "put":
                        out: object = ds.put(key, f"v{step}").value
                    elif op == "create":
                        out = ds.create(key, f"v{step}").value
                    elif op == "update":
                        out = ds.update(key, f"v{step}", revision=cur.revision if cur else 1).value
                    elif op == "update-stale":
                        stale = revs[-2] if len(revs) > 1 else 1
                        out = ds.update(key, f"v{step}", revision=stale).value
                    elif op == "delete":
                        out = ds.delete(key)
                    elif op == "delete-rev":
                        out = ds.delete(key, revision=cur.revision if cur else 1)
                    else:
                        out = cur.value if cur else None
                except PycniError as e:
                    out = type(e).__name__
                now = ds.get(key)
                if now is not None and (not revs or revs[-1] != now.revision):
                    revs.append(now.revision)
                results[name] = out
            assert results["memory"] == results["etcd"], (step, op, key, results)
        listed = {n: [(v.key, v.value) for v in ds.list(prefix)] for n, ds in stores.items()}
        assert listed["memory"] == listed["etcd"]
    finally:
        real.close()


def test_a_write_with_unknown_outcome_is_not_replayed_elsewhere(etcd: EtcdServer) -> None:
    """Endpoint A hangs (SIGSTOP): a write to it may or may not have been applied, so it must not
    be replayed on B (a replayed create would report our own success as AlreadyExists). Reads
    fail over; a write fails over only when A provably never got it (connection refused)."""
    with EtcdServer() as a:
        ds = EtcdDatastore([a.endpoint, etcd.endpoint], timeout=0.5)
        try:
            assert ds.get("/pycni-test/ambiguous/k") is None  # connected to A
            a.pause()
            with pytest.raises(Unavailable, match="outcome unknown"):
                ds.create("/pycni-test/ambiguous/k", "v")
            b_only = EtcdDatastore(etcd.endpoint)
            assert _get_or_none(b_only, "/pycni-test/ambiguous/k") is None
            b_only.close()
            assert ds.get("/pycni-test/ambiguous/k") is None  # the read failed over to B
            a.resume()
            a.stop()  # now refused: provably not sent, so a write may go to B
            v = ds.create("/pycni-test/ambiguous/k2", "v")
            assert ds.get("/pycni-test/ambiguous/k2") == v
        finally:
            a.resume()
            ds.close()
