"""flannel_spec: host-gw, vxlan (neighbour + FDB + onlink route per peer), DirectRouting, ip-masq."""

from __future__ import annotations

import ipaddress

from pycni.calc.flannel import NodeContext, flannel_spec, masq_rules
from pycni.constants import RTPROT_FLANNELD
from pycni.dataplane.netlink import Fdb, Neigh, Route
from pycni.datastore import SyncStatus, Update
from pycni.datastore.flannel import Lease, LeaseAttrs, parse_config, subnet_key
from pycni.datastore.snapshot import Snapshot

N = ipaddress.IPv4Network
IP = ipaddress.IPv4Address


def snap(*leases: tuple[str, str]) -> Snapshot:
    s = Snapshot()
    for i, (sn, val) in enumerate(leases):
        s.apply(Update(subnet_key(N(sn)), val, i + 2))
    s.set_status("datastore", SyncStatus.IN_SYNC)
    return s


def ctx(conf: str, **kw: object) -> NodeContext:
    cfg = parse_config(conf)
    own = Lease(N("10.244.1.0/24"), LeaseAttrs(IP("10.99.0.11"), cfg.backend.type))
    return NodeContext(config=cfg, own=own, ext_iface="eth0", ext_ip=IP("10.99.0.11"),
                       local_networks=(N("10.99.0.0/24"),), **kw)  # type: ignore[arg-type]


def vx(ip: str, mac: str) -> str:
    return (f'{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan",'
            f'"BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}')


def test_host_gw_routes_via_public_ip() -> None:
    c = ctx('{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}')
    s = snap(("10.244.1.0/24", '{"PublicIP":"10.99.0.11","BackendType":"host-gw"}'),  # own
             ("10.244.2.0/24", '{"PublicIP":"10.99.0.12","BackendType":"host-gw"}'),
             ("10.244.3.0/24", '{"PublicIP":"10.99.1.13","BackendType":"host-gw"}'),  # other segment
             ("10.244.4.0/24", '{"PublicIP":"10.99.0.14","BackendType":"vxlan"}'),  # other backend
             ("10.244.5.0/24", "garbage"))
    spec = flannel_spec(s, c)
    assert spec.vxlan is None and not spec.neighs and not spec.fdbs
    assert list(spec.routes.values()) == [
        Route(dst=N("10.244.2.0/24"), gateway=IP("10.99.0.12"), oif="eth0", proto=RTPROT_FLANNELD)]
    assert c.mtu == 1500


def test_vxlan_three_entries_per_peer() -> None:
    c = ctx('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
    s = snap(("10.244.2.0/24", vx("10.99.0.12", "AA:00:00:00:00:02")),
             ("10.244.3.0/24", vx("10.99.1.13", "aa:00:00:00:00:03")))
    spec = flannel_spec(s, c)
    assert spec.vxlan is not None
    assert (spec.vxlan.name, spec.vxlan.vni, spec.vxlan.port, spec.vxlan.mtu) == ("flannel.1", 1, 8472, 1450)
    assert spec.vxlan.address == ipaddress.IPv4Interface("10.244.1.0/32")
    assert spec.vxlan.local == IP("10.99.0.11") and spec.vxlan.underlay == "eth0"
    assert set(spec.neighs.values()) == {Neigh("flannel.1", IP("10.244.2.0"), "aa:00:00:00:00:02"),
                                         Neigh("flannel.1", IP("10.244.3.0"), "aa:00:00:00:00:03")}
    assert set(spec.fdbs.values()) == {Fdb("flannel.1", "aa:00:00:00:00:02", IP("10.99.0.12")),
                                       Fdb("flannel.1", "aa:00:00:00:00:03", IP("10.99.1.13"))}
    assert set(spec.routes.values()) == {
        Route(dst=N(f"10.244.{i}.0/24"), gateway=IP(f"10.244.{i}.0"), oif="flannel.1", onlink=True,
              proto=RTPROT_FLANNELD) for i in (2, 3)}
    assert c.mtu == 1450
    assert ctx('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":9000}}').mtu == 8950


def test_direct_routing_inside_segment_vxlan_across() -> None:
    c = ctx('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}')
    s = snap(("10.244.2.0/24", vx("10.99.0.12", "aa:00:00:00:00:02")),
             ("10.244.3.0/24", vx("10.99.1.13", "aa:00:00:00:00:03")))
    spec = flannel_spec(s, c)
    r2 = spec.routes[(254, N("10.244.2.0/24"), 0)]
    assert (r2.gateway, r2.oif, r2.onlink) == (IP("10.99.0.12"), "eth0", False)
    r3 = spec.routes[(254, N("10.244.3.0/24"), 0)]
    assert (r3.gateway, r3.oif, r3.onlink) == (IP("10.244.3.0"), "flannel.1", True)
    assert [n.dst for n in spec.neighs.values()] == [IP("10.244.3.0")]
    assert spec.direct == (N("10.244.2.0/24"),)


def test_spec_is_independent_of_arrival_order() -> None:
    c = ctx('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
    a = ("10.244.2.0/24", vx("10.99.0.12", "aa:00:00:00:00:02"))
    b = ("10.244.3.0/24", vx("10.99.0.13", "aa:00:00:00:00:03"))
    assert flannel_spec(snap(a, b), c) == flannel_spec(snap(b, a), c)


def test_ip_masq_rules_match_flannel() -> None:
    c = ctx('{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}', ip_masq=True)
    spec = flannel_spec(snap(), c)
    nat = [ch for ch in spec.chains if ch.table == "nat"][0]
    assert nat.name == "FLANNEL-POSTRTG" and nat.hook == "POSTROUTING"
    assert nat.rules == masq_rules(N("10.244.0.0/16"), N("10.244.1.0/24"), random_fully=True)
    assert nat.rules[1] == '-s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN'
    assert nat.rules[4].endswith("-j MASQUERADE --random-fully")
    no_masq = flannel_spec(snap(), ctx('{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}'))
    assert [ch.table for ch in no_masq.chains] == ["filter"]
