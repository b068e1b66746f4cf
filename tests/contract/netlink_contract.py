"""The Netlink contract: one suite, run against FakeNetlink (unit) and Pyroute2Netlink (privileged).

A test module subclasses `NetlinkContract` and provides two fixtures:
- `nl`: a `Netlink` bound to a fresh, empty namespace;
- `other`: `(netlink, netns)` for a second fresh namespace, `netns` being what `Link.peer_netns`
  accepts for it (a name under /run/netns or a path).
Every assertion reads state back through the protocol, so the fake is held to what the kernel does.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from typing import Any

import pytest

from pycni.constants import IPIP_DEV
from pycni.dataplane.netlink import SCOPE_LINK, Fdb, Link, Neigh, Netlink, NetlinkError, Route, VxlanInfo

P80 = 80
P81 = 81


def net(s: str) -> Any:
    return ipaddress.ip_network(s)


def ip(s: str) -> Any:
    return ipaddress.ip_address(s)


def iface(s: str) -> Any:
    return ipaddress.ip_interface(s)


def up_veth(
    nl: Netlink, name: str = "pyt-dp-a", peer: str = "pyt-dp-b", addr: str | None = "10.2.0.5/24"
) -> None:
    """A veth pair with both ends up (this kernel has no dummy links), lo up, and an address."""
    nl.link_set("lo", up=True)
    nl.link_add(Link(name=name, kind="veth", peer=peer))
    nl.link_set(peer, up=True)
    nl.link_set(name, up=True)
    if addr:
        nl.addr_add(name, iface(addr))


def errno_of(fn: Any) -> int:
    with pytest.raises(NetlinkError) as ei:
        fn()
    return ei.value.errno


class NetlinkContract:
    # -- links -----------------------------------------------------------------------------
    def test_fresh_namespace_holds_only_lo(self, nl: Netlink) -> None:
        links = nl.links()
        assert [lk.name for lk in links] == ["lo"]
        assert links[0].index == 1 and not links[0].up
        assert nl.link("pyt-dp-none") is None

    def test_veth_pair_in_one_namespace(self, nl: Netlink) -> None:
        a = nl.link_add(Link(name="pyt-dp-a", kind="veth", peer="pyt-dp-b", mtu=1400))
        assert a.kind == "veth" and a.mtu == 1400 and a.index > 1 and len(a.address) == 17
        b = nl.link("pyt-dp-b")
        assert b is not None and b.kind == "veth" and b.mtu == 1400
        assert (
            errno_of(lambda: nl.link_add(Link(name="pyt-dp-a", kind="veth", peer="pyt-dp-c"))) == errno.EEXIST
        )
        assert nl.link_delete("pyt-dp-b") is True
        assert nl.link("pyt-dp-a") is None and nl.link("pyt-dp-b") is None
        assert nl.link_delete("pyt-dp-a") is False

    def test_veth_peer_lands_in_other_namespace(self, nl: Netlink, other: tuple[Netlink, str]) -> None:
        nl2, ns2 = other
        nl.link_add(Link(name="pyt-dp-h", kind="veth", peer="pyt-dp-p", peer_netns=ns2))
        assert nl.link("pyt-dp-p") is None
        peer = nl2.link("pyt-dp-p")
        assert peer is not None and peer.kind == "veth"
        nl.link_delete("pyt-dp-h")
        assert nl2.link("pyt-dp-p") is None
        # The peer namespace may also be given by its name under /run/netns.
        nl.link_add(Link(name="pyt-dp-h2", kind="veth", peer="pyt-dp-p2", peer_netns=os.path.basename(ns2)))
        assert nl2.link("pyt-dp-p2") is not None and nl.link("pyt-dp-p2") is None

    def test_veth_peer_in_missing_namespace_is_enoent(self, nl: Netlink) -> None:
        err = errno_of(
            lambda: nl.link_add(
                Link(name="pyt-dp-h", kind="veth", peer="pyt-dp-p", peer_netns="pyt-dp-no-such-ns")
            )
        )
        assert err == errno.ENOENT
        assert nl.link("pyt-dp-h") is None

    def test_link_set(self, nl: Netlink) -> None:
        nl.link_add(Link(name="pyt-dp-br", kind="bridge"))
        nl.link_add(Link(name="pyt-dp-a", kind="veth", peer="pyt-dp-b"))
        nl.link_set("pyt-dp-a", up=True, mtu=1300, address="02:aa:bb:cc:dd:ee", master="pyt-dp-br")
        a = nl.link("pyt-dp-a")
        assert a is not None
        assert (a.up, a.mtu, a.address, a.master) == (True, 1300, "02:aa:bb:cc:dd:ee", "pyt-dp-br")
        nl.link_set("pyt-dp-a", master="")
        a = nl.link("pyt-dp-a")
        assert a is not None and a.master is None
        nl.link_set("pyt-dp-a", up=False)
        a = nl.link("pyt-dp-a")
        assert a is not None and not a.up
        assert errno_of(lambda: nl.link_set("pyt-dp-none", up=True)) == errno.ENODEV
        assert errno_of(lambda: nl.link_set("pyt-dp-a", master="pyt-dp-none")) == errno.ENODEV

    def test_link_add_up(self, nl: Netlink) -> None:
        br = nl.link_add(Link(name="pyt-dp-br", kind="bridge", up=True, mtu=1450))
        assert br.up and br.mtu == 1450 and br.kind == "bridge"

    def test_vxlan_roundtrip(self, nl: Netlink) -> None:
        up_veth(nl)
        info = VxlanInfo(vni=7, port=8472, local=ip("10.2.0.5"), underlay="pyt-dp-a", learning=False)
        vx = nl.link_add(Link(name="pyt-dp-vx", kind="vxlan", vxlan=info))
        assert vx.kind == "vxlan" and vx.vxlan == info
        assert vx.mtu == 1450  # the default 1500 clamped to the underlay minus 50
        assert errno_of(lambda: nl.link_set("pyt-dp-vx", mtu=1480)) == errno.EINVAL
        nl.link_set("pyt-dp-vx", mtu=1400)
        got = nl.link("pyt-dp-vx")
        assert got is not None and got.vxlan == info
        dup = Link(name="pyt-dp-vx2", kind="vxlan", vxlan=VxlanInfo(vni=7, port=8472))
        assert errno_of(lambda: nl.link_add(dup)) == errno.EEXIST
        other = nl.link_add(
            Link(name="pyt-dp-vx3", kind="vxlan", mtu=1400, vxlan=VxlanInfo(vni=8, port=4789))
        )
        assert other.mtu == 1400 and other.vxlan == VxlanInfo(vni=8, port=4789)
        missing = Link(name="pyt-dp-vx4", kind="vxlan", vxlan=VxlanInfo(vni=9, underlay="pyt-dp-none"))
        assert errno_of(lambda: nl.link_add(missing)) == errno.ENODEV

    def test_ipip_tunl0_is_idempotent_where_supported(self, nl: Netlink) -> None:
        try:
            first = nl.link_add(Link(name=IPIP_DEV, kind="ipip", mtu=1480))
        except NetlinkError as e:
            assert e.errno == errno.EOPNOTSUPP  # no ipip module (this kernel); the UML lane has it
            assert nl.link(IPIP_DEV) is None
            return
        assert first.kind == "ipip"
        again = nl.link_add(Link(name=IPIP_DEV, kind="ipip", mtu=1440))
        assert again.name == IPIP_DEV and again.mtu == 1440

    def test_unknown_kind_is_rejected(self, nl: Netlink) -> None:
        assert errno_of(lambda: nl.link_add(Link(name="pyt-dp-x", kind="pyt-no-such-kind"))) in (
            errno.EOPNOTSUPP,
            errno.EINVAL,
        )

    # -- addresses -------------------------------------------------------------------------
    def test_addrs(self, nl: Netlink) -> None:
        up_veth(nl, addr=None)
        nl.addr_add("pyt-dp-a", iface("10.2.0.5/24"))
        nl.addr_add("pyt-dp-a", iface("10.2.0.5/24"))  # EEXIST tolerated
        nl.addr_add("pyt-dp-a", iface("fd00:2::5/64"))
        got = nl.addrs("pyt-dp-a")
        assert iface("10.2.0.5/24") in got and iface("fd00:2::5/64") in got
        assert nl.addr_delete("pyt-dp-a", iface("10.2.0.5/24")) is True
        assert nl.addr_delete("pyt-dp-a", iface("10.2.0.5/24")) is False
        assert iface("10.2.0.5/24") not in nl.addrs("pyt-dp-a")
        assert errno_of(lambda: nl.addrs("pyt-dp-none")) == errno.ENODEV
        assert errno_of(lambda: nl.addr_add("pyt-dp-none", iface("10.9.0.1/24"))) == errno.ENODEV
        assert nl.addr_delete("pyt-dp-none", iface("10.9.0.1/24")) is False

    def test_connected_route_follows_address_and_link_state(self, nl: Netlink) -> None:
        up_veth(nl)
        kernel = [r for r in nl.routes(proto=2) if r.dst == net("10.2.0.0/24")]
        assert len(kernel) == 1 and kernel[0].oif == "pyt-dp-a" and kernel[0].scope == SCOPE_LINK
        assert kernel[0].src == ip("10.2.0.5")
        nl.link_set("pyt-dp-a", up=False)
        assert not [r for r in nl.routes(proto=2) if r.dst == net("10.2.0.0/24")]
        nl.link_set("pyt-dp-a", up=True)
        assert [r for r in nl.routes(proto=2) if r.dst == net("10.2.0.0/24")]
        nl.addr_delete("pyt-dp-a", iface("10.2.0.5/24"))
        assert not [r for r in nl.routes(proto=2) if r.dst == net("10.2.0.0/24")]

    # -- routes ----------------------------------------------------------------------------
    def test_route_shapes_roundtrip(self, nl: Netlink) -> None:
        up_veth(nl)
        want = [
            Route(dst=net("10.8.0.0/24"), type="blackhole", proto=P80),
            Route(dst=net("10.3.0.0/24"), gateway=ip("10.2.0.1"), oif="pyt-dp-a", proto=P80),
            Route(dst=net("10.4.0.0/24"), gateway=ip("10.4.0.0"), oif="pyt-dp-a", onlink=True, proto=P80),
            Route(dst=net("10.5.0.7/32"), oif="pyt-dp-a", scope=SCOPE_LINK, proto=P80),
            Route(
                dst=net("10.6.0.0/24"),
                gateway=ip("10.2.0.1"),
                oif="pyt-dp-a",
                src=ip("10.2.0.5"),
                metric=7,
                mtu=1400,
                proto=P80,
            ),
            Route(dst=net("0.0.0.0/0"), gateway=ip("10.2.0.1"), oif="pyt-dp-a", proto=P80),
            Route(dst=net("10.7.0.0/24"), gateway=ip("10.2.0.1"), oif="pyt-dp-a", proto=P80, table=100),
        ]
        for r in want:
            nl.route_replace(r)
        got = set(nl.routes(proto=P80)) | set(nl.routes(table=100, proto=P80))
        assert got == set(want)
        assert set(nl.routes(table=100)) == {want[-1]}
        assert not nl.routes(proto=P81)
        assert {r for r in nl.routes() if r.proto == P80} == set(want[:-1])

    def test_ipv6_routes_roundtrip(self, nl: Netlink) -> None:
        up_veth(nl)
        want = [
            Route(dst=net("fd00:8::/64"), type="blackhole", proto=P80),
            Route(dst=net("fd00:9::/64"), oif="pyt-dp-a", proto=P80),
            Route(dst=net("fd00:a::/64"), oif="pyt-dp-a", proto=P80, metric=5),
        ]
        for r in want:
            nl.route_replace(r)
        assert set(nl.routes(proto=P80)) == set(want)
        assert nl.route_delete(want[0]) is True
        assert set(nl.routes(proto=P80)) == set(want[1:])

    def test_route_replace_replaces_by_key(self, nl: Netlink) -> None:
        up_veth(nl)
        nl.addr_add("pyt-dp-a", iface("10.2.1.5/24"))
        a = Route(dst=net("10.3.0.0/24"), gateway=ip("10.2.0.1"), oif="pyt-dp-a", proto=P80)
        b = Route(dst=net("10.3.0.0/24"), gateway=ip("10.2.1.1"), oif="pyt-dp-a", proto=P80)
        nl.route_replace(a)
        nl.route_replace(a)
        nl.route_replace(b)
        assert nl.routes(proto=P80) == [b]
        bh = Route(dst=net("10.3.0.0/24"), type="blackhole", proto=P80)
        nl.route_replace(bh)
        assert nl.routes(proto=P80) == [bh]

    def test_route_delete_is_scoped_by_proto(self, nl: Netlink) -> None:
        up_veth(nl)
        theirs = Route(dst=net("10.3.0.0/24"), gateway=ip("10.2.0.1"), oif="pyt-dp-a", proto=P81)
        nl.route_replace(theirs)
        assert (
            nl.route_delete(Route(dst=net("10.3.0.0/24"), gateway=ip("10.2.0.1"), oif="pyt-dp-a", proto=P80))
            is False
        )
        assert nl.routes(proto=P81) == [theirs]
        assert nl.route_delete(theirs) is True
        assert nl.route_delete(theirs) is False
        assert nl.routes(proto=P81) == []

    def test_route_errors(self, nl: Netlink) -> None:
        up_veth(nl)
        nl.link_add(Link(name="pyt-dp-d", kind="veth", peer="pyt-dp-e"))  # down
        bad_dev = Route(dst=net("10.3.0.0/24"), oif="pyt-dp-none", proto=P80)
        assert errno_of(lambda: nl.route_replace(bad_dev)) == errno.ENODEV
        down = Route(dst=net("10.3.0.0/24"), oif="pyt-dp-d", proto=P80)
        assert errno_of(lambda: nl.route_replace(down)) == errno.ENETDOWN
        far = Route(dst=net("10.3.0.0/24"), gateway=ip("10.9.9.9"), oif="pyt-dp-a", proto=P80)
        assert errno_of(lambda: nl.route_replace(far)) == errno.ENETUNREACH
        bad_src = Route(dst=net("10.3.0.0/24"), oif="pyt-dp-a", src=ip("10.9.9.9"), proto=P80)
        assert errno_of(lambda: nl.route_replace(bad_src)) == errno.EINVAL
        assert nl.routes(proto=P80) == []

    def test_onlink_gateway_needs_lo_up(self, nl: Netlink) -> None:
        nl.link_add(Link(name="pyt-dp-a", kind="veth", peer="pyt-dp-b", up=True))
        nl.link_set("pyt-dp-b", up=True)
        r = Route(dst=net("10.4.0.0/24"), gateway=ip("10.4.0.0"), oif="pyt-dp-a", onlink=True, proto=P80)
        assert errno_of(lambda: nl.route_replace(r)) == errno.EINVAL
        nl.link_set("lo", up=True)
        nl.route_replace(r)
        assert nl.routes(proto=P80) == [r]

    def test_routes_go_with_their_link(self, nl: Netlink) -> None:
        up_veth(nl)
        r = Route(dst=net("10.3.0.0/24"), gateway=ip("10.2.0.1"), oif="pyt-dp-a", proto=P80)
        bh = Route(dst=net("10.8.0.0/24"), type="blackhole", proto=P80)
        nl.route_replace(r)
        nl.route_replace(bh)
        nl.link_set("pyt-dp-a", up=False)
        assert nl.routes(proto=P80) == [bh]
        nl.link_set("pyt-dp-a", up=True)
        nl.route_replace(r)
        nl.link_delete("pyt-dp-b")  # the peer: both ends go
        assert nl.routes(proto=P80) == [bh]

    def test_route_get(self, nl: Netlink) -> None:
        up_veth(nl)
        nl.route_replace(Route(dst=net("10.3.0.0/24"), gateway=ip("10.2.0.1"), oif="pyt-dp-a", proto=P80))
        nl.route_replace(Route(dst=net("10.8.0.0/24"), type="blackhole", proto=P80))
        got = nl.route_get(ip("10.3.0.9"))
        assert got is not None
        assert (got.dst, got.gateway, got.oif, got.src) == (
            net("10.3.0.9/32"),
            ip("10.2.0.1"),
            "pyt-dp-a",
            ip("10.2.0.5"),
        )
        direct = nl.route_get(ip("10.2.0.77"))
        assert direct is not None and direct.gateway is None and direct.oif == "pyt-dp-a"
        assert nl.route_get(ip("10.8.0.1")) is None
        assert nl.route_get(ip("192.0.2.1")) is None

    # -- neighbours and fdb ----------------------------------------------------------------
    def test_neighs(self, nl: Netlink) -> None:
        up_veth(nl)
        n = Neigh("pyt-dp-a", ip("10.2.0.1"), "aa:bb:cc:00:00:01")
        nl.neigh_replace(n)
        nl.neigh_replace(n)
        n2 = Neigh("pyt-dp-a", ip("10.2.0.1"), "aa:bb:cc:00:00:02")
        nl.neigh_replace(n2)
        assert [x for x in nl.neighs("pyt-dp-a") if x.permanent] == [n2]
        assert nl.neigh_delete(n2) is True
        assert nl.neigh_delete(n2) is False
        assert not [x for x in nl.neighs("pyt-dp-a") if x.permanent]
        assert errno_of(lambda: nl.neighs("pyt-dp-none")) == errno.ENODEV
        assert (
            errno_of(lambda: nl.neigh_replace(Neigh("pyt-dp-none", ip("10.2.0.1"), "aa:bb:cc:00:00:01")))
            == errno.ENODEV
        )

    def test_permanent_neighs_go_when_link_goes_down(self, nl: Netlink) -> None:
        up_veth(nl)
        nl.neigh_replace(Neigh("pyt-dp-a", ip("10.2.0.1"), "aa:bb:cc:00:00:01"))
        nl.link_set("pyt-dp-a", up=False)
        assert not [x for x in nl.neighs("pyt-dp-a") if x.permanent]

    def test_fdb_on_vxlan(self, nl: Netlink) -> None:
        up_veth(nl)
        nl.link_add(
            Link(
                name="pyt-dp-vx",
                kind="vxlan",
                up=True,
                vxlan=VxlanInfo(vni=7, local=ip("10.2.0.5"), underlay="pyt-dp-a"),
            )
        )
        f1 = Fdb("pyt-dp-vx", "aa:bb:cc:00:00:01", ip("10.2.0.1"))
        nl.fdb_replace(f1)
        nl.fdb_replace(f1)
        assert nl.fdbs("pyt-dp-vx") == [f1]
        f2 = Fdb("pyt-dp-vx", "aa:bb:cc:00:00:01", ip("10.2.0.2"))
        nl.fdb_replace(f2)  # one remote per MAC: the entry moves
        assert nl.fdbs("pyt-dp-vx") == [f2]
        f3 = Fdb("pyt-dp-vx", "AA:BB:CC:00:00:03", ip("10.2.0.3"))
        nl.fdb_replace(f3)
        assert sorted(nl.fdbs("pyt-dp-vx"), key=lambda f: f.lladdr) == [
            f2,
            Fdb("pyt-dp-vx", "aa:bb:cc:00:00:03", ip("10.2.0.3")),
        ]
        assert nl.fdb_delete(f2) is True
        assert nl.fdb_delete(f2) is False
        assert nl.fdbs("pyt-dp-vx") == [Fdb("pyt-dp-vx", "aa:bb:cc:00:00:03", ip("10.2.0.3"))]
        assert errno_of(lambda: nl.fdbs("pyt-dp-none")) == errno.ENODEV
        nl.link_delete("pyt-dp-vx")
        assert nl.fdb_delete(f3) is False

    # -- sysctls ---------------------------------------------------------------------------
    def test_sysctls_are_per_namespace(self, nl: Netlink, other: tuple[Netlink, str]) -> None:
        nl2, _ = other
        nl.sysctl_set("net/ipv4/ip_forward", "1")
        nl2.sysctl_set("net/ipv4/ip_forward", "0")
        assert nl.sysctl_get("net/ipv4/ip_forward") == "1"
        assert nl2.sysctl_get("net/ipv4/ip_forward") == "0"
        nl.link_add(Link(name="pyt-dp-a", kind="veth", peer="pyt-dp-b"))
        assert nl.sysctl_get("net/ipv4/conf/pyt-dp-a/proxy_arp") == "0"
        assert nl2.sysctl_get("net/ipv4/conf/pyt-dp-a/proxy_arp") is None
        nl.sysctl_set("net/ipv4/conf/pyt-dp-a/proxy_arp", "1")
        nl.sysctl_set("net/ipv4/neigh/pyt-dp-a/proxy_delay", "0")
        assert nl.sysctl_get("net/ipv4/conf/pyt-dp-a/proxy_arp") == "1"
        assert nl.sysctl_get("net/ipv4/neigh/pyt-dp-a/proxy_delay") == "0"
        err = errno_of(lambda: nl2.sysctl_set("net/ipv4/conf/pyt-dp-a/proxy_arp", "1"))
        assert err == errno.ENOENT
        nl.link_delete("pyt-dp-a")
        assert nl.sysctl_get("net/ipv4/conf/pyt-dp-a/proxy_arp") is None
