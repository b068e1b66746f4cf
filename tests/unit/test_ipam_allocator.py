"""BlockAllocator against MemoryDatastore: order, claiming, borrowing, strict affinity, release, CAS races."""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Callable

import pytest

from pycni.datastore import Versioned, calico
from pycni.datastore.memory import MemoryDatastore
from pycni.errors import AlreadyExists, CasConflict, Invalid, Transient, Unavailable
from pycni.ipam import keys
from pycni.ipam.allocator import BlockAllocator, NoFreeAddresses, RetriesExhausted, block_order
from pycni.ipam.block import AllocationBlock


def add_pool(ds: MemoryDatastore, name: str, cidr: str, block_size: int = 26, **spec: object) -> None:
    body = {"cidr": cidr, "blockSize": block_size, "ipipMode": "Never", "vxlanMode": "Never",
            "natOutgoing": True, "disabled": False, "nodeSelector": "all()"}
    body.update(spec)
    doc = {"kind": "IPPool", "apiVersion": "projectcalico.org/v3", "metadata": {"name": name}, "spec": body}
    ds.put(calico.resource_key(calico.IPPool, name), json.dumps(doc))


class Wall:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def alloc(ds: object, node: str, **kw: object) -> BlockAllocator:
    kw.setdefault("sleep", lambda s: None)
    return BlockAllocator(ds, node=node, **kw)  # type: ignore[arg-type]


def block(ds: MemoryDatastore, cidr: str) -> AllocationBlock | None:
    v = ds.get(keys.block_key(ipaddress.ip_network(cidr)))
    return None if v is None else AllocationBlock.from_json(v.value)


def handle(ds: MemoryDatastore, h: str) -> dict[str, object] | None:
    v = ds.get(keys.handle_key(h))
    return None if v is None else json.loads(v.value)


@pytest.fixture
def ds() -> MemoryDatastore:
    d = MemoryDatastore()
    add_pool(d, "default-ipv4-ippool", "10.244.0.0/16")
    return d


def test_first_allocation_claims_the_nodes_block_and_writes_calico_records(ds: MemoryDatastore) -> None:
    a = alloc(ds, "node-1")
    pool = calico.get_resource(ds, calico.IPPool, "default-ipv4-ippool")
    assert pool is not None
    first = next(block_order(pool[0], "node-1"))
    got = a.auto_assign("k8s-pod-network.c1", {"namespace": "default", "node": "node-1", "pod": "p1"})
    assert [str(i) for i in got] == [f"{first.network_address}/26"]
    assert json.loads(ds.get(keys.affinity_key("node-1", first)).value) == {  # type: ignore[union-attr]
        "state": "confirmed", "deleted": False}
    assert handle(ds, "k8s-pod-network.c1") == {"block": {str(first): 1}, "deleted": False}
    b = block(ds, str(first))
    assert b is not None and b.affinity == "host:node-1" and b.affinity_claim_time
    assert b.attributes[0].secondary == {"namespace": "default", "node": "node-1", "pod": "p1"}
    assert a.blocks_for_node() == [first]


def test_order_within_block_then_next_block(ds: MemoryDatastore) -> None:
    a = alloc(ds, "n1")
    ips = [a.auto_assign(f"h{i}")[0] for i in range(65)]
    b1 = ips[0].network
    assert [int(i.ip) - int(b1.network_address) for i in ips[:64]] == list(range(64))
    assert ips[64].network != b1
    assert sorted(a.blocks_for_node()) == sorted([b1, ips[64].network])
    assert len({i.ip for i in ips}) == 65


def test_nodes_start_at_different_blocks(ds: MemoryDatastore) -> None:
    blocks = {alloc(ds, f"node-{i}").auto_assign(f"h{i}")[0].network for i in range(3)}
    assert len(blocks) == 3


def test_exhaustion_is_all_or_nothing() -> None:
    ds = MemoryDatastore()
    add_pool(ds, "tiny", "10.9.0.0/28", block_size=30)  # 4 blocks of 4
    a = alloc(ds, "n1")
    a.auto_assign("h1", num=14)
    with pytest.raises(NoFreeAddresses):
        a.auto_assign("h2", num=3)
    assert handle(ds, "h2") is None
    assert sum(u.in_use for u in a.usage()) == 14
    assert len(a.auto_assign("h3", num=2)) == 2
    with pytest.raises(NoFreeAddresses):
        a.auto_assign("h4")


def test_no_pool_is_an_error() -> None:
    with pytest.raises(NoFreeAddresses):
        alloc(MemoryDatastore(), "n1").auto_assign("h")


def test_borrowing_and_strict_affinity() -> None:
    ds = MemoryDatastore()
    add_pool(ds, "small", "10.9.0.0/29", block_size=30)  # two blocks of 4
    a, b = alloc(ds, "a"), alloc(ds, "b")
    a.auto_assign("ha", num=5)  # a owns both blocks now
    assert len(a.blocks_for_node()) == 2
    got = b.auto_assign("hb", {"node": "b"})
    blk = block(ds, str(got[0].network))
    assert blk is not None and blk.host == "a"  # borrowed from a's block, affinity unchanged
    assert blk.attribute_for(got[0].ip).secondary == {"node": "b"}  # type: ignore[union-attr]
    assert b.blocks_for_node() == []
    b.release_by_handle("hb")
    a.set_config(keys.IPAMConfig(strict_affinity=True, auto_allocate_blocks=True))
    with pytest.raises(NoFreeAddresses):
        b.auto_assign("hb2")


def test_empty_block_of_another_node_is_reclaimed_after_a_minute() -> None:
    ds = MemoryDatastore()
    add_pool(ds, "one", "10.9.0.0/30", block_size=30)  # a single block
    wall = Wall()
    a, b = alloc(ds, "a", wall_clock=wall), alloc(ds, "b", wall_clock=wall)
    a.auto_assign("ha")
    a.release_by_handle("ha")
    a.set_config(keys.IPAMConfig(strict_affinity=True))
    with pytest.raises(NoFreeAddresses):  # too young to reclaim, and borrowing is off
        b.auto_assign("hb")
    wall.t += 61
    got = b.auto_assign("hb")
    assert b.blocks_for_node() == [got[0].network] and a.blocks_for_node() == []


def test_max_blocks_per_host() -> None:
    ds = MemoryDatastore()
    add_pool(ds, "p", "10.9.0.0/28", block_size=30)
    a = alloc(ds, "n1")
    a.set_config(keys.IPAMConfig(strict_affinity=True, auto_allocate_blocks=True, max_blocks_per_host=1))
    a.auto_assign("h", num=4)
    with pytest.raises(NoFreeAddresses):
        a.auto_assign("h2")


def test_set_config_rejects_calicos_invalid_combinations(ds: MemoryDatastore) -> None:
    a = alloc(ds, "n1")
    with pytest.raises(Invalid):
        a.set_config(keys.IPAMConfig(strict_affinity=False, auto_allocate_blocks=False))
    with pytest.raises(Invalid):
        a.set_config(keys.IPAMConfig(strict_affinity=False, max_blocks_per_host=3))


def test_release_ips_is_idempotent_and_updates_handles(ds: MemoryDatastore) -> None:
    a = alloc(ds, "n1")
    ips = a.auto_assign("h", num=3)
    cidr = str(ips[0].network)
    assert a.release_ips([ips[0].ip]) == []
    assert handle(ds, "h") == {"block": {cidr: 2}, "deleted": False}
    assert a.release_ips([ips[0].ip, "10.99.0.1"]) == [ips[0].ip, ipaddress.ip_address("10.99.0.1")]
    assert a.release_ips([i.ip for i in ips[1:]]) == []
    assert handle(ds, "h") is None
    b = block(ds, cidr)
    assert b is not None and b.empty() and b.affinity == "host:n1"  # affine block stays


def test_release_by_handle_is_idempotent(ds: MemoryDatastore) -> None:
    a = alloc(ds, "n1")
    ips = a.auto_assign("h", num=2)
    a.auto_assign("other")
    assert a.release_by_handle("h") == [i.ip for i in ips]
    assert a.release_by_handle("h") == []
    assert handle(ds, "h") is None and handle(ds, "other") is not None
    assert a.ips_by_handle("other") and a.ips_by_handle("h") == []


def test_assign_ip(ds: MemoryDatastore) -> None:
    a, b = alloc(ds, "n1"), alloc(ds, "n2")
    got = a.assign_ip("10.244.7.9", "h", {"node": "n1"})
    assert str(got) == "10.244.7.9/26"
    assert a.blocks_for_node() == [ipaddress.ip_network("10.244.7.0/26")]  # block claimed on the way
    with pytest.raises(AlreadyExists):
        b.assign_ip("10.244.7.9", "h2")
    assert handle(ds, "h2") is None
    b.assign_ip("10.244.7.10", "h2")  # borrowing a specific address is allowed...
    a.set_config(keys.IPAMConfig(strict_affinity=True))
    with pytest.raises(Invalid):  # ...unless affinity is strict
        b.assign_ip("10.244.7.11", "h3")
    with pytest.raises(Invalid):
        a.assign_ip("192.168.0.1", "h")
    assert a.get_assignment("10.244.7.9").handle_id == "h"  # type: ignore[union-attr]


def test_tunnel_handle(ds: MemoryDatastore) -> None:
    a = alloc(ds, "n1")
    h = keys.tunnel_handle("vxlan", "n1")
    got = a.auto_assign(h, {"node": "n1", "type": "vxlanTunnelAddress"})
    assert a.ips_by_handle(h) == [got[0].ip]
    assert a.release_by_handle(h) == [got[0].ip]


def test_pool_selection(ds: MemoryDatastore) -> None:
    add_pool(ds, "off", "10.10.0.0/16", disabled=True)
    add_pool(ds, "nobody", "10.11.0.0/16", nodeSelector="!all()")
    add_pool(ds, "extra", "10.12.0.0/16")
    a = alloc(ds, "n1")
    for _ in range(5):
        ip = a.auto_assign("h")[0].ip
        assert ip in ipaddress.ip_network("10.244.0.0/16") or ip in ipaddress.ip_network("10.12.0.0/16")
    assert a.auto_assign("h", pools=["extra"])[0].ip in ipaddress.ip_network("10.12.0.0/16")
    assert a.auto_assign("h", pools=["10.244.0.0/16"])[0].ip in ipaddress.ip_network("10.244.0.0/16")
    with pytest.raises(Invalid):
        a.auto_assign("h", pools=["off"])
    with pytest.raises(Invalid):
        a.auto_assign("h", pools=["missing"])


def test_release_affinity(ds: MemoryDatastore) -> None:
    a = alloc(ds, "n1")
    ip = a.auto_assign("h")[0]
    empty = ipaddress.ip_network("10.244.200.0/26")
    assert a.claim_affinity(empty)
    assert a.release_affinity(empty) and block(ds, str(empty)) is None  # empty: deleted
    assert a.release_affinity(ip.network)  # in use: keeps the address, loses the affinity
    b = block(ds, str(ip.network))
    assert b is not None and b.affinity is None and b.in_use() == 1
    assert a.blocks_for_node() == [] and not a.release_affinity(ip.network)
    a.release_by_handle("h")  # last address gone from an unowned block: the block goes too
    assert block(ds, str(ip.network)) is None


def test_claim_conflict_with_another_node(ds: MemoryDatastore) -> None:
    a, b = alloc(ds, "a"), alloc(ds, "b")
    cidr = ipaddress.ip_network("10.244.1.0/26")
    assert a.claim_affinity(cidr)
    assert not b.claim_affinity(cidr)
    assert ds.get(keys.affinity_key("b", cidr)) is None  # pending claim cleaned up
    assert a.claim_affinity(cidr)  # idempotent for the owner


class RacingDatastore:
    """Delegates to a MemoryDatastore; before some block writes, lets a racing writer go first."""

    def __init__(self, inner: MemoryDatastore, race: Callable[[], None], times: int) -> None:
        self.inner = inner
        self.race = race
        self.times = times
        self.conflicts = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def update(self, key: str, value: str, *, revision: int, ttl: float | None = None) -> Versioned:
        if key.startswith(keys.BLOCK_PREFIX) and self.times > 0:
            self.times -= 1
            self.race()
        try:
            return self.inner.update(key, value, revision=revision, ttl=ttl)
        except CasConflict:
            self.conflicts += 1
            raise


def test_cas_conflict_from_a_racing_writer_is_retried(ds: MemoryDatastore) -> None:
    other = alloc(ds, "n1")  # same node, another process: writes straight to the store
    other.auto_assign("seed")
    racing_ips: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    racy = RacingDatastore(ds, lambda: racing_ips.extend(other.auto_assign("racer")), times=3)
    a = alloc(racy, "n1")
    got = a.auto_assign("mine", num=2)
    assert racy.conflicts == 3
    assert len(racing_ips) == 3
    all_ips = [i.ip for i in got + racing_ips]
    assert len(set(all_ips)) == 5
    assert handle(ds, "mine") == {"block": {str(got[0].network): 2}, "deleted": False}
    assert handle(ds, "racer")["block"] == {str(got[0].network): 3}  # type: ignore[index]


def test_retries_are_bounded_and_leave_no_handle(ds: MemoryDatastore) -> None:
    alloc(ds, "n1").auto_assign("seed")
    racer = alloc(ds, "n1")
    racy = RacingDatastore(ds, lambda: racer.auto_assign("racer"), times=10_000)
    sleeps: list[float] = []
    a = BlockAllocator(racy, node="n1", retries=5, sleep=sleeps.append)  # type: ignore[arg-type]
    with pytest.raises(RetriesExhausted) as ei:
        a.auto_assign("doomed")
    assert isinstance(ei.value, Transient)
    assert handle(ds, "doomed") is None
    assert len(sleeps) == 4 and all(0 < s <= 0.15 for s in sleeps)


class CrashingDatastore:
    """Fails the first block write after the handle was written: the crash window."""

    def __init__(self, inner: MemoryDatastore) -> None:
        self.inner = inner
        self.armed = True

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def update(self, key: str, value: str, *, revision: int, ttl: float | None = None) -> Versioned:
        if self.armed and key.startswith(keys.BLOCK_PREFIX):
            self.armed = False
            raise Unavailable("etcd went away")
        return self.inner.update(key, value, revision=revision, ttl=ttl)


def test_crash_between_handle_and_block_leaks_nothing(ds: MemoryDatastore) -> None:
    alloc(ds, "n1").auto_assign("seed")
    a = alloc(CrashingDatastore(ds), "n1")
    with pytest.raises(Unavailable):
        a.auto_assign("c1")
    h = handle(ds, "c1")
    assert h is not None  # the handle over-counts (safe direction)...
    assert a.ips_by_handle("c1") == []  # ...but no address is held
    assert alloc(ds, "n1").release_by_handle("c1") == []
    assert handle(ds, "c1") is None


def test_usage(ds: MemoryDatastore) -> None:
    add_pool(ds, "second", "10.50.0.0/24", block_size=28, disabled=True)
    a = alloc(ds, "n1")
    a.auto_assign("h", num=3)
    u = {p.name: p for p in a.usage()}
    assert u["default-ipv4-ippool"].total == 65536 and u["default-ipv4-ippool"].in_use == 3
    assert u["default-ipv4-ippool"].free == 65533
    assert [(bl.node, bl.total, bl.in_use) for bl in u["default-ipv4-ippool"].blocks] == [("n1", 64, 3)]
    assert u["second"].disabled and u["second"].in_use == 0 and u["second"].blocks == ()


def test_bad_records_do_not_stop_allocation(ds: MemoryDatastore) -> None:
    ds.put(calico.resource_key(calico.IPPool, "broken"), "{not json")
    a = alloc(ds, "n1")
    first = a.auto_assign("h")[0].network
    ds.put(keys.block_key(ipaddress.ip_network("10.244.255.0/26")), "garbage")
    assert a.auto_assign("h2")[0].network == first


def test_threads_on_three_nodes_get_distinct_addresses(ds: MemoryDatastore) -> None:
    results: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(node: str, start: int, n: int) -> None:
        a = BlockAllocator(ds, node=node)
        try:
            for i in range(start, start + n):
                ip = a.auto_assign(f"k8s-pod-network.{node}-{i}", {"node": node})[0]
                with lock:
                    results.append(ip)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(f"node-{n}", w * 100, 17))
               for n in range(3) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 204 and len({r.ip for r in results}) == 204
    total = sum(p.in_use for p in alloc(ds, "x").usage())
    assert total == 204


def test_allowed_uses_and_manual_pools(ds: MemoryDatastore) -> None:
    add_pool(ds, "tunnels-only", "10.13.0.0/24", allowedUses=["Tunnel"])
    add_pool(ds, "manual", "10.14.0.0/24", assignmentMode="Manual")
    a = alloc(ds, "n1")
    workload = ipaddress.ip_network("10.244.0.0/16")
    for i in range(4):
        assert a.auto_assign(f"k8s-pod-network.{i}")[0].ip in workload
    tunnel = a.auto_assign(keys.tunnel_handle("ipip", "n1"), {"node": "n1", "type": "ipipTunnelAddress"})
    assert tunnel[0].ip in workload or tunnel[0].ip in ipaddress.ip_network("10.13.0.0/24")
    assert a.auto_assign("h", pools=["manual"])[0].ip in ipaddress.ip_network("10.14.0.0/24")
    with pytest.raises(Invalid):
        a.auto_assign("h", pools=["tunnels-only"])


class AffinityRaceDatastore:
    """Before our first affinity confirm, another process of the same node claims the same block."""

    def __init__(self, inner: MemoryDatastore, race: Callable[[], None]) -> None:
        self.inner = inner
        self.race: Callable[[], None] | None = race

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def update(self, key: str, value: str, *, revision: int, ttl: float | None = None) -> Versioned:
        if key.startswith(keys.HOST_PREFIX) and "confirmed" in value and self.race is not None:
            race, self.race = self.race, None
            race()
        return self.inner.update(key, value, revision=revision, ttl=ttl)


def test_same_node_claims_of_one_block_both_succeed(ds: MemoryDatastore) -> None:
    # The other claimer has only re-marked the affinity pending (it has not confirmed yet) when we
    # try to confirm: our CAS loses, and we must still end up confirmed, not fail.
    cidr = ipaddress.ip_network("10.244.3.0/26")
    other = alloc(ds, "n1")
    a = alloc(AffinityRaceDatastore(ds, lambda: other._pending_affinity(cidr) and None), "n1")
    assert a.claim_affinity(cidr)
    aff = ds.get(keys.affinity_key("n1", cidr))
    assert aff is not None and json.loads(aff.value)["state"] == "confirmed"
    assert other.claim_affinity(cidr)  # and the other claimer finds the block its own
    assert a.blocks_for_node() == [cidr]


def test_ipv6_pool(ds: MemoryDatastore) -> None:
    add_pool(ds, "default-ipv6-ippool", "fd00:10::/112", block_size=122)
    a = alloc(ds, "n1")
    v6 = a.auto_assign("h", version=6, num=2)
    assert all(i.ip in ipaddress.ip_network("fd00:10::/112") and i.network.prefixlen == 122 for i in v6)
    assert ds.get(keys.block_key(v6[0].network)) is not None
    assert "/ipv6/block/" in keys.block_key(v6[0].network)
    assert a.blocks_for_node(version=6) == [v6[0].network]
    v4 = a.auto_assign("h", version=4)
    assert handle(ds, "h")["block"] == {str(v6[0].network): 2, str(v4[0].network): 1}  # type: ignore[index]
    assert sorted(map(str, a.release_by_handle("h"))) == sorted(str(i.ip) for i in v6 + v4)


def test_pool_node_selector_uses_node_labels() -> None:
    ds = MemoryDatastore()
    add_pool(ds, "zone-a", "10.20.0.0/16", nodeSelector="zone == 'a'")
    add_pool(ds, "rest", "10.30.0.0/16", nodeSelector="!has(zone) || zone != 'a'")
    calico.create_resource(ds, calico.Node(meta=calico.new_meta("n1", labels={"zone": "a"})))
    calico.create_resource(ds, calico.Node(meta=calico.new_meta("n2", labels={"zone": "b"})))
    zone_a, rest = ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("10.30.0.0/16")
    for _ in range(3):
        assert alloc(ds, "n1").auto_assign("h")[0].ip in zone_a
        assert alloc(ds, "n2").auto_assign("h")[0].ip in rest
        assert alloc(ds, "n3").auto_assign("h")[0].ip in rest  # no Node resource: no labels
    add_pool(ds, "odd", "10.40.0.0/16", nodeSelector="zone ~= 'a'")  # unparsable: matches nobody
    add_pool(ds, "zone-a", "10.20.0.0/16", nodeSelector="zone == 'nowhere'")
    with pytest.raises(NoFreeAddresses):  # no pool selects n1 any more (its old block is not used)
        alloc(ds, "n1").auto_assign("h")


def test_crash_mid_claim_heals_on_next_assignment(ds: MemoryDatastore) -> None:
    # A claimer died after creating the block but before confirming its affinity.
    pool = calico.get_resource(ds, calico.IPPool, "default-ipv4-ippool")
    assert pool is not None
    cidr = next(block_order(pool[0], "n1"))
    ds.create(keys.affinity_key("n1", cidr), keys.BlockAffinity("pending").to_json())
    ds.create(keys.block_key(cidr), AllocationBlock.new(cidr, affinity="host:n1", claim_time="x").to_json())
    a = alloc(ds, "n1")
    assert a.blocks_for_node() == []  # pending counts as absent
    assert a.auto_assign("h")[0].network == cidr  # the half-claimed block is found and finished
    assert a.blocks_for_node() == [cidr]
