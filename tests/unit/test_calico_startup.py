"""calico-node start-up against the memory datastore: Node registration, default pool, tunnel IPs."""

from __future__ import annotations

import ipaddress
import random

import pytest

from pycni.calico.startup import (
    StartupConfig,
    ensure_tunnel_addresses,
    parse_pool_encap_env,
    random_vxlan_mac,
    run_startup,
)
from pycni.datastore import calico as c
from pycni.datastore.memory import MemoryDatastore
from pycni.errors import Invalid


def cfg(**env: str) -> StartupConfig:
    base = {"NODENAME": "n1", "IP": "10.99.0.11/24", "CALICO_IPV4POOL_CIDR": "10.244.0.0/16"}
    base.update(env)
    return StartupConfig.from_env(base)


def test_env_parsing() -> None:
    assert parse_pool_encap_env("off", "X") == "Never"
    assert parse_pool_encap_env("", "X") == "Never"
    assert parse_pool_encap_env("Always", "X") == "Always"
    assert parse_pool_encap_env("cross-subnet", "X") == "CrossSubnet"
    with pytest.raises(Invalid):
        parse_pool_encap_env("maybe", "CALICO_IPV4POOL_IPIP")
    with pytest.raises(Invalid, match="prefix"):
        StartupConfig.from_env({"NODENAME": "n1", "IP": "10.99.0.11"})
    with pytest.raises(Invalid):
        StartupConfig.from_env({"NODENAME": "n1", "AS": "x"})
    s = cfg(CALICO_NODE_LABELS="route-reflector=true,zone=a", AS="65001")
    assert s.labels == {"route-reflector": "true", "zone": "a"} and s.as_number == 65001


def test_startup_ipip_registers_and_allocates() -> None:
    ds = MemoryDatastore()
    node = run_startup(ds, cfg(CALICO_IPV4POOL_IPIP="Always"))
    assert node.ipv4_address == ipaddress.ip_interface("10.99.0.11/24")
    pool = c.get_resource(ds, c.IPPool, "default-ipv4-ippool")
    assert pool is not None
    p = pool[0]
    assert p.ipip_mode == "Always" and p.nat_outgoing and p.block_size == 26
    assert node.ipip_tunnel_addr is not None and node.ipip_tunnel_addr in p.cidr
    assert node.vxlan_tunnel_addr is None
    # The address is held by Calico's handle, in a block affine to n1.
    assert ds.get("/calico/ipam/v2/handle/ipip-tunnel-addr-n1") is not None
    affs = [v.key for v in ds.list("/calico/ipam/v2/host/n1/")]
    assert len(affs) == 1
    # Restart: same address, no new allocation.
    again = run_startup(ds, cfg(CALICO_IPV4POOL_IPIP="Always"))
    assert again.ipip_tunnel_addr == node.ipip_tunnel_addr


def test_startup_vxlan_mac_kept_and_second_node() -> None:
    ds = MemoryDatastore()
    n1 = run_startup(ds, cfg(CALICO_IPV4POOL_VXLAN="Always"))
    assert n1.vxlan_tunnel_addr is not None and n1.vxlan_tunnel_mac
    assert n1.ipip_tunnel_addr is None
    n1b = run_startup(ds, cfg(CALICO_IPV4POOL_VXLAN="Always"))
    assert n1b.vxlan_tunnel_mac == n1.vxlan_tunnel_mac
    n2 = run_startup(ds, cfg(NODENAME="n2", IP="10.99.0.12/24", CALICO_IPV4POOL_VXLAN="Always"))
    assert n2.vxlan_tunnel_addr != n1.vxlan_tunnel_addr
    assert len(c.list_resources(ds, c.IPPool)) == 1


def test_existing_pool_not_replaced_and_rr_labels_kept() -> None:
    ds = MemoryDatastore()
    c.create_resource(ds, c.IPPool.from_spec(c.Meta("mine"), {"cidr": "10.50.0.0/16"}))
    node = run_startup(
        ds, cfg(CALICO_ROUTE_REFLECTOR_CLUSTER_ID="224.0.0.1", CALICO_NODE_LABELS="route-reflector=true")
    )
    assert [p.name for p in c.list_resources(ds, c.IPPool)] == ["mine"]
    assert node.rr_cluster_id == "224.0.0.1"
    # A restart without the env keeps the cluster id and labels.
    node2 = run_startup(ds, cfg())
    assert node2.rr_cluster_id == "224.0.0.1"
    assert node2.meta.labels["route-reflector"] == "true"


def test_tunnel_address_released_when_pool_changes() -> None:
    ds = MemoryDatastore()
    node = run_startup(ds, cfg(CALICO_IPV4POOL_IPIP="Always"))
    assert node.ipip_tunnel_addr is not None
    got = c.get_resource(ds, c.IPPool, "default-ipv4-ippool")
    assert got is not None
    from dataclasses import replace

    c.apply_resource(ds, replace(got[0], ipip_mode="Never", vxlan_mode="Always"))
    new = ensure_tunnel_addresses(ds, "n1")
    assert new is not None and new.ipip_tunnel_addr is None and new.vxlan_tunnel_addr is not None
    assert ds.get("/calico/ipam/v2/handle/ipip-tunnel-addr-n1") is None


def test_random_mac_is_local_unicast() -> None:
    mac = random_vxlan_mac(random.Random(1))
    first = int(mac.split(":")[0], 16)
    assert first & 1 == 0 and first & 2 == 2


def test_autodetect_and_underlay() -> None:
    from pycni.calico.startup import autodetect_ip, underlay_for
    from pycni.dataplane.netlink import Link
    from pycni.testing.fake_netlink import FakeNetlink

    nl = FakeNetlink("autodetect")
    nl.link_add(Link(name="cali0000000000a", kind="dummy", up=True))
    nl.addr_add("cali0000000000a", ipaddress.ip_interface("10.244.0.9/32"))
    nl.link_add(Link(name="eth0", kind="dummy", mtu=9000, up=True))
    nl.addr_add("eth0", ipaddress.ip_interface("10.99.0.11/24"))
    assert autodetect_ip(nl) == (ipaddress.IPv4Interface("10.99.0.11/24"), "eth0")
    assert underlay_for(nl, ipaddress.IPv4Address("10.99.0.11")) == ("eth0", 9000)
    ds = MemoryDatastore()
    node = run_startup(ds, StartupConfig.from_env({"NODENAME": "n1", "IP": "autodetect"}), nl)
    assert node.ipv4_address == ipaddress.IPv4Interface("10.99.0.11/24")
