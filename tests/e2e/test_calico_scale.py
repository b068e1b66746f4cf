"""Calico IPAM under concurrency, end to end: 200 concurrent CNI ADDs across 3 lab nodes sharing etcd.

Each ADD is the installed `pycni` plugin run by the lab exactly as kubelet runs it (environment,
config on stdin, a fresh pod netns), served by each node's felix-hosted agent, allocating from
Calico-style /26 blocks in the lab's etcd with compare-and-swap. ~67 pods per node overflow a
node's first block, so every node also claims a second one while the others race it. Asserted:
200 distinct addresses, each inside a block whose affinity belongs to the pod's node, one IPAM
handle per pod in etcd, and the pod's address really on its eth0 in the kernel.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from pycni.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.privileged, pytest.mark.etcd]

NAME = "pyt-cal-scale"
PODS = 200


def test_200_concurrent_adds_across_3_nodes_get_distinct_addresses(lab: Lab) -> None:
    lab.up(nodes=3, mode="calico-vxlan", wait_timeout=60, resync=5)
    names = [n.name for n in lab.nodes]
    wanted = [(names[i % 3], f"s{i}") for i in range(PODS)]
    with ThreadPoolExecutor(max_workers=24) as ex:
        results = list(ex.map(lambda np: (np, lab.pod_add(*np)), wanted))

    addrs = {np: ipaddress.ip_interface(r["ips"][0]["address"]) for np, r in results}
    assert len({a.ip for a in addrs.values()}) == PODS
    assert all(a.network.prefixlen == 32 for a in addrs.values())

    # The datastore agrees: each address lies in a block affine to its pod's node, one handle a pod.
    affinities = lab.etcd_get_prefix("/calico/ipam/v2/host/")
    owned: dict[str, list[ipaddress.IPv4Network]] = {n: [] for n in names}
    for key in affinities:
        # /calico/ipam/v2/host/<node>/ipv4/block/10.244.0.0-26
        parts = key.split("/")
        net, plen = parts[-1].split("-")
        owned[parts[5]].append(ipaddress.IPv4Network(f"{net}/{plen}"))
    for (node, _pod), a in addrs.items():
        assert any(a.ip in b for b in owned[node]), f"{a} of {node} outside its blocks {owned[node]}"
    assert all(len(b) >= 2 for b in owned.values()), owned  # ~67 pods each: a second /26 per node
    handles = lab.etcd_get_prefix("/calico/ipam/v2/handle/k8s-pod-network.")
    assert len(handles) == PODS

    # And the kernel: a sample of pods on every node carry their address on eth0.
    for node, pod in wanted[:9]:
        ns = lab.record["pods"][f"{node}/{pod}"]["netns"]
        out = subprocess.run(["ip", "-n", ns, "-j", "addr", "show", "dev", "eth0"],
                             capture_output=True, text=True, check=True).stdout
        link = json.loads(out)[0]
        assert f"{addrs[(node, pod)].ip}" in {x["local"] for x in link["addr_info"]}
