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

import signal
import subprocess
import time
from typing import Any

import pytest
from lab_helpers import blocks_of, felix_routes, ipj, node_res, pod_ip
from lab_helpers import up_with_pods as _up_with_pods

from pycni.lab import Lab

pytestmark = [pytest.mark.uml, pytest.mark.lab, pytest.mark.privileged, pytest.mark.etcd]

NAME = "pyt-cal"


def up_with_pods(lab: Lab, mode: str, segments: int = 1, **opts: Any) -> None:
    # UML is slow: a Python process starts in seconds there.
    _up_with_pods(lab, mode, segments, wait_timeout=240, resync=2, **opts)


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
