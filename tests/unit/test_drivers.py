"""The reconciling drivers on FakeNetlink: end state asserted, failures injected, no root."""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

import pytest
from structlog.testing import capture_logs

from pycni.dataplane.fdb_table import FdbTable
from pycni.dataplane.neigh_table import NeighTable
from pycni.dataplane.netlink import SCOPE_LINK, Fdb, Link, Neigh, NetlinkError, Route, VxlanInfo
from pycni.dataplane.route_table import RouteTable
from pycni.dataplane.sysctls import Sysctls
from pycni.testing.clock import FakeClock
from pycni.testing.fake_netlink import FakeNetlink

P = 80


def net(s: str) -> Any:
    return ipaddress.ip_network(s)


def ip(s: str) -> Any:
    return ipaddress.ip_address(s)


@pytest.fixture
def nl() -> FakeNetlink:
    f = FakeNetlink()
    f.link_set("lo", up=True)
    f.link_add(Link(name="eth0", kind="veth", peer="eth0p", up=True))
    f.link_set("eth0p", up=True)
    f.addr_add("eth0", ipaddress.ip_interface("10.99.0.1/24"))
    return f


def r_via(dst: str, gw: str = "10.99.0.2", dev: str = "eth0", **kw: Any) -> Route:
    return Route(dst=net(dst), gateway=ip(gw), oif=dev, proto=P, **kw)


def ours(nl: FakeNetlink) -> set[Route]:
    return set(nl.routes(proto=P))


# -- RouteTable -----------------------------------------------------------------------------
def test_route_table_programs_and_then_does_nothing(nl: FakeNetlink) -> None:
    rt = RouteTable(nl, proto=P)
    want = {r_via("10.244.1.0/24"), Route(dst=net("10.244.0.0/24"), type="blackhole", proto=P)}
    rt.set_desired(want)
    assert rt.apply() is True
    assert ours(nl) == want
    writes = nl.writes()
    assert rt.apply() is True
    rt.queue_resync()
    assert rt.apply() is True
    assert nl.writes() == writes


def test_set_desired_does_no_io_and_normalises(nl: FakeNetlink) -> None:
    before = nl.writes()
    for op in ("routes", "links", "route_replace"):
        nl.fail_next(op, errno.EIO)
    rt = RouteTable(nl, proto=P)
    rt.set_desired({"k": Route(dst=net("10.5.0.0/24"), type="blackhole", oif="eth0", proto=0)})
    assert rt.desired() == [Route(dst=net("10.5.0.0/24"), type="blackhole", proto=P)]
    assert nl.writes() == before


def test_route_table_sweeps_only_its_own_protocol(nl: FakeNetlink) -> None:
    stale = r_via("10.244.9.0/24")
    theirs = Route(dst=net("10.244.8.0/24"), gateway=ip("10.99.0.3"), oif="eth0", proto=81)
    boot = Route(dst=net("0.0.0.0/0"), gateway=ip("10.99.0.254"), oif="eth0", proto=3)
    for r in (stale, theirs, boot):
        nl.route_replace(r)
    rt = RouteTable(nl, proto=P)
    rt.set_desired([r_via("10.244.1.0/24")])
    assert rt.apply() is True
    assert ours(nl) == {r_via("10.244.1.0/24")}
    assert theirs in nl.routes(proto=81) and boot in nl.routes(proto=3)
    assert [r for r in nl.routes(proto=2) if r.dst == net("10.99.0.0/24")]


def test_route_deleted_by_hand_comes_back_after_resync(nl: FakeNetlink) -> None:
    rt = RouteTable(nl, proto=P)
    r = r_via("10.244.1.0/24")
    rt.set_desired([r])
    rt.apply()
    nl.route_delete(r)
    assert rt.apply() is True  # believed programmed: no dump, no change
    rt.queue_resync()
    assert rt.apply() is True
    assert ours(nl) == {r}


def test_route_changed_by_hand_is_corrected(nl: FakeNetlink) -> None:
    rt = RouteTable(nl, proto=P)
    r = r_via("10.244.1.0/24")
    rt.set_desired([r])
    rt.apply()
    nl.route_replace(r_via("10.244.1.0/24", gw="10.99.0.7"))
    rt.queue_resync()
    rt.apply()
    assert ours(nl) == {r}


def test_failed_route_stays_pending_and_is_retried(nl: FakeNetlink) -> None:
    rt = RouteTable(nl, proto=P)
    a, b = r_via("10.244.1.0/24"), r_via("10.244.2.0/24")
    rt.set_desired([a, b])
    nl.fail_next("route_replace", errno.EBUSY)
    with capture_logs() as logs:
        assert rt.apply() is False
    assert len(ours(nl)) == 1  # one failure does not stop the others
    assert [e for e in logs if e["log_level"] == "warning" and e["event"] == "route write failed"]
    assert rt.apply() is True
    assert ours(nl) == {a, b}


def test_failed_delete_stays_pending(nl: FakeNetlink) -> None:
    stale = r_via("10.244.9.0/24")
    nl.route_replace(stale)
    rt = RouteTable(nl, proto=P)
    rt.set_desired([])
    nl.fail_next("route_delete", errno.EBUSY)
    assert rt.apply() is False
    assert ours(nl) == {stale}
    assert rt.apply() is True
    assert ours(nl) == set()


def test_dump_failure_is_retried(nl: FakeNetlink) -> None:
    rt = RouteTable(nl, proto=P)
    rt.set_desired([r_via("10.244.1.0/24")])
    nl.fail_next("routes", errno.EINTR)
    assert rt.apply() is False
    assert ours(nl) == set()
    assert rt.apply() is True
    assert ours(nl) == {r_via("10.244.1.0/24")}


def test_route_through_missing_device_waits_quietly(nl: FakeNetlink) -> None:
    rt = RouteTable(nl, proto=P)
    r = Route(dst=net("10.244.1.5/32"), oif="cali0123", scope=SCOPE_LINK, proto=P)
    rt.set_desired([r, r_via("10.244.2.0/24")])
    with capture_logs() as logs:
        for _ in range(3):
            assert rt.apply() is False
    assert not [e for e in logs if e["log_level"] == "warning"]
    assert ours(nl) == {r_via("10.244.2.0/24")}
    nl.link_add(Link(name="cali0123", kind="veth", peer="pyt-dp-peer", up=True))
    assert rt.apply() is True
    assert r in ours(nl)


def test_route_through_down_device_waits_quietly(nl: FakeNetlink) -> None:
    nl.link_add(Link(name="cali0123", kind="veth", peer="pyt-dp-peer"))
    rt = RouteTable(nl, proto=P)
    r = Route(dst=net("10.244.1.5/32"), oif="cali0123", scope=SCOPE_LINK, proto=P)
    rt.set_desired([r])
    with capture_logs() as logs:
        assert rt.apply() is False
    assert not [e for e in logs if e["log_level"] == "warning"]
    nl.link_set("cali0123", up=True)
    assert rt.apply() is True
    assert ours(nl) == {r}


def test_grace_protects_routes_on_new_devices(nl: FakeNetlink) -> None:
    clock = FakeClock()
    rt = RouteTable(nl, proto=P, grace=10.0, clock=clock)
    rt.set_desired([r_via("10.244.2.0/24")])
    rt.apply()
    # The CNI plugin creates a veth and pre-adds the pod's route before felix hears of the pod.
    nl.link_add(Link(name="cali0123", kind="veth", peer="pyt-dp-peer", up=True))
    pre = Route(dst=net("10.244.1.5/32"), oif="cali0123", scope=SCOPE_LINK, proto=P)
    nl.route_replace(pre)
    rt.queue_resync()
    assert rt.apply() is False  # stale to us, but its device is new
    assert pre in ours(nl)
    clock.advance(11)
    assert rt.apply() is True
    assert pre not in ours(nl)


def test_desired_route_takes_over_the_key_from_another_protocol(nl: FakeNetlink) -> None:
    nl.route_replace(Route(dst=net("10.244.1.0/24"), gateway=ip("10.99.0.9"), oif="eth0", proto=4))
    rt = RouteTable(nl, proto=P)
    rt.set_desired([r_via("10.244.1.0/24")])
    assert rt.apply() is True
    assert [r for r in nl.routes() if r.dst == net("10.244.1.0/24")] == [r_via("10.244.1.0/24")]


def test_gateway_only_route_is_not_rewritten_on_resync(nl: FakeNetlink) -> None:
    rt = RouteTable(nl, proto=P)
    bare = Route(dst=net("10.244.3.0/24"), gateway=ip("10.99.0.3"))
    v6 = Route(dst=net("fd00:1::/64"), type="blackhole", metric=1024)
    rt.set_desired([bare, v6])
    assert rt.apply() is True
    assert {r.oif for r in ours(nl) if r.type == "unicast"} == {"eth0"}  # resolved by the kernel
    writes = nl.writes()
    rt.queue_resync()
    with capture_logs() as logs:
        assert rt.apply() is True
    assert nl.writes() == writes and not [e for e in logs if e["log_level"] == "info"]


def test_other_table(nl: FakeNetlink) -> None:
    rt = RouteTable(nl, proto=P, table=100)
    rt.set_desired([r_via("10.244.1.0/24")])
    rt.apply()
    assert nl.routes(table=100) == [r_via("10.244.1.0/24", table=100)]
    assert ours(nl) == set()


def test_one_info_line_per_apply_that_changed_something(nl: FakeNetlink) -> None:
    rt = RouteTable(nl, proto=P)
    rt.set_desired([r_via("10.244.1.0/24"), r_via("10.244.2.0/24")])
    with capture_logs() as logs:
        rt.apply()
        rt.apply()
    infos = [e for e in logs if e["log_level"] == "info"]
    assert len(infos) == 1
    assert infos[0]["event"] == "routes applied" and infos[0]["written"] == 2 and infos[0]["proto"] == P
    assert [e for e in logs if e["log_level"] == "debug" and e["event"] == "routes applied"]


# -- NeighTable / FdbTable ------------------------------------------------------------------
@pytest.fixture
def vx(nl: FakeNetlink) -> FakeNetlink:
    nl.link_add(Link(name="flannel.1", kind="vxlan", up=True, vxlan=VxlanInfo(vni=1, underlay="eth0")))
    return nl


def test_neigh_table(vx: FakeNetlink) -> None:
    stale = Neigh("flannel.1", ip("10.244.9.0"), "aa:00:00:00:00:09")
    foreign = Neigh("eth0", ip("10.99.0.2"), "aa:00:00:00:00:02")
    vx.neigh_replace(stale)
    vx.neigh_replace(foreign)
    nt = NeighTable(vx, ["flannel.1"])
    want = Neigh("flannel.1", ip("10.244.1.0"), "AA:00:00:00:00:01")
    with capture_logs() as logs:
        nt.set_desired([want, Neigh("eth9", ip("10.1.1.1"), "aa:00:00:00:00:03")])
    assert [e for e in logs if e["event"] == "neigh on a device we do not own ignored"]
    assert nt.apply() is True
    assert vx.neighs("flannel.1") == [Neigh("flannel.1", ip("10.244.1.0"), "aa:00:00:00:00:01")]
    assert vx.neighs("eth0") == [foreign]
    vx.link_set("flannel.1", up=False)  # the kernel flushes them
    vx.link_set("flannel.1", up=True)
    nt.queue_resync()
    assert nt.apply() is True
    assert len(vx.neighs("flannel.1")) == 1


def test_neigh_table_waits_for_its_device(nl: FakeNetlink) -> None:
    nt = NeighTable(nl, ["flannel.1"])
    nt.set_desired([Neigh("flannel.1", ip("10.244.1.0"), "aa:00:00:00:00:01")])
    assert nt.apply() is False
    nl.link_add(Link(name="flannel.1", kind="vxlan", up=True, vxlan=VxlanInfo(vni=1)))
    assert nt.apply() is True
    assert len(nl.neighs("flannel.1")) == 1


def test_neigh_failure_is_retried(vx: FakeNetlink) -> None:
    nt = NeighTable(vx, ["flannel.1"])
    nt.set_desired([Neigh("flannel.1", ip("10.244.1.0"), "aa:00:00:00:00:01")])
    vx.fail_next("neigh_replace", errno.EIO)
    assert nt.apply() is False
    assert nt.apply() is True
    assert len(vx.neighs("flannel.1")) == 1


def test_fdb_table(vx: FakeNetlink) -> None:
    vx.fdb_replace(Fdb("flannel.1", "aa:00:00:00:00:09", ip("10.99.0.9")))
    ft = FdbTable(vx, ["flannel.1"])
    a = Fdb("flannel.1", "aa:00:00:00:00:01", ip("10.99.0.2"))
    ft.set_desired({"x": a})
    assert ft.apply() is True
    assert vx.fdbs("flannel.1") == [a]
    moved = Fdb("flannel.1", "aa:00:00:00:00:01", ip("10.99.0.3"))
    ft.set_desired([moved])
    assert ft.apply() is True
    assert vx.fdbs("flannel.1") == [moved]
    vx.fdb_delete(moved)
    ft.queue_resync()
    assert ft.apply() is True
    assert vx.fdbs("flannel.1") == [moved]


def test_fdb_one_destination_per_mac(vx: FakeNetlink) -> None:
    ft = FdbTable(vx, ["flannel.1"])
    ft.set_desired(
        [
            Fdb("flannel.1", "aa:00:00:00:00:01", ip("10.99.0.2")),
            Fdb("flannel.1", "aa:00:00:00:00:01", ip("10.99.0.3")),
        ]
    )
    assert ft.apply() is True
    assert vx.fdbs("flannel.1") == [Fdb("flannel.1", "aa:00:00:00:00:01", ip("10.99.0.3"))]
    assert ft.apply() is True


def test_fdb_devices_can_change(vx: FakeNetlink) -> None:
    vx.link_add(Link(name="vxlan.calico", kind="vxlan", up=True, vxlan=VxlanInfo(vni=4096, port=4789)))
    vx.fdb_replace(Fdb("vxlan.calico", "aa:00:00:00:00:09", ip("10.99.0.9")))
    ft = FdbTable(vx, ["flannel.1"])
    ft.set_desired([])
    ft.apply()
    assert vx.fdbs("vxlan.calico")
    ft.set_devices(["flannel.1", "vxlan.calico"])
    ft.set_desired([])
    ft.apply()
    assert vx.fdbs("vxlan.calico") == []


# -- Sysctls --------------------------------------------------------------------------------
def test_sysctls(nl: FakeNetlink) -> None:
    sc = Sysctls(nl)
    sc.set_desired({"net/ipv4/ip_forward": "1", "net/ipv4/conf/eth0/rp_filter": "0"})
    assert sc.apply() is True
    assert nl.sysctls["net/ipv4/ip_forward"] == "1"
    assert nl.ops.get("sysctl_set") == 1  # rp_filter was right already: no write
    nl.sysctl_set("net/ipv4/ip_forward", "0")  # drift made by hand
    assert sc.apply() is True
    sc.queue_resync()
    assert sc.apply() is True
    assert nl.sysctls["net/ipv4/ip_forward"] == "1"
    sc.set_desired({})  # no longer wanted: left as is
    assert sc.apply() is True
    assert nl.sysctls["net/ipv4/ip_forward"] == "1"


def test_sysctls_wait_for_their_interface(nl: FakeNetlink) -> None:
    sc = Sysctls(nl)
    sc.set_desired({"net/ipv4/conf/cali0123/proxy_arp": "1", "net/ipv4/neigh/cali0123/proxy_delay": "0"})
    with capture_logs() as logs:
        assert sc.apply() is False
    assert not [e for e in logs if e["log_level"] == "warning"]
    nl.link_add(Link(name="cali0123", kind="veth", peer="pyt-dp-peer"))
    assert sc.apply() is True
    assert nl.sysctls["net/ipv4/conf/cali0123/proxy_arp"] == "1"
    assert nl.sysctls["net/ipv4/neigh/cali0123/proxy_delay"] == "0"


def test_sysctl_failure_is_retried(nl: FakeNetlink) -> None:
    sc = Sysctls(nl)
    sc.set_desired({"net/ipv4/ip_forward": "1"})
    nl.fail_next("sysctl_set", errno.EACCES)
    assert sc.apply() is False
    assert sc.apply() is True
    assert nl.sysctls["net/ipv4/ip_forward"] == "1"


# -- links ------------------------------------------------------------------------------------
def test_link_driver_recreates_deleted_and_incompatible_vxlan(nl: FakeNetlink) -> None:
    from pycni.dataplane.links import Device, LinkDriver

    resyncs: list[str] = []
    ld = LinkDriver(nl, on_recreate=resyncs.append)
    info = VxlanInfo(vni=1, local=ip("10.99.0.1"), underlay="eth0")
    a = ipaddress.ip_interface("10.244.1.0/32")
    ld.set_desired([Device("flannel.1", "vxlan", mtu=1450, addrs=(a,), vxlan=info, mac="0E:00:00:00:00:01")])
    assert ld.apply() is True
    link = nl.link("flannel.1")
    assert link is not None and link.up and link.mtu == 1450 and link.address == "0e:00:00:00:00:01"
    assert link.vxlan == info and nl.addrs("flannel.1") == [a]
    writes = nl.writes()
    with capture_logs() as logs:
        assert ld.apply() is True
    assert nl.writes() == writes and not [e for e in logs if e["log_level"] == "info"]
    nl.link_delete("flannel.1")
    assert ld.apply() is True
    assert nl.link("flannel.1") is not None and resyncs == ["flannel.1", "flannel.1"]
    nl.addr_add("flannel.1", ipaddress.ip_interface("10.244.9.0/32"))  # an old lease's address
    ld.apply()
    assert nl.addrs("flannel.1") == [a]
    ld.set_desired([Device("flannel.1", "vxlan", vxlan=VxlanInfo(vni=1, port=4789, underlay="eth0"))])
    ld.apply()
    got = nl.link("flannel.1")
    assert got is not None and got.vxlan is not None and got.vxlan.port == 4789 and len(resyncs) == 3


def test_link_driver_failure_is_reported_and_retried(nl: FakeNetlink) -> None:
    from pycni.dataplane.links import Device, LinkDriver

    ld = LinkDriver(nl)
    ld.set_desired([Device("cni0", "bridge", mtu=1450, addrs=(ipaddress.ip_interface("10.244.1.1/24"),))])
    nl.fail_next("link_add", errno.ENOMEM)
    assert ld.apply() is False
    assert ld.apply() is True
    br = nl.link("cni0")
    assert br is not None and br.kind == "bridge" and br.up and br.mtu == 1450
    ld.set_desired([])
    assert ld.apply() is True
    assert nl.link("cni0") is None


def test_ensure_bridge_refuses_a_non_bridge(nl: FakeNetlink) -> None:
    from pycni.dataplane.links import ensure_bridge

    with pytest.raises(NetlinkError):
        ensure_bridge(nl, "eth0")


def test_ensure_ipip(nl: FakeNetlink) -> None:
    from pycni.dataplane.links import Device, LinkDriver, ensure_ipip

    with pytest.raises(NetlinkError) as ei:
        ensure_ipip(nl, "tunl0")
    assert ei.value.errno == errno.EOPNOTSUPP
    fk = FakeNetlink(ipip=True)
    t = ensure_ipip(fk, "tunl0", ipaddress.ip_interface("10.244.1.1/32"), 1440)
    assert t.up and t.mtu == 1440 and fk.addrs("tunl0") == [ipaddress.ip_interface("10.244.1.1/32")]
    ld = LinkDriver(fk)
    ld.set_desired([Device("tunl0", "ipip", mtu=1440)])
    ld.apply()
    ld.set_desired([])
    ld.apply()
    t2 = fk.link("tunl0")
    assert t2 is not None and not t2.up  # the fallback device cannot go; it is set down


# -- iptables (parsing and rendering; the real thing runs in tests/integration) ----------------
SAVE = """# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A POSTROUTING -o eth9 -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN
COMMIT
"""


def test_iptables_save_parsing() -> None:
    from pycni.dataplane.iptables import _Table

    t = _Table.parse(SAVE)
    assert t.chains["FLANNEL-POSTRTG"] == ["-s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN"]
    assert t.jumps_to("POSTROUTING", "FLANNEL-POSTRTG") == [
        '-m comment --comment "flanneld masq" -j FLANNEL-POSTRTG'
    ]
    assert t.jumps_to("POSTROUTING", "FLANNEL") == []


def test_iptables_render_and_drift() -> None:
    from pycni.dataplane.iptables import Chain, IptablesChains, _Table

    class Recorder(IptablesChains):
        def __init__(self) -> None:
            super().__init__(netns="pyt-dp-x")
            self.saved = SAVE
            self.restored: list[str] = []

        def save(self, table: str) -> str:
            return self.saved

        def restore(self, text: str) -> None:
            self.restored.append(text)

    c = Chain(
        "nat",
        "FLANNEL-POSTRTG",
        ("-s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN",),
        "POSTROUTING",
        '-m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
    )
    r = Recorder()
    assert r._cmd("save") == ["nsenter", "--net=/run/netns/pyt-dp-x", "iptables-save"]
    r.set_desired([c])
    assert r.apply() is True
    assert r.restored == [
        "\n".join(
            [
                "*nat",
                ":FLANNEL-POSTRTG - [0:0]",
                "-F FLANNEL-POSTRTG",
                "-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN",
                '-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
                '-I POSTROUTING 1 -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
                "COMMIT",
                "",
            ]
        )
    ]
    r.queue_resync()
    assert r.apply() is True and len(r.restored) == 1  # as observed: nothing to do
    r.saved = SAVE.replace("-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN\n", "")
    assert _Table.parse(r.saved).chains["FLANNEL-POSTRTG"] == []
    r.queue_resync()
    assert r.apply() is True and len(r.restored) == 2  # drift: rewritten


def test_iptables_failure_is_retried_and_cleanup_removes_jumps() -> None:
    from pycni.dataplane.iptables import Chain, IptablesChains, IptablesError

    class Flaky(IptablesChains):
        def __init__(self) -> None:
            super().__init__()
            self.saved = SAVE
            self.restored: list[str] = []
            self.fail = 1

        def save(self, table: str) -> str:
            return self.saved

        def restore(self, text: str) -> None:
            if self.fail:
                self.fail -= 1
                raise IptablesError(
                    "iptables-restore failed (4): Another app is currently holding the xtables lock"
                )
            self.restored.append(text)

    f = Flaky()
    assert f._cmd("restore") == ["iptables-restore"]
    f.set_desired([Chain("nat", "FLANNEL-POSTRTG", ("-j RETURN",), "POSTROUTING", "-j FLANNEL-POSTRTG")])
    with capture_logs() as logs:
        assert f.apply() is False
    assert [e for e in logs if e["log_level"] == "warning"]
    assert f.apply() is True and len(f.restored) == 1
    f.cleanup()
    assert f.restored[-1].splitlines()[1:4] == [
        '-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
        "-F FLANNEL-POSTRTG",
        "-X FLANNEL-POSTRTG",
    ]
