"""felix calc on fake snapshots: local workloads, blackholes, IPIP/VXLAN/CrossSubnet routes, NAT, MTU."""

from __future__ import annotations

import ipaddress
import json

from pycni.calc.encap import owner, pool_for, route_kind, tunnel_mtu
from pycni.calc.felix import FelixConfig, calc_felix
from pycni.constants import RTPROT_FELIX
from pycni.dataplane.netlink import SCOPE_LINK, Fdb, Neigh, Route
from pycni.datastore import SyncStatus, Update
from pycni.datastore import calico as c
from pycni.datastore.snapshot import Snapshot

N = ipaddress.ip_network
A = ipaddress.ip_address


def pool(
    mode_ipip: str = "Never",
    mode_vxlan: str = "Never",
    cidr: str = "10.244.0.0/16",
    nat: bool = True,
    name: str = "default-ipv4-ippool",
) -> tuple[str, str]:
    p = c.IPPool.from_spec(
        c.Meta(name), {"cidr": cidr, "ipipMode": mode_ipip, "vxlanMode": mode_vxlan, "natOutgoing": nat}
    )
    return c.key_for(p), c.encode(p)


def node(
    name: str, ip: str, ipip: str | None = None, vx: str | None = None, mac: str = ""
) -> tuple[str, str]:
    n = c.Node(
        meta=c.Meta(name),
        ipv4_address=ipaddress.ip_interface(ip),
        as_number=None,
        ipip_tunnel_addr=A(ipip) if ipip else None,  # type: ignore[arg-type]
        vxlan_tunnel_addr=A(vx) if vx else None,
        vxlan_tunnel_mac=mac,
    )  # type: ignore[arg-type]
    return c.key_for(n), c.encode(n)


def aff(node_name: str, block: str, state: str = "confirmed") -> tuple[str, str]:
    net = N(block)
    return (
        f"/calico/ipam/v2/host/{node_name}/ipv4/block/{net.network_address}-{net.prefixlen}",
        json.dumps({"state": state, "deleted": False}),
    )


def wep(node_name: str, pod: str, ip: str, ifname: str) -> tuple[str, str]:
    w = c.WorkloadEndpoint(
        meta=c.Meta(c.wep_name(node_name, pod), "default"),
        node=node_name,
        interface_name=ifname,
        ip_networks=(N(ip),),
        pod=pod,
    )
    return c.key_for(w), c.encode(w)


def snap(*kvs: tuple[str, str]) -> Snapshot:
    s = Snapshot()
    for i, (k, v) in enumerate(kvs):
        s.apply(Update(k, v, i + 1))
    s.set_status("datastore", SyncStatus.IN_SYNC)
    return s


CFG = FelixConfig(nodename="n1", underlay_dev="eth0", underlay_mtu=1500)


def base(mode_ipip: str = "Never", mode_vxlan: str = "Never") -> list[tuple[str, str]]:
    return [
        pool(mode_ipip, mode_vxlan),
        node("n1", "10.99.0.11/24", ipip="10.244.1.0", vx="10.244.1.1", mac="66:00:00:00:00:01"),
        node("n2", "10.99.0.12/24", ipip="10.244.2.0", vx="10.244.2.1", mac="66:00:00:00:00:02"),
        node("n3", "10.99.1.13/24", ipip="10.244.3.0", vx="10.244.3.1", mac="66:00:00:00:00:03"),
        aff("n1", "10.244.1.0/26"),
        aff("n2", "10.244.2.0/26"),
        aff("n3", "10.244.3.0/26"),
        wep("n1", "a", "10.244.1.5/32", "cali0000000000a"),
        wep("n2", "b", "10.244.2.5/32", "cali0000000000b"),
    ]


def test_encap_route_kind() -> None:
    me = ipaddress.ip_interface("10.99.0.11/24")
    p_cs = c.IPPool.from_spec(c.Meta("p"), {"cidr": "10.244.0.0/16", "vxlanMode": "CrossSubnet"})
    p_al = c.IPPool.from_spec(c.Meta("p"), {"cidr": "10.244.0.0/16", "ipipMode": "Always"})
    p_no = c.IPPool.from_spec(c.Meta("p"), {"cidr": "10.244.0.0/16"})
    assert route_kind(p_cs, me, A("10.99.0.12")) == "direct"
    assert route_kind(p_cs, me, A("10.99.1.12")) == "vxlan"
    assert route_kind(p_cs, None, A("10.99.0.12")) == "vxlan"  # unknown subnet: encapsulate
    assert route_kind(p_al, me, A("10.99.0.12")) == "ipip"
    assert route_kind(p_no, me, A("10.99.1.12")) == "direct"
    assert route_kind(None, me, A("10.99.1.12")) == "direct"
    assert owner(p_al) == "felix" and owner(p_cs) == "felix" and owner(p_no) == "bgpd"
    assert tunnel_mtu(1500, "ipip") == 1480 and tunnel_mtu(1500, "vxlan") == 1450
    assert tunnel_mtu(1500, "vxlan", 1400) == 1400
    inner = c.IPPool.from_spec(c.Meta("q"), {"cidr": "10.244.128.0/17"})
    assert pool_for(N("10.244.130.0/26"), [p_no, inner]) is inner
    assert pool_for(A("10.244.1.1"), [p_no, inner]) is p_no
    assert pool_for(N("10.0.0.0/26"), [p_no]) is None


def test_local_workloads_and_sysctls() -> None:
    spec = calc_felix(CFG, snap(*base()))
    r = spec.routes_by_dst()
    assert r[N("10.244.1.5/32")] == Route(
        dst=N("10.244.1.5/32"), oif="cali0000000000a", proto=RTPROT_FELIX, scope=SCOPE_LINK
    )
    sc = dict(spec.sysctls)
    assert sc["net/ipv4/ip_forward"] == "1"
    assert sc["net/ipv4/conf/cali0000000000a/proxy_arp"] == "1"
    assert sc["net/ipv4/neigh/cali0000000000a/proxy_delay"] == "0"
    assert sc["net/ipv4/conf/cali0000000000a/forwarding"] == "1"
    assert "net/ipv4/conf/cali0000000000b/proxy_arp" not in sc  # n2's workload
    assert spec.local_endpoints == 1
    # No-encap pool: remote block routes are bgpd's; the own block is blackholed by felix.
    assert N("10.244.2.0/26") not in r
    assert r[N("10.244.1.0/26")].type == "blackhole"
    assert spec.tunnels == ()
    assert spec.workload_mtu == 1500


def test_ipip_always() -> None:
    spec = calc_felix(CFG, snap(*base("Always")))
    r = spec.routes_by_dst()
    assert r[N("10.244.1.0/26")] == Route(dst=N("10.244.1.0/26"), type="blackhole", proto=RTPROT_FELIX)
    assert r[N("10.244.2.0/26")] == Route(
        dst=N("10.244.2.0/26"), gateway=A("10.99.0.12"), oif="tunl0", proto=RTPROT_FELIX, onlink=True
    )
    assert r[N("10.244.3.0/26")].oif == "tunl0" and r[N("10.244.3.0/26")].gateway == A("10.99.1.13")
    (t,) = spec.tunnels
    assert t.name == "tunl0" and t.address == A("10.244.1.0") and t.mtu == 1480
    assert spec.workload_mtu == 1480


def test_ipip_crosssubnet() -> None:
    spec = calc_felix(CFG, snap(*base("CrossSubnet")))
    r = spec.routes_by_dst()
    assert r[N("10.244.2.0/26")] == Route(
        dst=N("10.244.2.0/26"), gateway=A("10.99.0.12"), oif="eth0", proto=RTPROT_FELIX
    )
    assert r[N("10.244.3.0/26")].oif == "tunl0" and r[N("10.244.3.0/26")].onlink


def test_vxlan_always_neigh_fdb_routes() -> None:
    spec = calc_felix(CFG, snap(*base(mode_vxlan="Always")))
    r = spec.routes_by_dst()
    assert r[N("10.244.2.0/26")] == Route(
        dst=N("10.244.2.0/26"), gateway=A("10.244.2.1"), oif="vxlan.calico", proto=RTPROT_FELIX, onlink=True
    )
    assert Neigh("vxlan.calico", A("10.244.2.1"), "66:00:00:00:00:02") in spec.neighs
    assert Fdb("vxlan.calico", "66:00:00:00:00:03", A("10.99.1.13")) in spec.fdbs
    assert len(spec.neighs) == 2 and len(spec.fdbs) == 2
    (t,) = spec.tunnels
    assert (t.name, t.vni, t.port, t.mtu, t.address, t.mac, t.local, t.underlay) == (
        "vxlan.calico",
        4096,
        4789,
        1450,
        A("10.244.1.1"),
        "66:00:00:00:00:01",
        A("10.99.0.11"),
        "eth0",
    )
    assert spec.workload_mtu == 1450


def test_vxlan_crosssubnet_and_overrides() -> None:
    cfg = FelixConfig(nodename="n1", underlay_dev="eth0", underlay_mtu=1500, vxlan_mtu=1400)
    spec = calc_felix(cfg, snap(*base(mode_vxlan="CrossSubnet")))
    r = spec.routes_by_dst()
    assert r[N("10.244.2.0/26")].oif == "eth0"
    assert r[N("10.244.3.0/26")].oif == "vxlan.calico"
    assert [n.dst for n in spec.neighs] == [A("10.244.3.1")]
    assert spec.tunnels[0].mtu == 1400 and spec.workload_mtu == 1400


def test_node_leaving_withdraws_routes() -> None:
    kvs = base("Always")
    spec = calc_felix(CFG, snap(*kvs))
    assert N("10.244.2.0/26") in spec.routes_by_dst()
    gone = [kv for kv in kvs if "/n2" not in kv[0] and "nodes/n2" not in kv[0]]
    spec2 = calc_felix(CFG, snap(*gone))
    assert N("10.244.2.0/26") not in spec2.routes_by_dst()


def test_pending_affinity_and_missing_vtep() -> None:
    kvs = base(mode_vxlan="Always") + [aff("n2", "10.244.2.64/26", state="pending")]
    kvs = [kv for kv in kvs if not kv[0].endswith("nodes/n3")] + [node("n3", "10.99.1.13/24")]
    spec = calc_felix(CFG, snap(*kvs))
    r = spec.routes_by_dst()
    assert N("10.244.2.64/26") not in r  # pending counts as absent
    assert N("10.244.3.0/26") not in r  # n3 has no VTEP yet
    assert any("n3" in n for n in spec.notes)


def test_borrowed_remote_ip_gets_host_route() -> None:
    kvs = base("Always") + [wep("n2", "borrow", "10.244.3.7/32", "cali00000000bbb")]
    spec = calc_felix(CFG, snap(*kvs))
    r = spec.routes_by_dst()[N("10.244.3.7/32")]
    assert r.gateway == A("10.99.0.12") and r.oif == "tunl0"


def test_bad_resources_skipped() -> None:
    kvs = base("Always") + [
        (c.IPPOOLS_PREFIX + "bad", '{"kind":"IPPool","metadata":{"name":"bad"},"spec":{"cidr":"nonsense"}}'),
        (c.WEPS_PREFIX + "default/x", "{garbage"),
    ]
    spec = calc_felix(CFG, snap(*kvs))
    assert N("10.244.2.0/26") in spec.routes_by_dst()


def test_nat_spec() -> None:
    kvs = base("Always") + [pool(cidr="10.250.0.0/16", nat=False, name="nonat")]
    spec = calc_felix(CFG, snap(*kvs))
    assert spec.nat.masq_pools == (N("10.244.0.0/16"),)
    assert spec.nat.all_pools == (N("10.244.0.0/16"), N("10.250.0.0/16"))


def test_felix_configuration_per_node_overrides() -> None:
    d = c.FelixConfiguration.from_spec(c.Meta("default"), {"ipipMTU": 1400})
    n = c.FelixConfiguration.from_spec(c.Meta("node.n1"), {"ipipMTU": 1300})
    kvs = base("Always") + [(c.key_for(d), c.encode(d)), (c.key_for(n), c.encode(n))]
    spec = calc_felix(CFG, snap(*kvs))
    assert spec.tunnels[0].mtu == 1300
    spec2 = calc_felix(FelixConfig(nodename="n2", underlay_dev="eth0"), snap(*kvs))
    assert spec2.tunnels[0].mtu == 1400


def test_program_cluster_routes_hands_ipip_to_bgpd() -> None:
    b = c.BGPConfiguration.from_spec(c.Meta("default"), {"programClusterRoutes": "Enabled"})
    spec = calc_felix(CFG, snap(*base("Always"), (c.key_for(b), c.encode(b))))
    r = spec.routes_by_dst()
    assert N("10.244.2.0/26") not in r and r[N("10.244.1.0/26")].type == "blackhole"
    spec2 = calc_felix(CFG, snap(*base(mode_vxlan="Always"), (c.key_for(b), c.encode(b))))
    assert N("10.244.2.0/26") in spec2.routes_by_dst()  # VXLAN stays felix's
