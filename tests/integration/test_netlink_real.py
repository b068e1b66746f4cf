"""Pyroute2Netlink against the shared Netlink contract in throwaway namespaces (root).

Plus what only the real adapter has to prove: it never moves our own threads into the target
namespace (sysctls are read in a thread that setns()es itself), and it opens quickly.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from contract.netlink_contract import NetlinkContract
from pyroute2 import netns as pr_netns

from pycni.dataplane.netlink import Link, NetlinkError
from pycni.dataplane.pyroute2_netlink import Pyroute2Netlink

pytestmark = pytest.mark.privileged


@pytest.fixture
def make_ns() -> Iterator[object]:
    made: list[tuple[str, Pyroute2Netlink]] = []

    def make() -> tuple[Pyroute2Netlink, str]:
        name = f"pyt-dp-{uuid.uuid4().hex[:8]}"
        pr_netns.create(name)
        try:
            nl = Pyroute2Netlink(name)
        except Exception:
            pr_netns.remove(name)
            raise
        made.append((name, nl))
        return nl, name

    try:
        yield make
    finally:
        for name, nl in made:
            nl.close()
            try:
                pr_netns.remove(name)
            except OSError:
                pass


@pytest.fixture
def nl(make_ns) -> Pyroute2Netlink:  # type: ignore[no-untyped-def]
    return make_ns()[0]


@pytest.fixture
def other(make_ns) -> tuple[Pyroute2Netlink, str]:  # type: ignore[no-untyped-def]
    nl2, name = make_ns()
    return nl2, f"/run/netns/{name}"


@pytest.mark.privileged
class TestRealContract(NetlinkContract):
    pass


def _thread_netns() -> str:
    return os.readlink(f"/proc/self/task/{threading.get_native_id()}/ns/net")


def test_sysctl_goes_to_the_target_namespace_and_our_threads_stay_home(make_ns) -> None:  # type: ignore[no-untyped-def]
    nl, name = make_ns()
    before = _thread_netns()
    host_fwd = open("/proc/sys/net/ipv4/ip_forward").read().strip()
    nl.link_add(Link(name="pyt-dp-s", kind="veth", peer="pyt-dp-t"))
    nl.sysctl_set("net/ipv4/conf/pyt-dp-s/proxy_arp", "1")
    nl.sysctl_set("net/ipv4/ip_forward", "0" if host_fwd == "1" else "1")
    assert _thread_netns() == before
    seen = subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{name}",
            "cat",
            "/proc/sys/net/ipv4/conf/pyt-dp-s/proxy_arp",
            "/proc/sys/net/ipv4/ip_forward",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert seen == ["1", "0" if host_fwd == "1" else "1"]
    assert open("/proc/sys/net/ipv4/ip_forward").read().strip() == host_fwd
    assert not os.path.exists("/proc/sys/net/ipv4/conf/pyt-dp-s")


def test_missing_namespace_is_a_clear_error() -> None:
    with pytest.raises(NetlinkError) as ei:
        Pyroute2Netlink("pyt-dp-does-not-exist")
    assert ei.value.errno == 2
    assert not os.path.exists("/run/netns/pyt-dp-does-not-exist")


def test_open_by_path_and_timings(make_ns) -> None:  # type: ignore[no-untyped-def]
    _, name = make_ns()
    t0 = time.perf_counter()
    nl = Pyroute2Netlink(f"/run/netns/{name}")
    opened = time.perf_counter() - t0
    try:
        assert [lk.name for lk in nl.links()] == ["lo"]
        nl.close()
        nl.close()  # idempotent
    finally:
        nl.close()
    assert opened < 1.0
