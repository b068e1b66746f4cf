"""AllocationBlock maths and Calico's exact JSON; the IPAM key layout."""

from __future__ import annotations

import ipaddress
import json

import pytest

from pycni.errors import AlreadyExists, Invalid
from pycni.ipam import keys
from pycni.ipam.block import AllocationBlock, host_affinity

NET = ipaddress.ip_network("10.244.0.0/26")


def ip(s: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(s)


def test_new_block_is_all_free_in_order() -> None:
    b = AllocationBlock.new(NET, affinity=host_affinity("n1"), claim_time="2026-01-01T00:00:00Z",
                            sequence_number=7)
    assert b.size == 64 and b.num_free() == 64 and b.in_use() == 0 and b.empty()
    assert b.unallocated == list(range(64))
    assert b.host == "n1"


def test_json_has_calicos_field_names() -> None:
    b = AllocationBlock.new(NET, affinity="host:n1", claim_time="2026-01-01T00:00:00Z", sequence_number=5)
    b.auto_assign(2, "k8s-pod-network.abc", {"namespace": "default", "node": "n1", "pod": "p"})
    obj = json.loads(b.to_json())
    assert list(obj) == ["cidr", "affinity", "affinity_claim_time", "allocations", "unallocated",
                         "attributes", "sequenceNumber", "sequenceNumberForAllocation", "deleted"]
    assert obj["cidr"] == "10.244.0.0/26"
    assert obj["affinity"] == "host:n1"
    assert obj["allocations"][:3] == [0, 0, None] and len(obj["allocations"]) == 64
    assert obj["unallocated"][:2] == [2, 3] and len(obj["unallocated"]) == 62
    assert obj["attributes"] == [{"handle_id": "k8s-pod-network.abc",
                                  "secondary": {"namespace": "default", "node": "n1", "pod": "p"}}]
    assert obj["sequenceNumber"] == 5
    assert obj["sequenceNumberForAllocation"] == {"0": 5, "1": 5}
    assert obj["deleted"] is False


def test_no_affinity_omits_claim_time_and_writes_null() -> None:
    obj = json.loads(AllocationBlock.new(NET).to_json())
    assert obj["affinity"] is None and "affinity_claim_time" not in obj


def test_round_trip_keeps_unknown_fields() -> None:
    # A block as a newer Calico writes it (with "alternate" owner attrs and a legacy field).
    raw = {
        "cidr": "10.244.0.0/30", "affinity": "host:n2", "affinity_claim_time": "2026-01-01T00:00:00Z",
        "allocations": [0, None, 1, None], "unallocated": [1, 3],
        "attributes": [{"handle_id": "h0", "secondary": {"node": "n2"}},
                       {"handle_id": "h1", "secondary": None, "alternate": {"pod": "x"}}],
        "sequenceNumber": 1700000000000000000, "sequenceNumberForAllocation": {"0": 1, "2": 3},
        "deleted": False, "strictAffinity": False,
    }
    b = AllocationBlock.from_json(json.dumps(raw))
    assert b.in_use() == 2 and b.host == "n2"
    assert b.attribute_for(ip("10.244.0.2")).extra == {"alternate": {"pod": "x"}}  # type: ignore[union-attr]
    assert json.loads(b.to_json()) == raw


def test_auto_assign_takes_from_the_front_and_returns_block_masked() -> None:
    b = AllocationBlock.new(NET)
    got = b.auto_assign(3, "h", None)
    assert [str(i) for i in got] == ["10.244.0.0/26", "10.244.0.1/26", "10.244.0.2/26"]
    assert b.in_use() == 3 and b.num_free() == 61
    assert len(b.attributes) == 1  # one attribute shared by the three


def test_released_addresses_go_to_the_back_fifo() -> None:
    b = AllocationBlock.new(NET)
    b.auto_assign(2, "a", None)
    missing, by_handle = b.release([ip("10.244.0.0")])
    assert missing == [] and by_handle == {"a": 1}
    assert b.unallocated[-1] == 0
    assert str(b.auto_assign(1, "b", None)[0].ip) == "10.244.0.2"  # not the just-freed .0


def test_release_reports_unallocated_and_compacts_attributes() -> None:
    b = AllocationBlock.new(NET)
    b.auto_assign(1, "a", {"pod": "a"})
    b.auto_assign(1, "b", {"pod": "b"})
    b.auto_assign(1, "c", {"pod": "c"})
    missing, by_handle = b.release([ip("10.244.0.1"), ip("10.244.0.1"), ip("10.244.0.9")])
    assert missing == [ip("10.244.0.9")] and by_handle == {"b": 1}
    assert [a.handle_id for a in b.attributes] == ["a", "c"]
    assert b.allocations[:3] == [0, None, 1]
    assert "1" not in b.sequence_number_for_allocation


def test_assign_specific_and_conflict() -> None:
    b = AllocationBlock.new(NET)
    assert str(b.assign(ip("10.244.0.10"), "h", None)) == "10.244.0.10/26"
    assert 10 not in b.unallocated
    with pytest.raises(AlreadyExists):
        b.assign(ip("10.244.0.10"), "other", None)
    with pytest.raises(Invalid):
        b.assign(ip("10.244.1.1"), "h", None)


def test_release_by_handle_and_handles() -> None:
    b = AllocationBlock.new(NET)
    b.auto_assign(2, "a", None)
    b.auto_assign(1, "b", None)
    assert b.handles() == {"a": 2, "b": 1}
    assert b.ips_by_handle("a") == [ip("10.244.0.0"), ip("10.244.0.1")]
    assert b.release_by_handle("a") == [ip("10.244.0.0"), ip("10.244.0.1")]
    assert b.release_by_handle("a") == []
    assert b.handles() == {"b": 1} and b.allocations[2] == 0


def test_exhaustion_returns_what_is_left() -> None:
    b = AllocationBlock.new(ipaddress.ip_network("10.0.0.0/30"))
    assert len(b.auto_assign(10, "h", None)) == 4
    assert b.auto_assign(1, "h", None) == []


@pytest.mark.parametrize("bad", [
    "not json", "[]", '{"cidr": "nope"}',
    '{"cidr": "10.0.0.0/30", "allocations": [0, null], "attributes": []}',
    '{"cidr": "10.0.0.0/30", "allocations": [5, null, null, null], "attributes": []}',
    '{"cidr": "10.0.0.0/30", "allocations": [null, null, null, null], "unallocated": [9]}',
])
def test_bad_blocks_are_invalid(bad: str) -> None:
    with pytest.raises(Invalid):
        AllocationBlock.from_json(bad)


def test_keys() -> None:
    assert keys.block_key(NET) == "/calico/ipam/v2/assignment/ipv4/block/10.244.0.0-26"
    assert keys.affinity_key("n1", NET) == "/calico/ipam/v2/host/n1/ipv4/block/10.244.0.0-26"
    assert keys.handle_key("k8s-pod-network.c1") == "/calico/ipam/v2/handle/k8s-pod-network.c1"
    assert keys.parse_block_key(keys.block_key(NET)) == NET
    assert keys.parse_affinity_key(keys.affinity_key("n1", NET)) == ("n1", NET)
    v6 = ipaddress.ip_network("fd00::/122")
    assert keys.block_key(v6) == "/calico/ipam/v2/assignment/ipv6/block/fd00::-122"
    assert keys.parse_block_key(keys.block_key(v6)) == v6
    assert keys.parse_block_key("/calico/ipam/v2/assignment/ipv4/block/garbage") is None
    assert keys.tunnel_handle("ipip", "n1") == "ipip-tunnel-addr-n1"
    assert keys.tunnel_handle("vxlan", "n1") == "vxlan-tunnel-addr-n1"


def test_small_records() -> None:
    assert keys.BlockAffinity("confirmed").to_json() == '{"state":"confirmed","deleted":false}'
    h = keys.IPAMHandle({"10.244.0.0/26": 2})
    assert h.to_json() == '{"block":{"10.244.0.0/26":2},"deleted":false}'
    assert keys.IPAMHandle.from_json(h.to_json()) == h
    cfg = keys.IPAMConfig.from_json('{"strict_affinity": true}')
    assert cfg.strict_affinity and not cfg.auto_allocate_blocks  # Go zero value when the key exists
    assert keys.IPAMConfig() == keys.IPAMConfig(False, True, 0)
    assert keys.IPAMConfig().to_json() == '{"auto_allocate_blocks":true}'  # Go's omitempty
    for c in (keys.IPAMConfig(True, False, 0), keys.IPAMConfig(True, True, 5), keys.IPAMConfig()):
        assert keys.IPAMConfig.from_json(c.to_json()) == c


def _check_invariants(b: AllocationBlock) -> None:
    free = set(b.unallocated)
    used = {o for o, a in enumerate(b.allocations) if a is not None}
    assert len(free) == len(b.unallocated), "an ordinal is free twice"
    assert free.isdisjoint(used) and free | used == set(range(b.size))
    assert {a for a in b.allocations if a is not None} == set(range(len(b.attributes)))
    assert set(b.sequence_number_for_allocation) == {str(o) for o in used}
    assert AllocationBlock.from_json(b.to_json()).to_json() == b.to_json()


def test_random_operations_keep_the_block_consistent() -> None:
    import random

    rng = random.Random(42)
    b = AllocationBlock.new(ipaddress.ip_network("10.1.0.0/27"), affinity="host:n", sequence_number=1)
    held: dict[str, list[ipaddress.IPv4Address]] = {}
    for step in range(800):
        op = rng.random()
        if op < 0.45:
            h = f"h{rng.randrange(12)}"
            got = b.auto_assign(rng.randint(1, 3), h, {"pod": h} if rng.random() < 0.8 else None)
            held.setdefault(h, []).extend(i.ip for i in got)  # type: ignore[misc]
        elif op < 0.6:
            o = rng.randrange(b.size)
            h = f"h{rng.randrange(12)}"
            try:
                b.assign(b.ip(o), h, None)  # type: ignore[arg-type]
                held.setdefault(h, []).append(b.ip(o))  # type: ignore[arg-type]
            except AlreadyExists:
                assert b.allocations[o] is not None
        elif op < 0.8 and held:
            h = rng.choice(sorted(held))
            assert sorted(b.release_by_handle(h)) == sorted(held.pop(h))
        else:
            ips = [b.ip(rng.randrange(b.size)) for _ in range(rng.randint(1, 4))]
            before = {ip for ip in ips if b.allocations[b.ordinal(ip)] is not None}
            missing, by_handle = b.release(ips)
            assert set(missing) == set(ips) - before and sum(by_handle.values()) == len(before)
            for h in list(held):
                held[h] = [ip for ip in held[h] if ip not in before]
        b.sequence_number += 1
        _check_invariants(b)
        assert b.handles() == {h: len(v) for h, v in held.items() if v}, step


def test_ipv6_block() -> None:
    b = AllocationBlock.new(ipaddress.ip_network("fd00:10::/122"))
    got = b.auto_assign(2, "h", None)
    assert [str(i) for i in got] == ["fd00:10::/122", "fd00:10::1/122"]
    assert json.loads(b.to_json())["cidr"] == "fd00:10::/122" and b.size == 64
