"""Calico mode against a real etcd: Calico block IPAM and the WorkloadEndpoint record felix reads.

etcd runs inside the node namespace (on its loopback), so the plugin, in-process or in the agent,
reaches it exactly as a node's CNI reaches its datastore; the test reads keys back with etcdctl in
the same namespace and decodes them with `pycni.datastore.calico` (Calico's v3 layout).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "cni"))
from harness import NODE_IP, Node  # noqa: E402

from pycni.cni.calico import host_veth_name  # noqa: E402
from pycni.cni.rtnl import NetnsScope  # noqa: E402
from pycni.datastore import calico as c  # noqa: E402
from pycni.testing.etcd import EtcdServer  # noqa: E402

pytestmark = [pytest.mark.privileged, pytest.mark.etcd]

POOL = "10.248.0.0/16"


class NodeEtcd(EtcdServer):
    """etcd inside a network namespace; its health check runs from a thread inside it too."""

    def __init__(self, netns: str) -> None:
        super().__init__(wrap=["nsenter", f"--net=/run/netns/{netns}"])
        self.netns_path = f"/run/netns/{netns}"

    def healthy(self) -> bool:
        fd = os.open(self.netns_path, os.O_RDONLY)
        try:
            with NetnsScope(fd):
                return super().healthy()
        finally:
            os.close(fd)


@pytest.fixture(params=["agent", "inproc"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Node, NodeEtcd]]:
    n = Node(tmp_path)
    etcd = NodeEtcd(n.ns)
    try:
        etcd.start()
        pool = c.IPPool.from_spec(
            c.new_meta(c.DEFAULT_POOL_NAME),
            {
                "cidr": POOL,
                "blockSize": 26,
                "ipipMode": "Never",
                "vxlanMode": "Never",
                "natOutgoing": True,
                "nodeSelector": "all()",
            },
        )
        etcd.etcdctl("put", c.key_for(pool), c.encode(pool))
        if request.param == "agent":
            n.start_agent()
        yield n, etcd
    finally:
        n.teardown()
        etcd.cleanup()


def conf(n: Node, etcd: EtcdServer, version: str = "1.0.0") -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "pycni",
        "mode": "calico",
        "nodename": "n1",
        "datastore_type": "etcdv3",
        "etcd_endpoints": etcd.endpoint,
        "mtu": 1450,
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true"},
        "agentSocket": str(n.socket),
        "cacheDir": str(n.tmp / "cache"),
    }


def get(etcd: EtcdServer, key: str) -> str | None:
    out = etcd.etcdctl("get", key, "--print-value-only").strip()
    return out or None


def test_calico_ipam_and_workload_endpoint(env: tuple[Node, NodeEtcd]) -> None:
    n, etcd = env
    cf = conf(n, etcd)
    pa, pb = n.pod("pa"), n.pod("pb")
    ra = n.cni("ADD", cf, cid="cid-a", netns=pa, args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0")
    assert ra.rc == 0, ra.stdout + n.tmp.joinpath("agent.log").read_text()[-2000:] if n.agent else ra.stdout
    rb = n.cni("ADD", cf, cid="cid-b", netns=pb, args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1")
    assert rb.rc == 0, rb.stdout
    ip_a = ra.json["ips"][0]["address"]
    assert ip_a.endswith("/32") and ip_a.startswith("10.248.")

    # the endpoint felix reads, in Calico's key layout and v3 JSON
    key = "/calico/resources/v3/projectcalico.org/workloadendpoints/default/n1-k8s-web--0-eth0"
    raw = get(etcd, key)
    assert raw is not None
    wep = c.decode(key, raw, c.WorkloadEndpoint)
    assert isinstance(wep, c.WorkloadEndpoint)
    assert wep.node == "n1" and wep.pod == "web-0" and wep.endpoint == "eth0" and wep.orchestrator == "k8s"
    assert wep.interface_name == host_veth_name({"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0"}, "")
    assert [str(x) for x in wep.ip_networks] == [ip_a]
    assert wep.mac == ra.json["interfaces"][1]["mac"]
    assert wep.container_id == "cid-a"
    assert json.loads(raw)["spec"]["profiles"] == ["kns.default", "ksa.default.default"]
    # the IPAM handle Calico would use, and the block affine to this node
    handle = get(etcd, "/calico/ipam/v2/handle/k8s-pod-network.cid-a")
    assert handle is not None
    assert etcd.etcdctl("get", "--prefix", "--keys-only", "/calico/ipam/v2/host/n1/ipv4/block/").strip()

    assert n.ping(pa, rb.json["ips"][0]["address"].split("/")[0])
    assert n.ping(pa, NODE_IP)
    assert (
        n.cni(
            "CHECK",
            {**cf, "prevResult": ra.json},
            cid="cid-a",
            netns=pa,
            args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ).rc
        == 0
    )

    # CHECK notices a vanished endpoint record
    etcd.etcdctl("del", key)
    r = n.cni(
        "CHECK",
        {**cf, "prevResult": ra.json},
        cid="cid-a",
        netns=pa,
        args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
    )
    assert r.rc == 1 and "workload endpoint" in r.json["details"]

    for _ in range(2):  # DEL twice: both succeed
        r = n.cni("DEL", cf, cid="cid-b", netns=pb, args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1")
        assert r.rc == 0, r.stdout
    assert (
        get(etcd, "/calico/resources/v3/projectcalico.org/workloadendpoints/default/n1-k8s-web--1-eth0")
        is None
    )
    assert get(etcd, "/calico/ipam/v2/handle/k8s-pod-network.cid-b") is None

    assert n.cni("STATUS", conf(n, etcd, "1.1.0")).rc == 0


def test_failure_after_record_rolls_back_datastore(env: tuple[Node, NodeEtcd]) -> None:
    n, etcd = env
    cf = conf(n, etcd)
    pa = n.pod("pa")
    r = n.cni(
        "ADD",
        cf,
        cid="cid-a",
        netns=pa,
        args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        env={"PYCNI_FAULT": "after_record"},
    )
    assert r.rc == 1 and r.json["msg"] == "injected fault at after_record"
    assert (
        get(etcd, "/calico/resources/v3/projectcalico.org/workloadendpoints/default/n1-k8s-web--0-eth0")
        is None
    )
    assert get(etcd, "/calico/ipam/v2/handle/k8s-pod-network.cid-a") is None
    out = etcd.etcdctl("get", "--prefix", "/calico/ipam/v2/assignment/")
    for line in out.splitlines():
        if line.startswith("{"):
            assert "k8s-pod-network.cid-a" not in line


def test_status_when_datastore_is_down(env: tuple[Node, NodeEtcd]) -> None:
    n, etcd = env
    etcd.kill()
    r = n.cni("STATUS", conf(n, etcd, "1.1.0"))
    assert r.rc == 1 and r.json["code"] == 50, r.stdout
