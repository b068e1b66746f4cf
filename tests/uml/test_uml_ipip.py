"""The UML lane's own proof: IPIP through `tunl0` works between two node namespaces.

This kernel has no ipip module, so these run only inside `scripts/uml-run` (PYCNI_IN_UML=1; the
conftest skips them elsewhere). The first test builds two "nodes" with pyroute2 directly (a veth
underlay, `tunl0` /32 addresses, routes `via <peer> dev tunl0 onlink`, as Calico's IPIP mode does);
the second does the same between two nodes of a real `Lab`, to show the lab itself runs in UML.
Both assert the ping crossed the tunnel by reading tunl0's packet counters back from the kernel.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import NetlinkError, NetNS, netns

pytestmark = [pytest.mark.uml, pytest.mark.privileged]

RTNH_F_ONLINK = 4
PREFIX = "pyt-uml"


def _tunl0(ns: NetNS) -> int:
    """tunl0's index; every netns gets one once ipip is loaded, so EEXIST on add is success."""
    try:
        ns.link("add", ifname="tunl0", kind="ipip")
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise
    idx = ns.link_lookup(ifname="tunl0")
    assert idx, "no tunl0 after adding an ipip link"
    ns.link("set", index=idx[0], state="up")
    return int(idx[0])


def _stats(ns: NetNS, idx: int) -> tuple[int, int]:
    link = ns.link("get", index=idx)[0]
    st = link.get("IFLA_STATS64") or link.get("IFLA_STATS")
    return int(st["rx_packets"]), int(st["tx_packets"])


def _ping(nsname: str, dst: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{nsname}", "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", dst],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def two_nodes() -> Iterator[tuple[str, str]]:
    a, b = f"{PREFIX}-a", f"{PREFIX}-b"
    for n in (a, b):
        netns.create(n)
    try:
        yield a, b
    finally:
        for n in (a, b):
            try:
                netns.remove(n)
            except OSError:
                pass


def test_ipip_ping_across_tunl0(two_nodes: tuple[str, str]) -> None:
    a, b = two_nodes
    plan = {
        a: ("10.99.0.11", "10.244.1.1", "10.99.0.12", "10.244.2.0/24"),
        b: ("10.99.0.12", "10.244.2.1", "10.99.0.11", "10.244.1.0/24"),
    }
    na, nb = NetNS(a), NetNS(b)
    try:
        na.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": b})
        tunl = {}
        for name, ns in ((a, na), (b, nb)):
            under, tun_ip, peer, peer_pods = plan[name]
            lo = ns.link_lookup(ifname="lo")[0]
            ns.link("set", index=lo, state="up")
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth0, address=under, prefixlen=24)
            ns.link("set", index=eth0, state="up")
            tunl[name] = _tunl0(ns)
            ns.addr("add", index=tunl[name], address=tun_ip, prefixlen=32)
            # Calico's IPIP route: the peer's pod range via the peer's underlay address, onlink
            # because the peer is not on any subnet of tunl0.
            ns.route("add", dst=peer_pods, gateway=peer, oif=tunl[name], flags=RTNH_F_ONLINK)
        before = _stats(nb, tunl[b])
        cp = _ping(a, "10.244.2.1")
        assert cp.returncode == 0, cp.stdout + cp.stderr
        rx, tx = _stats(nb, tunl[b])
        assert rx - before[0] >= 3 and tx - before[1] >= 3, (before, (rx, tx))
    finally:
        na.close()
        nb.close()


def test_lab_runs_in_uml_and_tunnels_between_nodes() -> None:
    from pycni.lab import Lab

    lab = Lab("pyt-umllab")
    lab.down()
    try:
        lab.up(nodes=2)
        n1, n2 = lab.nodes
        for me, peer, tun_ip in ((n1, n2, "10.245.1.1"), (n2, n1, "10.245.2.1")):
            with NetNS(me.netns) as ns:
                idx = _tunl0(ns)
                ns.addr("add", index=idx, address=tun_ip, prefixlen=32)
                peer_range = f"10.245.{peer.index}.0/24"
                ns.route("add", dst=peer_range, gateway=peer.ip, oif=idx, flags=RTNH_F_ONLINK)
        with NetNS(n2.netns) as ns:
            idx = ns.link_lookup(ifname="tunl0")[0]
            before = _stats(ns, idx)
        cp = _ping(n1.netns, "10.245.2.1")
        assert cp.returncode == 0, cp.stdout + cp.stderr
        with NetNS(n2.netns) as ns:
            rx, _ = _stats(ns, idx)
        assert rx - before[0] >= 3
        # etcd in its own netns answers from a node inside the guest too.
        health = lab.exec(n2, ["etcdctl", f"--endpoints={lab.etcd_endpoint}", "endpoint", "health"])
        assert health.returncode == 0
    finally:
        lab.down()
