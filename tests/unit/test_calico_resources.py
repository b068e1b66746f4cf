"""Calico v3 resource codecs: Calico's own JSON decodes, round-trips, and bad input names the field."""

from __future__ import annotations

import ipaddress
import json

import pytest

from pycni.datastore import calico as c
from pycni.datastore.memory import MemoryDatastore
from pycni.errors import AlreadyExists, Invalid

POOL_JSON = {
    "kind": "IPPool",
    "apiVersion": "projectcalico.org/v3",
    "metadata": {"name": "default-ipv4-ippool", "uid": "u1", "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {
        "cidr": "10.244.0.0/16",
        "blockSize": 26,
        "ipipMode": "Always",
        "vxlanMode": "Never",
        "natOutgoing": True,
        "nodeSelector": "all()",
        "allowedUses": ["Workload", "Tunnel"],
        "somethingNew": {"x": 1},
    },
}

NODE_JSON = {
    "kind": "Node",
    "apiVersion": "projectcalico.org/v3",
    "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
    "spec": {
        "bgp": {
            "ipv4Address": "10.99.0.11/24",
            "asNumber": 64512,
            "routeReflectorClusterID": "224.0.0.1",
            "ipv4IPIPTunnelAddr": "10.244.1.0",
        },
        "ipv4VXLANTunnelAddr": "10.244.1.1",
        "vxlanTunnelMACAddr": "66:4F:26:AE:AF:DB",
        "orchRefs": [{"nodeName": "n1", "orchestrator": "k8s"}],
    },
}


def test_pool_decodes_and_round_trips() -> None:
    key = "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"
    p = c.decode(key, json.dumps(POOL_JSON), c.IPPool)
    assert isinstance(p, c.IPPool)
    assert p.cidr == ipaddress.ip_network("10.244.0.0/16")
    assert p.ipip_mode == "Always" and p.encapsulation == "ipip" and p.nat_outgoing
    assert c.key_for(p) == key
    back = json.loads(c.encode(p))
    assert back["spec"]["somethingNew"] == {"x": 1}  # unknown fields survive
    assert back["metadata"]["uid"] == "u1"
    assert c.decode(key, c.encode(p)) == p


def test_pool_defaults_and_case() -> None:
    p = c.IPPool.from_spec(c.Meta("p"), {"cidr": "10.1.0.0/16", "vxlanMode": "crosssubnet"})
    assert p.block_size == 26 and p.vxlan_mode == "CrossSubnet" and p.ipip_mode == "Never"
    assert p.encapsulation == "vxlan" and p.encap_mode == "CrossSubnet"


@pytest.mark.parametrize(
    ("spec", "fld"),
    [
        ({"cidr": "10.1.0.0/33"}, "spec.cidr"),
        ({"cidr": "10.1.0.0/16", "blockSize": 19}, "spec.blockSize"),
        ({"cidr": "10.1.0.0/28", "blockSize": 26}, "spec.blockSize"),
        ({"cidr": "169.254.0.0/16"}, "spec.cidr"),
        ({"cidr": "10.1.0.0/16", "ipipMode": "Always", "vxlanMode": "Always"}, "spec.ipipMode"),
        ({"cidr": "10.1.0.0/16", "ipipMode": "Sometimes"}, "spec.ipipMode"),
        ({"cidr": "fd00::/48", "ipipMode": "Always"}, "spec.ipipMode"),
        ({"cidr": "10.1.0.0/16", "natOutgoing": "yes"}, "spec.natOutgoing"),
    ],
)
def test_pool_invalid_names_field(spec: dict, fld: str) -> None:
    with pytest.raises(Invalid) as ei:
        c.IPPool.from_spec(c.Meta("p"), spec)
    assert ei.value.field == fld


def test_node_fields() -> None:
    key = "/calico/resources/v3/projectcalico.org/nodes/n1"
    n = c.decode(key, json.dumps(NODE_JSON))
    assert isinstance(n, c.Node)
    assert n.ip == ipaddress.ip_address("10.99.0.11")
    assert n.ipv4_address == ipaddress.ip_interface("10.99.0.11/24")
    assert n.as_number == 64512 and n.rr_cluster_id == "224.0.0.1"
    assert n.ipip_tunnel_addr == ipaddress.ip_address("10.244.1.0")
    assert n.vxlan_tunnel_addr == ipaddress.ip_address("10.244.1.1")
    assert n.vxlan_tunnel_mac == "66:4f:26:ae:af:db"
    out = json.loads(c.encode(n))
    assert out["spec"]["orchRefs"] == NODE_JSON["spec"]["orchRefs"]
    assert out["spec"]["bgp"]["ipv4Address"] == "10.99.0.11/24"
    assert c.decode(key, c.encode(n)) == n


def test_node_bad_address() -> None:
    bad = json.loads(json.dumps(NODE_JSON))
    bad["spec"]["bgp"]["ipv4Address"] = "10.99.0.300/24"
    with pytest.raises(Invalid, match="nodes/n1.*ipv4Address"):
        c.decode("/calico/resources/v3/projectcalico.org/nodes/n1", json.dumps(bad))


def test_wep_namespaced_key_and_name() -> None:
    name = c.wep_name("n-1", "web-0")
    assert name == "n--1-k8s-web--0-eth0"
    w = c.WorkloadEndpoint(
        meta=c.new_meta(name, "default"),
        node="n-1",
        interface_name="cali1234567890a",
        ip_networks=(ipaddress.ip_network("10.244.1.5/32"),),
        pod="web-0",
        container_id="abc",
    )
    key = c.key_for(w)
    assert key == f"/calico/resources/v3/projectcalico.org/workloadendpoints/default/{name}"
    assert c.parse_key(key) == (c.WorkloadEndpoint, "default", name)
    w2 = c.decode(key, c.encode(w))
    assert w2 == w


def test_bgp_config_and_peer() -> None:
    cfg = c.BGPConfiguration.from_spec(c.Meta("default"), {})
    assert cfg.as_number == 64512 and cfg.node_to_node_mesh_enabled
    cfg2 = c.BGPConfiguration.from_spec(
        c.Meta("default"),
        {"asNumber": "1.10", "nodeToNodeMeshEnabled": False, "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]},
    )
    assert cfg2.as_number == 65546 and not cfg2.node_to_node_mesh_enabled
    assert json.loads(c.encode(cfg2))["spec"]["serviceClusterIPs"] == [{"cidr": "10.96.0.0/12"}]
    p = c.BGPPeer.from_spec(c.Meta("rr"), {"peerIP": "10.99.0.1:1179", "asNumber": 65000})
    assert p.peer_ip == ipaddress.ip_address("10.99.0.1") and p.peer_port == 1179
    assert json.loads(c.encode(p))["spec"]["peerIP"] == "10.99.0.1:1179"
    with pytest.raises(Invalid):
        c.BGPPeer.from_spec(c.Meta("x"), {"peerSelector": "all()", "asNumber": 1})
    with pytest.raises(Invalid):
        c.BGPPeer.from_spec(c.Meta("x"), {})


def test_decode_all_skips_bad() -> None:
    good = c.encode(c.IPPool.from_spec(c.new_meta("a"), {"cidr": "10.1.0.0/16"}))
    items = [
        (c.IPPOOLS_PREFIX + "a", good),
        (c.IPPOOLS_PREFIX + "b", "{not json"),
        (c.IPPOOLS_PREFIX + "c", json.dumps({"kind": "IPPool", "metadata": {"name": "c"}, "spec": {}})),
    ]
    pools = list(c.decode_all(items, c.IPPool))
    assert [p.name for p in pools] == ["a"]


def test_datastore_helpers() -> None:
    ds = MemoryDatastore()
    p = c.IPPool.from_spec(c.Meta("p1"), {"cidr": "10.5.0.0/16"})
    c.create_resource(ds, p)
    with pytest.raises(AlreadyExists):
        c.create_resource(ds, p)
    got = c.get_resource(ds, c.IPPool, "p1")
    assert got is not None and got[0].meta.uid
    uid = got[0].meta.uid
    from dataclasses import replace

    c.apply_resource(ds, replace(p, nat_outgoing=True))
    got2 = c.get_resource(ds, c.IPPool, "p1")
    assert got2 is not None and got2[0].nat_outgoing and got2[0].meta.uid == uid
    assert [x.name for x in c.list_resources(ds, c.IPPool)] == ["p1"]
    assert c.delete_resource(ds, c.IPPool, "p1")
