"""The Calico lab modes' pure parts: what cluster_setup writes, the CNI config, the workload MTU."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pycni.datastore import calico as c
from pycni.lab import modes
from pycni.lab.modes_calico import CalicoMode


@dataclass
class FakeLab:
    opts: dict[str, Any] = field(default_factory=dict)
    etcd: dict[str, str] = field(default_factory=dict)
    etcd_endpoint: str = "http://10.99.0.250:2379"

    def etcd_put(self, key: str, value: str) -> None:
        self.etcd[key] = value


@dataclass
class FakeNode:
    name: str = "n1"
    index: int = 1
    netns: str = "x-n1"
    ip: str = "10.99.0.11"
    segment: int = 0
    dir: str = "/tmp/x/n1"


def setup(mode_name: str, **opts: Any) -> tuple[CalicoMode, FakeLab]:
    mode = modes.get(mode_name)
    assert isinstance(mode, CalicoMode)
    lab = FakeLab(opts=opts)
    mode.cluster_setup(lab)  # type: ignore[arg-type]
    return mode, lab


def test_registered() -> None:
    assert {"calico-bgp", "calico-vxlan", "calico-ipip", "calico-crosssubnet"} <= set(modes.names())


def test_vxlan_setup_and_conf() -> None:
    mode, lab = setup("calico-vxlan")
    pool = c.decode(
        c.IPPOOLS_PREFIX + "default-ipv4-ippool", lab.etcd[c.IPPOOLS_PREFIX + "default-ipv4-ippool"]
    )
    assert isinstance(pool, c.IPPool)
    assert (pool.vxlan_mode, pool.ipip_mode, pool.nat_outgoing, pool.block_size) == (
        "Always",
        "Never",
        True,
        26,
    )
    bgpc = json.loads(lab.etcd[c.BGPCONFIG_PREFIX + "default"])
    assert bgpc["spec"]["nodeToNodeMeshEnabled"] is True and bgpc["spec"]["asNumber"] == 64512
    conf = mode.cni_config(lab, FakeNode())  # type: ignore[arg-type]
    (p,) = conf["plugins"]
    assert p["type"] == "pycni" and p["mode"] == "calico" and p["mtu"] == 1450
    assert p["agentSocket"] == "/tmp/x/n1/run/pycni.sock" and p["nodename"] == "n1"
    assert not mode._uses_bgp(lab)  # type: ignore[arg-type]


def test_route_reflectors_and_crosssubnet_vxlan() -> None:
    mode, lab = setup("calico-crosssubnet", encap="vxlan", route_reflectors=1)
    pool = json.loads(lab.etcd[c.IPPOOLS_PREFIX + "default-ipv4-ippool"])
    assert pool["spec"]["vxlanMode"] == "CrossSubnet" and pool["spec"]["ipipMode"] == "Never"
    assert json.loads(lab.etcd[c.BGPCONFIG_PREFIX + "default"])["spec"]["nodeToNodeMeshEnabled"] is False
    peer = json.loads(lab.etcd[c.BGPPEERS_PREFIX + "peer-with-route-reflectors"])
    assert peer["spec"] == {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}
    assert mode.workload_mtu(lab) == 1450  # type: ignore[arg-type]


def test_bgp_modes_mtu_and_bgp_option() -> None:
    mode = modes.get("calico-bgp")
    assert isinstance(mode, CalicoMode)
    lab = FakeLab()
    assert mode.workload_mtu(lab) == 1500 and mode._uses_bgp(lab)  # type: ignore[arg-type]
    ipip = modes.get("calico-ipip")
    assert isinstance(ipip, CalicoMode)
    assert ipip.workload_mtu(lab) == 1480  # type: ignore[arg-type]
    assert not ipip._uses_bgp(FakeLab(opts={"bgp": "false"}))  # type: ignore[arg-type]
