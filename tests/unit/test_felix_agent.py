"""The felix Agent on FakeNetlink: nothing before in-sync, full programming, repair, restart sweep."""

from __future__ import annotations

import ipaddress
import json

from pycni.agent import Agent
from pycni.calc.felix import FelixConfig, FelixSpec
from pycni.calico.felix import build_agent
from pycni.constants import RTPROT_FELIX
from pycni.dataplane.netlink import Link, Route
from pycni.datastore import SyncStatus, Update
from pycni.datastore import calico as c
from pycni.testing.fake_netlink import FakeNetlink

N = ipaddress.ip_network
A = ipaddress.ip_address


def kv_pool(**spec: object) -> tuple[str, str]:
    p = c.IPPool.from_spec(
        c.Meta("default-ipv4-ippool"), {"cidr": "10.244.0.0/16", "natOutgoing": True, **spec}
    )
    return c.key_for(p), c.encode(p)


def kv_node(name: str, ip: str, vx: str, mac: str, ipip: str | None = None) -> tuple[str, str]:
    n = c.Node(
        meta=c.Meta(name),
        ipv4_address=ipaddress.IPv4Interface(ip),
        vxlan_tunnel_addr=ipaddress.IPv4Address(vx),
        vxlan_tunnel_mac=mac,
        ipip_tunnel_addr=ipaddress.IPv4Address(ipip) if ipip else None,
    )
    return c.key_for(n), c.encode(n)


def kv_aff(node: str, block: str) -> tuple[str, str]:
    b = N(block)
    return (
        f"/calico/ipam/v2/host/{node}/ipv4/block/{b.network_address}-{b.prefixlen}",
        json.dumps({"state": "confirmed", "deleted": False}),
    )


def kv_wep(node: str, pod: str, ip: str, ifname: str) -> tuple[str, str]:
    w = c.WorkloadEndpoint(
        meta=c.Meta(c.wep_name(node, pod), "default"),
        node=node,
        interface_name=ifname,
        ip_networks=(N(ip),),
        pod=pod,
    )
    return c.key_for(w), c.encode(w)


def world(ipip: bool = False) -> FakeNetlink:
    nl = FakeNetlink("n1", ipip=ipip)
    nl.link_add(Link(name="eth0", kind="dummy", mtu=1500, up=True))
    nl.addr_add("eth0", ipaddress.ip_interface("10.99.0.11/24"))
    nl.link_set("lo", up=True)
    nl.link_add(Link(name="cali0000000000a", kind="dummy", mtu=1450, up=True))
    return nl


def agent_for(nl: FakeNetlink) -> tuple[Agent[FelixSpec], object]:
    cfg = FelixConfig(nodename="n1", underlay_dev="eth0", underlay_mtu=1500)
    agent = build_agent(nl, cfg, iptables=False)
    emit = agent.emitter("datastore")
    return agent, emit


def feed(emit: object, kvs: list[tuple[str, str]], status: bool = True) -> None:
    for i, (k, v) in enumerate(kvs):
        emit(Update(k, v, i + 1))  # type: ignore[operator]
    if status:
        emit(SyncStatus.IN_SYNC)  # type: ignore[operator]


VX = [
    kv_pool(vxlanMode="Always"),
    kv_node("n1", "10.99.0.11/24", "10.244.1.1", "66:00:00:00:00:01"),
    kv_node("n2", "10.99.0.12/24", "10.244.2.1", "66:00:00:00:00:02"),
    kv_aff("n1", "10.244.1.0/26"),
    kv_aff("n2", "10.244.2.0/26"),
    kv_wep("n1", "a", "10.244.1.5/32", "cali0000000000a"),
]


def felix_routes(nl: FakeNetlink) -> dict[object, Route]:
    return {r.dst: r for r in nl.routes(proto=RTPROT_FELIX)}


def test_nothing_before_in_sync_then_everything() -> None:
    nl = world()
    agent, emit = agent_for(nl)
    feed(emit, VX, status=False)
    agent.step()
    assert nl.link("vxlan.calico") is None and not felix_routes(nl)
    emit(SyncStatus.IN_SYNC)  # type: ignore[operator]
    assert agent.step()
    vx = nl.link("vxlan.calico")
    assert vx is not None and vx.vxlan is not None
    assert (vx.vxlan.vni, vx.vxlan.port, vx.mtu, vx.address, vx.up) == (
        4096,
        4789,
        1450,
        "66:00:00:00:00:01",
        True,
    )
    assert ipaddress.ip_interface("10.244.1.1/32") in nl.addrs("vxlan.calico")
    r = felix_routes(nl)
    assert r[N("10.244.2.0/26")].gateway == A("10.244.2.1") and r[N("10.244.2.0/26")].oif == "vxlan.calico"
    assert r[N("10.244.1.0/26")].type == "blackhole"
    assert r[N("10.244.1.5/32")].oif == "cali0000000000a"
    assert [(n.dst, n.lladdr) for n in nl.neighs("vxlan.calico")] == [(A("10.244.2.1"), "66:00:00:00:00:02")]
    assert [(f.lladdr, f.dst) for f in nl.fdbs("vxlan.calico")] == [("66:00:00:00:00:02", A("10.99.0.12"))]
    assert nl.sysctls.get("net/ipv4/conf/cali0000000000a/proxy_arp") == "1"
    assert nl.sysctls.get("net/ipv4/ip_forward") == "1"
    assert agent.health()["ok"]


def test_manual_delete_repaired_on_resync_and_node_leave() -> None:
    nl = world()
    agent, emit = agent_for(nl)
    feed(emit, VX)
    agent.step()
    nl.route_delete(felix_routes(nl)[N("10.244.2.0/26")])
    agent.queue_resync()
    agent.step()
    assert N("10.244.2.0/26") in felix_routes(nl)
    # n2 leaves: its Node and affinity go; its routes, neighbour and FDB entry go everywhere.
    emit(Update(VX[2][0], None, 100))  # type: ignore[operator]
    emit(Update(VX[4][0], None, 101))  # type: ignore[operator]
    agent.step()
    assert N("10.244.2.0/26") not in felix_routes(nl)
    assert nl.neighs("vxlan.calico") == [] and nl.fdbs("vxlan.calico") == []


def test_restart_sweeps_stale_routes_only_ours() -> None:
    nl = world()
    nl.route_replace(Route(dst=N("10.244.9.0/26"), type="blackhole", proto=RTPROT_FELIX))  # stale, ours
    nl.route_replace(Route(dst=N("192.168.50.0/24"), gateway=A("10.99.0.1"), oif="eth0", proto=4))  # not ours
    agent, emit = agent_for(nl)
    feed(emit, VX)
    agent.step()
    r = felix_routes(nl)
    assert N("10.244.9.0/26") not in r
    assert any(x.dst == N("192.168.50.0/24") for x in nl.routes())
    # A second felix over the same kernel changes nothing (restart keeps flows).
    before = dict(nl.ops)
    agent2, emit2 = agent_for(nl)
    feed(emit2, VX)
    agent2.step()
    assert nl.ops == before


def test_ipip_on_fake_with_module() -> None:
    nl = world(ipip=True)
    agent, emit = agent_for(nl)
    kvs = [
        kv_pool(ipipMode="Always"),
        kv_node("n1", "10.99.0.11/24", "10.244.1.1", "66:00:00:00:00:01", ipip="10.244.1.0"),
        kv_node("n2", "10.99.0.12/24", "10.244.2.1", "66:00:00:00:00:02", ipip="10.244.2.0"),
        kv_aff("n1", "10.244.1.0/26"),
        kv_aff("n2", "10.244.2.0/26"),
    ]
    feed(emit, kvs)
    agent.step()
    t = nl.link("tunl0")
    assert t is not None and t.up and t.mtu == 1480
    assert ipaddress.ip_interface("10.244.1.0/32") in nl.addrs("tunl0")
    r = felix_routes(nl)[N("10.244.2.0/26")]
    assert (r.gateway, r.oif, r.onlink) == (A("10.99.0.12"), "tunl0", True)
    assert nl.link("vxlan.calico") is None


def test_restart_with_vxlan_switched_off_removes_stale_device() -> None:
    nl = world()
    agent, emit = agent_for(nl)
    feed(emit, VX)
    agent.step()
    assert nl.link("vxlan.calico") is not None
    # The pool turns into a no-encap pool while felix is down; the new felix sweeps the device.
    kvs = [kv_pool()] + VX[1:]
    agent2, emit2 = agent_for(nl)
    feed(emit2, kvs)
    agent2.step()
    assert nl.link("vxlan.calico") is None
    assert not any(r.oif == "vxlan.calico" for r in nl.routes())
