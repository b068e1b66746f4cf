"""Peer changes reach exabgp by reload even while a configured peer is unreachable.

exabgp 5.0.15 defers SIGUSR1 while any active neighbour has unsent adj-RIB-out changes; a peer that
never comes up would hold them forever if we announced to it, and no node could ever join again.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from pycni.bgp import testbed as tb
from pycni.bgp.status import query
from pycni.lab.lab import Lab

pytestmark = [pytest.mark.privileged, pytest.mark.etcd, pytest.mark.bgp]


def test_node_joins_while_a_bgppeer_is_unreachable() -> None:
    lab = Lab("pyt-bgp-rl")
    lab.down()
    lab.up(nodes=3, mode="bgp-bare")

    def peers(n: str) -> dict[str, str]:
        doc = query(tb.status_socket(lab.node(n))) or {}
        return {p["address"]: p["info"] for p in doc.get("peers", [])}

    try:
        tb.put_pool(lab)
        n1, n2, n3 = lab.nodes
        for n in (n1, n2):
            tb.put_node(lab, n.name, n.ip)
            tb.put_affinity(lab, n.name, f"10.244.{n.index}.0/26")
            lab.spawn(n, "bgpd", tb.bgpd_argv(lab, n))
        tb.wait_for(lambda: peers("n1").get(n2.ip) == "Established", 30, "mesh")
        pid = (query(tb.status_socket(n1)) or {}).get("exabgp_pid")
        tb.put_peer(lab, "nowhere", peerIP="10.99.0.99", asNumber=65099)
        tb.wait_for(lambda: peers("n1").get("10.99.0.99") == "Active", 30, "unreachable peer tried")
        time.sleep(1.0)
        tb.put_node(lab, n3.name, n3.ip)
        tb.put_affinity(lab, n3.name, "10.244.3.0/26")
        lab.spawn(n3, "bgpd", tb.bgpd_argv(lab, n3))
        tb.wait_for(lambda: peers("n1").get(n3.ip) == "Established", 30, "joined node's session on n1")
        learned = lambda: {r["dst"] for r in tb.kernel_routes(lab, "n1", "81")}  # noqa: E731
        tb.wait_for(lambda: "10.244.3.0/26" in learned(), 10, "route")
        assert (query(tb.status_socket(n1)) or {}).get("exabgp_pid") == pid  # reloaded, not restarted
        assert peers("n1").get(n2.ip) == "Established"

        # exabgp dies under bgpd: it is restarted, everything is re-announced, no route is lost.
        os.kill(pid, signal.SIGKILL)
        tb.wait_for(
            lambda: (query(tb.status_socket(n1)) or {}).get("exabgp_pid") not in (None, pid),
            20,
            "exabgp restarted",
        )
        tb.wait_for(
            lambda: peers("n1").get(n2.ip) == "Established" and peers("n1").get(n3.ip) == "Established",
            30,
            "sessions back",
        )
        assert "10.244.1.0/26" in {r["dst"] for r in tb.kernel_routes(lab, "n2", "81")}
        assert {"10.244.2.0/26", "10.244.3.0/26"} <= learned()
    finally:
        lab.down()
