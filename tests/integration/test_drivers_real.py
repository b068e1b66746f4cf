"""The drivers against the real kernel in a throwaway namespace (root); effects read with `ip -j`."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import netns as pr_netns

from pycni.dataplane.fdb_table import FdbTable
from pycni.dataplane.neigh_table import NeighTable
from pycni.dataplane.netlink import SCOPE_LINK, Fdb, Link, Neigh, Route, VxlanInfo
from pycni.dataplane.pyroute2_netlink import Pyroute2Netlink
from pycni.dataplane.route_table import RouteTable
from pycni.dataplane.sysctls import Sysctls

pytestmark = pytest.mark.privileged
P = 80


def net(s: str) -> Any:
    return ipaddress.ip_network(s)


def ip(s: str) -> Any:
    return ipaddress.ip_address(s)


class Node:
    def __init__(self, name: str, nl: Pyroute2Netlink) -> None:
        self.name = name
        self.nl = nl

    def ipj(self, *args: str) -> Any:
        out = subprocess.run(["ip", "-n", self.name, "-j", *args], check=True, capture_output=True, text=True)
        return json.loads(out.stdout or "[]")

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True, text=True)

    def routes(self, proto: int | str = P) -> set[str]:
        return {r["dst"] for r in self.ipj("route", "show", "proto", str(proto))}


@pytest.fixture
def node() -> Iterator[Node]:
    name = f"pyt-dp-{uuid.uuid4().hex[:8]}"
    pr_netns.create(name)
    nl = None
    try:
        nl = Pyroute2Netlink(name)
        nl.link_set("lo", up=True)
        nl.link_add(Link(name="eth0", kind="veth", peer="eth0p", up=True))
        nl.link_set("eth0p", up=True)
        nl.addr_add("eth0", ipaddress.ip_interface("10.99.0.1/24"))
        yield Node(name, nl)
    finally:
        if nl is not None:
            nl.close()
        pr_netns.remove(name)


def via(dst: str, gw: str = "10.99.0.2", dev: str = "eth0", **kw: Any) -> Route:
    return Route(dst=net(dst), gateway=ip(gw), oif=dev, **kw)


def test_route_table_reconciles_the_real_kernel(node: Node) -> None:
    node.ip("route", "add", "10.244.9.0/24", "via", "10.99.0.2", "proto", str(P))  # stale, ours
    node.ip("route", "add", "10.244.8.0/24", "via", "10.99.0.3", "proto", "81")  # another writer's
    node.ip("route", "add", "10.244.7.0/24", "via", "10.99.0.3")  # boot
    rt = RouteTable(node.nl, proto=P)
    rt.set_desired(
        [
            via("10.244.1.0/24"),
            via("10.244.2.0/24", gw="10.244.2.0", dev="eth0", onlink=True),
            Route(dst=net("10.244.0.0/24"), type="blackhole"),
        ]
    )
    assert rt.apply() is True
    assert node.routes() == {"10.244.1.0/24", "10.244.2.0/24", "10.244.0.0/24"}
    assert [r["type"] for r in node.ipj("route", "show", "10.244.0.0/24")] == ["blackhole"]
    assert node.routes(81) == {"10.244.8.0/24"}
    assert node.routes("boot") == {"10.244.7.0/24"}
    onlink = [r for r in node.ipj("route", "show", "10.244.2.0/24") if "onlink" in r.get("flags", [])]
    assert onlink and onlink[0]["gateway"] == "10.244.2.0"

    # Deleted by hand: back after the next (resyncing) apply; another proto is never touched.
    node.ip("route", "del", "10.244.1.0/24")
    rt.queue_resync()
    assert rt.apply() is True
    assert "10.244.1.0/24" in node.routes()
    assert node.routes(81) == {"10.244.8.0/24"}

    # No longer desired: deleted.
    rt.set_desired([via("10.244.1.0/24")])
    assert rt.apply() is True
    assert node.routes() == {"10.244.1.0/24"}


def test_route_via_missing_device_is_pending_then_written(node: Node) -> None:
    rt = RouteTable(node.nl, proto=P)
    pod = Route(dst=net("10.244.1.5/32"), oif="pyt-dp-cali1", scope=SCOPE_LINK)
    rt.set_desired([pod, via("10.244.2.0/24")])
    assert rt.apply() is False
    assert node.routes() == {"10.244.2.0/24"}
    node.nl.link_add(Link(name="pyt-dp-cali1", kind="veth", peer="pyt-dp-cali1p", up=True))
    assert rt.apply() is True  # up without carrier (peer down) is enough for the kernel
    assert node.routes() == {"10.244.1.5", "10.244.2.0/24"}


def test_neigh_fdb_and_vxlan_real(node: Node) -> None:
    node.nl.link_add(
        Link(
            name="pyt-dp-vx",
            kind="vxlan",
            up=True,
            vxlan=VxlanInfo(vni=1, local=ip("10.99.0.1"), underlay="eth0"),
        )
    )
    nt = NeighTable(node.nl, ["pyt-dp-vx"])
    ft = FdbTable(node.nl, ["pyt-dp-vx"])
    nt.set_desired([Neigh("pyt-dp-vx", ip("10.244.1.0"), "aa:00:00:00:00:01")])
    ft.set_desired([Fdb("pyt-dp-vx", "aa:00:00:00:00:01", ip("10.99.0.2"))])
    assert nt.apply() is True and ft.apply() is True
    neighs = node.ipj("neigh", "show", "dev", "pyt-dp-vx", "nud", "permanent")
    assert [(n["dst"], n["lladdr"]) for n in neighs] == [("10.244.1.0", "aa:00:00:00:00:01")]
    fdb = json.loads(
        subprocess.run(
            ["bridge", "-n", node.name, "-j", "fdb", "show", "dev", "pyt-dp-vx"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert [(f["mac"], f.get("dst")) for f in fdb if f.get("dst")] == [("aa:00:00:00:00:01", "10.99.0.2")]
    node.ip("neigh", "del", "10.244.1.0", "dev", "pyt-dp-vx")
    nt.queue_resync()
    assert nt.apply() is True
    assert node.ipj("neigh", "show", "dev", "pyt-dp-vx", "nud", "permanent")


def test_sysctls_real(node: Node) -> None:
    sc = Sysctls(node.nl)
    sc.set_desired({"net/ipv4/conf/eth0/proxy_arp": "1", "net/ipv4/neigh/pyt-dp-late/proxy_delay": "0"})
    assert sc.apply() is False  # pyt-dp-late does not exist yet
    node.nl.link_add(Link(name="pyt-dp-late", kind="veth", peer="pyt-dp-latep"))
    assert sc.apply() is True

    def read(path: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", node.name, "cat", f"/proc/sys/{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    assert read("net/ipv4/conf/eth0/proxy_arp") == "1"
    assert read("net/ipv4/neigh/pyt-dp-late/proxy_delay") == "0"
    subprocess.run(
        ["ip", "netns", "exec", node.name, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/conf/eth0/proxy_arp"],
        check=True,
    )
    sc.queue_resync()
    assert sc.apply() is True
    assert read("net/ipv4/conf/eth0/proxy_arp") == "1"
