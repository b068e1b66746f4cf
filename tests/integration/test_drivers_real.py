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
from pycni.dataplane.netlink import SCOPE_LINK, Fdb, Link, Neigh, NetlinkError, Route, VxlanInfo
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


def via(dst: str, gw: str = "10.99.0.2", dev: str = "eth0", src: str | None = None, **kw: Any) -> Route:
    return Route(dst=net(dst), gateway=ip(gw), oif=dev, src=ip(src) if src else None, **kw)


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


# -- links ------------------------------------------------------------------------------------
def test_vxlan_device_recreated_after_deletion_and_when_incompatible(node: Node) -> None:
    from pycni.dataplane.links import Device, LinkDriver

    recreated: list[str] = []
    ld = LinkDriver(node.nl, on_recreate=recreated.append)
    info = VxlanInfo(vni=1, port=8472, local=ip("10.99.0.1"), underlay="eth0")
    addr = ipaddress.ip_interface("10.244.1.0/32")
    ld.set_desired(
        [Device("pyt-dp-fl.1", "vxlan", mtu=1450, addrs=(addr,), vxlan=info, mac="0e:00:00:00:00:01")]
    )
    assert ld.apply() is True
    d = node.ipj("-d", "link", "show", "pyt-dp-fl.1")[0]
    assert d["linkinfo"]["info_data"]["id"] == 1 and d["linkinfo"]["info_data"]["port"] == 8472
    assert d["mtu"] == 1450 and d["address"] == "0e:00:00:00:00:01" and "UP" in d["flags"]
    v4 = [
        a["local"] for a in node.ipj("addr", "show", "pyt-dp-fl.1")[0]["addr_info"] if a["family"] == "inet"
    ]
    assert v4 == ["10.244.1.0"]
    assert recreated == ["pyt-dp-fl.1"]
    assert ld.apply() is True and recreated == ["pyt-dp-fl.1"]  # compatible: kept

    node.ip("link", "del", "pyt-dp-fl.1")
    assert ld.apply() is True
    assert node.ipj("link", "show", "pyt-dp-fl.1")[0]["mtu"] == 1450
    assert recreated == ["pyt-dp-fl.1"] * 2

    # A new lease: new address replaces the old one; a VNI change forces a recreate.
    new = ipaddress.ip_interface("10.244.7.0/32")
    ld.set_desired([Device("pyt-dp-fl.1", "vxlan", mtu=1450, addrs=(new,), vxlan=info)])
    ld.apply()
    assert [
        a["local"] for a in node.ipj("addr", "show", "pyt-dp-fl.1")[0]["addr_info"] if a["family"] == "inet"
    ] == ["10.244.7.0"]
    ld.set_desired([Device("pyt-dp-fl.1", "vxlan", mtu=1450, vxlan=VxlanInfo(vni=2, underlay="eth0"))])
    ld.apply()
    assert node.ipj("-d", "link", "show", "pyt-dp-fl.1")[0]["linkinfo"]["info_data"]["id"] == 2
    assert len(recreated) == 3
    ld.set_desired([])
    assert ld.apply() is True
    assert node.nl.link("pyt-dp-fl.1") is None


def test_ensure_bridge_and_ipip(node: Node) -> None:
    from pycni.dataplane.links import ensure_bridge, ensure_ipip

    br = ensure_bridge(node.nl, "pyt-dp-cni0", ipaddress.ip_interface("10.244.1.1/24"), 1450)
    assert br.kind == "bridge" and br.mtu == 1450 and br.up
    again = ensure_bridge(node.nl, "pyt-dp-cni0", ipaddress.ip_interface("10.244.1.1/24"), 1450)
    assert again.index == br.index
    assert ipaddress.ip_interface("10.244.1.1/24") in node.nl.addrs("pyt-dp-cni0")
    with pytest.raises(NetlinkError):
        ensure_bridge(node.nl, "eth0")  # a veth is not a bridge
    try:
        tunl = ensure_ipip(node.nl, "tunl0", ipaddress.ip_interface("10.244.1.1/32"), 1480)
    except NetlinkError as e:  # no ipip module here: the UML lane covers it
        assert e.errno == 95
    else:
        assert tunl.up and tunl.mtu == 1480


# -- iptables ---------------------------------------------------------------------------------
def test_iptables_chain_programmed_repaired_and_cleaned(node: Node) -> None:
    from pycni.dataplane.iptables import Chain, IptablesChains

    def save(table: str = "nat") -> str:
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{node.name}", "iptables-save", "-t", table],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def rules(chain: str, table: str = "nat") -> list[str]:
        return [ln for ln in save(table).splitlines() if ln.startswith(f"-A {chain} ")]

    masq = Chain(
        table="nat",
        name="PYT-DP-POSTRTG",
        rules=(
            '-s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "pyt masq" -j RETURN',
            '-s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "pyt masq" -j MASQUERADE --random-fully',
        ),
        hook="POSTROUTING",
        jump='-m comment --comment "pyt masq" -j PYT-DP-POSTRTG',
    )
    fwd = Chain(
        table="filter",
        name="PYT-DP-FWD",
        rules=('-s 10.244.0.0/16 -m comment --comment "pyt fwd" -j ACCEPT',),
        hook="FORWARD",
        jump='-m comment --comment "pyt fwd" -j PYT-DP-FWD',
    )
    ipt = IptablesChains(netns=node.name, sweep_prefixes=("PYT-DP-OLD",))
    # An unrelated rule in the same hook, and a leftover chain of a previous version of ours.
    subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{node.name}",
            "sh",
            "-c",
            "iptables -t nat -A POSTROUTING -o eth9 -j RETURN && iptables -t nat -N PYT-DP-OLD"
            " && iptables -t nat -A POSTROUTING -j PYT-DP-OLD",
        ],
        check=True,
    )
    ipt.set_desired([masq, fwd])
    assert ipt.apply() is True
    assert len(rules("PYT-DP-POSTRTG")) == 2
    assert rules("POSTROUTING")[0].endswith("-j PYT-DP-POSTRTG")
    assert rules("POSTROUTING")[1:] == ["-A POSTROUTING -o eth9 -j RETURN"]
    assert ":PYT-DP-OLD" not in save()
    assert len(rules("PYT-DP-FWD", "filter")) == 1 and len(rules("FORWARD", "filter")) == 1

    assert ipt.last_wrote == ["filter", "nat"]
    # Nothing changed: no writes (a resync just reads).
    ipt.queue_resync()
    assert ipt.apply() is True
    assert ipt.last_wrote == []

    # A rule deleted by hand and a duplicated jump come back right after a resync.
    subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{node.name}",
            "sh",
            "-c",
            "iptables -t nat -D PYT-DP-POSTRTG 2 && iptables -t nat -A POSTROUTING -j PYT-DP-POSTRTG",
        ],
        check=True,
    )
    assert len(rules("PYT-DP-POSTRTG")) == 1
    ipt.queue_resync()
    assert ipt.apply() is True
    assert ipt.last_wrote == ["nat"]
    assert len(rules("PYT-DP-POSTRTG")) == 2
    assert len([r for r in rules("POSTROUTING") if "PYT-DP-POSTRTG" in r]) == 1

    # The jump deleted by hand comes back, at the top.
    subprocess.run(
        ["nsenter", f"--net=/run/netns/{node.name}", "iptables", "-t", "nat", "-D", "POSTROUTING", "1"],
        check=True,
    )
    ipt.queue_resync()
    ipt.apply()
    assert rules("POSTROUTING")[0].endswith("-j PYT-DP-POSTRTG")

    # A changed spec rewrites the chain; cleanup removes chains and jumps, nothing else.
    from dataclasses import replace

    ipt.set_desired([replace(masq, rules=masq.rules[:1]), fwd])
    assert ipt.apply() is True
    assert len(rules("PYT-DP-POSTRTG")) == 1
    ipt.cleanup()
    assert "PYT-DP" not in save() and "PYT-DP" not in save("filter")
    assert rules("POSTROUTING") == ["-A POSTROUTING -o eth9 -j RETURN"]


def test_resync_of_an_unchanged_kernel_writes_nothing(node: Node) -> None:
    rt = RouteTable(node.nl, proto=P)
    rt.set_desired(
        [
            Route(dst=net("10.244.3.0/24"), gateway=ip("10.99.0.3")),  # device resolved by the kernel
            via("10.244.4.0/24", src="10.99.0.1", metric=10, mtu=1400),
            via("10.244.5.0/24", gw="10.244.5.0", onlink=True),
            Route(dst=net("10.244.6.5/32"), oif="eth0", scope=SCOPE_LINK),
            Route(dst=net("fd00:1::/64"), type="blackhole"),
            Route(dst=net("fd00:2::/64"), oif="eth0", metric=1024),
        ]
    )
    assert rt.apply() is True
    assert rt.last_stats["written"] == 6
    rt.queue_resync()
    assert rt.apply() is True
    assert rt.last_stats == {"deleted": 0, "written": 0, "waiting": 0, "failed": 0}
