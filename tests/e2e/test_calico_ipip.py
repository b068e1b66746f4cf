"""Calico IPIP end to end, in the UML lane (this host kernel has no ipip module): pycni-felix on
3 nodes, 2 pods each, wired by pycni.

bgpd is left out (`bgp=False`): felix programs IPIP pool routes by itself, and exabgp needs
minutes to start under UML. Seed 000's picture: `tunl0` up with the node's IPIP tunnel address
/32 and MTU 1480 (1500 - 20),
`<block> via <node ip> dev tunl0 onlink` to every other node's block (proto 80: felix programs
IPIP pool routes, as modern Calico does), blackholes for own blocks, and IPIP packets
(ip proto 4) on the underlay, counted. CrossSubnet on 2 segments: direct inside a segment,
IPIP across, counted on the wire too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pycni.datastore import calico as c
from pycni.lab import Lab

pytestmark = [pytest.mark.uml, pytest.mark.lab, pytest.mark.privileged, pytest.mark.etcd]

NAME = "pyt-cal"


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(NAME)
    lab.down()
    try:
        yield lab
    finally:
        lab.down()


def ipj(lab: Lab, node: str, *argv: str) -> list[dict[str, Any]]:
    cp = lab.exec(node, list(argv), check=False)
    return json.loads(cp.stdout or "[]")


def felix_routes(lab: Lab, node: str) -> dict[str, dict[str, Any]]:
    return {r["dst"]: r for r in ipj(lab, node, "ip", "-j", "route", "show", "proto", "80")}


def node_res(lab: Lab, name: str) -> c.Node:
    key = c.resource_key(c.Node, name)
    v = lab.etcd_get(key)
    assert v is not None, f"no Node {name}"
    n = c.decode(key, v, c.Node)
    assert isinstance(n, c.Node)
    return n


def blocks_of(lab: Lab, node: str) -> list[str]:
    out = []
    for key in lab.etcd_get_prefix(f"/calico/ipam/v2/host/{node}/ipv4/block/"):
        addr, _, plen = key.rsplit("/", 1)[1].rpartition("-")
        out.append(f"{addr}/{plen}")
    return sorted(out)


def pod_ip(lab: Lab, node: str, pod: str) -> str:
    for p in lab.pods:
        if p.node == node and p.name == pod:
            return str(p.ip)
    raise AssertionError(f"no pod {node}/{pod}")


def up_with_pods(lab: Lab, mode: str, segments: int = 1, **opts: Any) -> None:
    lab.up(nodes=3, segments=segments, mode=mode, wait_timeout=240, resync=2, **opts)
    for n in lab.nodes:
        for p in ("a", "b"):
            lab.pod_add(n, p)
    m = lab.ping_matrix()
    assert lab.matrix_ok(m), json.dumps(m, indent=1)


def count_ipip(lab: Lab, node: str, src: str, dst_ip: str, n: int = 20) -> int:
    """Ping `n` times and count IPIP packets (ip proto 4) on the node's eth0."""
    ns = lab.netns_of(node)
    cap = subprocess.Popen(
        ["ip", "netns", "exec", ns, "tcpdump", "-l", "-n", "-i", "eth0", "ip proto 4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(1.0)
        lab.exec(src, ["ping", "-c", str(n), "-i", "0.05", "-q", dst_ip], check=True)
        time.sleep(0.5)
    finally:
        cap.send_signal(signal.SIGINT)
        out, _ = cap.communicate(timeout=10)
    return len([ln for ln in out.splitlines() if " IP " in ln or "ipip" in ln.lower()])


def test_ipip_always(lab: Lab) -> None:
    # felix alone: it programs the IPIP routes (modern Calico); bgpd + exabgp need minutes in UML.
    up_with_pods(lab, "calico-ipip", bgp=False)
    names = [n.name for n in lab.nodes]
    for me in names:
        node = node_res(lab, me)
        assert node.ipip_tunnel_addr is not None
        (t,) = ipj(lab, me, "ip", "-j", "addr", "show", "dev", "tunl0")
        assert t["mtu"] == 1480 and "UP" in t["flags"]
        assert [a["local"] for a in t["addr_info"] if a["family"] == "inet"] == [str(node.ipip_tunnel_addr)]
        routes = felix_routes(lab, me)
        for b in blocks_of(lab, me):
            assert routes[b]["type"] == "blackhole"
        for other in names:
            if other == me:
                continue
            for b in blocks_of(lab, other):
                r = routes[b]
                assert (r["gateway"], r["dev"], "onlink" in r.get("flags", [])) == (
                    lab.node(other).ip,
                    "tunl0",
                    True,
                )
    n = count_ipip(lab, "n1", "n1/a", pod_ip(lab, "n2", "a"))
    print(f"IPIP packets on n1 eth0 for 20 pings to n2: {n}")
    assert n >= 40  # requests out + replies in


def test_ipip_crosssubnet_two_segments(lab: Lab) -> None:
    up_with_pods(lab, "calico-crosssubnet", segments=2, bgp=False)  # felix alone: UML is slow
    assert lab.node("n1").segment == lab.node("n3").segment != lab.node("n2").segment
    r = felix_routes(lab, "n1")
    for b in blocks_of(lab, "n3"):
        assert (r[b]["gateway"], r[b]["dev"]) == (lab.node("n3").ip, "eth0")
    for b in blocks_of(lab, "n2"):
        assert (r[b]["gateway"], r[b]["dev"]) == (lab.node("n2").ip, "tunl0")
    same = count_ipip(lab, "n1", "n1/a", pod_ip(lab, "n3", "a"))
    across = count_ipip(lab, "n1", "n1/a", pod_ip(lab, "n2", "a"))
    print(f"IPIP packets on n1 eth0 for 20 pings: same segment {same}, across {across}")
    assert same == 0 and across >= 40, (same, across)
