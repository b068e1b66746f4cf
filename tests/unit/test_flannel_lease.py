"""LeaseManager against MemoryDatastore on a FakeClock: flannel's allocation order, races, renewal, loss."""

from __future__ import annotations

import ipaddress
import random

import pytest

from pycni.datastore import Update
from pycni.datastore.flannel import LeaseAttrs, parse_config, subnet_key
from pycni.datastore.memory import MemoryDatastore
from pycni.errors import AlreadyExists
from pycni.flannel.lease import LeaseManager, OutOfSubnets
from pycni.testing.clock import FakeClock

N = ipaddress.IPv4Network
IP = ipaddress.IPv4Address
CFG = parse_config('{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}')


def attrs(ip: str) -> LeaseAttrs:
    return LeaseAttrs(IP(ip), "host-gw")


def mgr(ds: MemoryDatastore, clock: FakeClock, ip: str = "10.99.0.11", **kw: object) -> LeaseManager:
    return LeaseManager(ds, CFG, attrs(ip), clock=clock, rng=random.Random(1), **kw)  # type: ignore[arg-type]


def test_acquire_creates_a_ttl_lease_in_range() -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    lease = mgr(ds, clock).acquire()
    assert lease.subnet.prefixlen == 24 and lease.subnet.subnet_of(N("10.244.0.0/16"))
    assert lease.subnet != N("10.244.0.0/24")  # the first subnet is skipped
    v = ds.get(subnet_key(lease.subnet))
    assert v is not None and v.lease != 0
    assert v.value == '{"PublicIP":"10.99.0.11","PublicIPv6":null,"BackendType":"host-gw"}'


def test_reuses_own_lease_then_previous_subnet() -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    first = mgr(ds, clock).acquire()
    again = mgr(ds, clock).acquire()  # a restart: same PublicIP, same subnet
    assert again.subnet == first.subnet
    assert len(ds.list("/coreos.com/network/subnets/")) == 1
    # lease gone (expired) but subnet.env remembers it: take it back
    ds.delete(first.key)
    back = mgr(ds, clock, prev_subnet=first.subnet).acquire()
    assert back.subnet == first.subnet


def test_previous_subnet_taken_by_another_is_not_stolen() -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    other = mgr(ds, clock, ip="10.99.0.12").acquire()
    mine = mgr(ds, clock, prev_subnet=other.subnet).acquire()
    assert mine.subnet != other.subnet


def test_reservation_is_honoured_without_ttl() -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    key = subnet_key(N("10.244.77.0/24"))
    ds.put(key, '{"PublicIP":"10.99.0.11","PublicIPv6":null}')  # an operator's reservation: no TTL
    ds.put(subnet_key(N("10.244.78.0/24")), '{"PublicIP":"10.99.0.99"}')  # reserved for someone else
    m = mgr(ds, clock)
    lease = m.acquire()
    assert lease.subnet == N("10.244.77.0/24")
    v = ds.get(key)
    assert v is not None and v.lease == 0 and '"BackendType":"host-gw"' in v.value
    assert m.renew_at() is None  # a reservation is never renewed
    other = mgr(ds, clock, ip="10.99.0.13").acquire()
    assert other.subnet not in (N("10.244.77.0/24"), N("10.244.78.0/24"))


def test_incompatible_own_lease_is_replaced() -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    ds.put(subnet_key(N("10.244.0.0/24")), '{"PublicIP":"10.99.0.11"}', ttl=100)  # below SubnetMin
    lease = mgr(ds, clock).acquire()
    assert lease.subnet != N("10.244.0.0/24")
    assert ds.get(subnet_key(N("10.244.0.0/24"))) is None


def test_race_is_retried() -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    real_create = ds.create
    calls = {"n": 0}

    def racing_create(key: str, value: str, *, ttl: float | None = None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:  # another node wins the same subnet just before us
            real_create(key, '{"PublicIP":"10.99.0.99"}', ttl=ttl)
            raise AlreadyExists(key)
        return real_create(key, value, ttl=ttl)

    ds.create = racing_create  # type: ignore[method-assign]
    lease = mgr(ds, clock).acquire()
    assert calls["n"] == 2
    assert len(ds.list("/coreos.com/network/subnets/")) == 2
    assert ds.get(lease.key) is not None and "10.99.0.11" in ds.get(lease.key).value  # type: ignore[union-attr]


def test_out_of_subnets() -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    cfg = parse_config('{"Network":"10.20.0.0/24"}')  # 3 usable /26
    for i in range(3):
        LeaseManager(ds, cfg, attrs(f"10.99.0.{i + 1}"), clock=clock).acquire()
    with pytest.raises(OutOfSubnets):
        LeaseManager(ds, cfg, attrs("10.99.0.9"), clock=clock).acquire()


def test_renewal_before_expiry_keeps_the_lease_alive() -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    m = mgr(ds, clock, ttl=10.0, renew_margin=3.0)
    lease = m.acquire()
    assert m.renew_at() == pytest.approx(clock.now() + 7.0)
    clock.advance(6.9)
    assert m.tick() is False
    clock.advance(0.2)
    assert m.tick() is True and m.renewals == 1
    clock.advance(9.0)  # past the first TTL: still alive thanks to the renewal
    ds.tick()
    assert ds.get(lease.key) is not None
    assert m.lost is None


def test_dead_node_lease_expires_and_a_lost_lease_is_loud() -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    lost: list[str] = []
    m = mgr(ds, clock, ttl=10.0, renew_margin=3.0, on_lost=lost.append)
    lease = m.acquire()
    clock.advance(11)  # nobody renewed
    ds.tick()
    assert ds.get(lease.key) is None
    m.tick()
    assert m.lost and lost, "renewing an expired lease must report the loss"


def test_watch_sees_revocation_and_takeover() -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    lost: list[str] = []
    m = mgr(ds, clock, on_lost=lost.append)
    lease = m.acquire()
    m.observe(Update(lease.key, '{"PublicIP":"10.99.0.11"}', 9))  # our own renewal echo: fine
    m.observe(Update("/coreos.com/network/subnets/10.244.200.0-24", None, 10))  # someone else's
    assert not lost
    m.observe(Update(lease.key, '{"PublicIP":"10.99.0.12"}', 11))
    assert lost and "10.99.0.12" in lost[0]
    m2 = mgr(ds, clock, ip="10.99.0.13", on_lost=lost.append)
    l2 = m2.acquire()
    m2.observe(Update(l2.key, None, 12))
    assert m2.lost is not None
