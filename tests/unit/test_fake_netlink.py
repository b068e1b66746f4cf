"""FakeNetlink against the shared Netlink contract, plus its own test hooks (failure injection)."""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterator

import pytest
from contract.netlink_contract import NetlinkContract

from pycni.dataplane.netlink import Link, NetlinkError, Route
from pycni.testing.fake_netlink import FakeNetlink, FakeWorld


@pytest.fixture
def world() -> FakeWorld:
    return FakeWorld()


@pytest.fixture
def nl(world: FakeWorld) -> Iterator[FakeNetlink]:
    yield world.netns("pyt-dp-c1")


@pytest.fixture
def other(world: FakeWorld) -> tuple[FakeNetlink, str]:
    return world.netns("pyt-dp-c2"), "/run/netns/pyt-dp-c2"


class TestFakeContract(NetlinkContract):
    pass


def test_fail_next_injects_then_recovers() -> None:
    nl = FakeNetlink()
    nl.fail_next("route_replace", errno.EBUSY, count=2)
    r = Route(dst=ipaddress.ip_network("10.8.0.0/24"), type="blackhole", proto=80)
    for _ in range(2):
        with pytest.raises(NetlinkError) as ei:
            nl.route_replace(r)
        assert ei.value.errno == errno.EBUSY
    nl.route_replace(r)
    assert nl.routes(proto=80) == [r]
    assert nl.ops == {"route_replace": 1}


def test_fail_next_rejects_unknown_operation() -> None:
    with pytest.raises(ValueError):
        FakeNetlink().fail_next("route_add_typo", errno.EIO)


def test_writes_counts_only_successful_changes() -> None:
    nl = FakeNetlink()
    nl.link_add(Link(name="pyt-dp-a", kind="veth", peer="pyt-dp-b"))
    with pytest.raises(NetlinkError):
        nl.link_add(Link(name="pyt-dp-a", kind="veth", peer="pyt-dp-c"))
    nl.link_delete("pyt-dp-none")
    assert nl.writes() == 1


def test_ipip_fake_has_tunl0() -> None:
    nl = FakeNetlink(ipip=True)
    tunl = nl.link("tunl0")
    assert tunl is not None and tunl.kind == "ipip" and tunl.mtu == 1480


def test_namespaces_are_unique_per_world() -> None:
    w = FakeWorld()
    a = w.netns("n1")
    assert w.netns("n1") is a
    with pytest.raises(ValueError):
        FakeNetlink("n1", world=w)
