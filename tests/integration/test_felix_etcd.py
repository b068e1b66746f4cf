"""`pycni-felix --startup` (calico-node's start-up) against a real etcd: two nodes racing.

Both processes find no pool and try to create the default one (create-if-absent: one wins), each
registers its Node, claims a block and takes a VXLAN tunnel address from it, under Calico's handle.
Everything is read back as Calico would: the v3 resources through the codec, the IPAM keys raw.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from pycni.datastore import calico as c
from pycni.datastore.etcd import EtcdDatastore
from pycni.testing.etcd import EtcdServer, etcd_fixture

pytestmark = [pytest.mark.etcd]

etcd = pytest.fixture(etcd_fixture, name="etcd")


def test_two_nodes_start_up_concurrently(etcd: EtcdServer) -> None:
    procs = []
    for i in (1, 2):
        env = dict(
            os.environ,
            NODENAME=f"n{i}",
            IP=f"10.99.0.{10 + i}/24",
            CALICO_IPV4POOL_CIDR="10.244.0.0/16",
            CALICO_IPV4POOL_VXLAN="Always",
            AS="64512",
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pycni_daemons.felix",
                    "--startup",
                    "--etcd-endpoints",
                    etcd.endpoint,
                    "--nodename",
                    f"n{i}",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-2000:]
    ds = EtcdDatastore(etcd.endpoint)
    try:
        pools = c.list_resources(ds, c.IPPool)
        assert [(p.name, str(p.cidr), p.vxlan_mode, p.nat_outgoing) for p in pools] == [
            ("default-ipv4-ippool", "10.244.0.0/16", "Always", True)
        ]
        nodes = {n.name: n for n in c.list_resources(ds, c.Node)}
        assert set(nodes) == {"n1", "n2"}
        for i, name in ((1, "n1"), (2, "n2")):
            n = nodes[name]
            assert n.ipv4_address == ipaddress.IPv4Interface(f"10.99.0.{10 + i}/24") and n.as_number == 64512
            assert n.vxlan_tunnel_addr is not None and n.vxlan_tunnel_addr in pools[0].cidr
            assert n.vxlan_tunnel_mac and n.ipip_tunnel_addr is None
            handle = ds.get(f"/calico/ipam/v2/handle/vxlan-tunnel-addr-{name}")
            assert handle is not None and sum(json.loads(handle.value)["block"].values()) == 1
            affs = ds.list(f"/calico/ipam/v2/host/{name}/ipv4/block/")
            assert len(affs) == 1 and json.loads(affs[0].value)["state"] == "confirmed"
        assert nodes["n1"].vxlan_tunnel_addr != nodes["n2"].vxlan_tunnel_addr
        assert nodes["n1"].vxlan_tunnel_mac != nodes["n2"].vxlan_tunnel_mac
        # A restart keeps everything (no new block, same address and MAC).
        env = dict(os.environ, NODENAME="n1", IP="10.99.0.11/24", CALICO_IPV4POOL_VXLAN="Always")
        cp = subprocess.run(
            [
                sys.executable,
                "-m",
                "pycni_daemons.felix",
                "--startup",
                "--etcd-endpoints",
                etcd.endpoint,
                "--nodename",
                "n1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cp.returncode == 0, cp.stderr[-2000:]
        got = c.get_resource(ds, c.Node, "n1")
        assert got is not None
        again = got[0]
        assert (again.vxlan_tunnel_addr, again.vxlan_tunnel_mac) == (
            nodes["n1"].vxlan_tunnel_addr,
            nodes["n1"].vxlan_tunnel_mac,
        )
        assert len(ds.list("/calico/ipam/v2/host/n1/ipv4/block/")) == 1
    finally:
        ds.close()


def test_bad_configuration_exits_2_naming_the_field(etcd: EtcdServer) -> None:
    env = dict(os.environ, NODENAME="n1", IP="10.99.0.11/24", CALICO_IPV4POOL_IPIP="sometimes")
    cp = subprocess.run(
        [sys.executable, "-m", "pycni_daemons.felix", "--startup", "--etcd-endpoints", etcd.endpoint],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cp.returncode == 2
    assert "CALICO_IPV4POOL_IPIP" in cp.stderr and "Traceback" not in cp.stderr
