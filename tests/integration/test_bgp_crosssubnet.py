"""programClusterRoutes: Enabled with an IPIP CrossSubnet pool: bgpd programs `via <node> dev tunl0 onlink`
across subnets (and direct inside one), as BIRD's krt_tunnel did.

This kernel has no ipip module, so a veth named `tunl0` stands in for the device: the route is
what is checked (device, onlink, next hop), not encapsulation (the UML lane covers IPIP itself).
"""

from __future__ import annotations

import os
import time

import pytest

from pycni.bgp import testbed as tb
from pycni.lab.lab import Lab

pytestmark = [pytest.mark.privileged, pytest.mark.etcd, pytest.mark.bgp]


def test_crosssubnet_routes_via_tunl0_onlink() -> None:
    lab = Lab("pyt-bgp-cs")
    lab.down()
    lab.up(nodes=3, segments=2, mode="bgp-bare")  # n1, n3 on 10.99.0.0/24; n2 on 10.99.1.0/24
    try:
        tb.put_pool(lab, ipip="CrossSubnet")
        tb.put_bgp_config(lab, programClusterRoutes="Enabled")
        for n in lab.nodes:
            lab.exec(n, ["ip", "link", "add", "tunl0", "type", "veth", "peer", "name", "tunl0p"])
            lab.exec(n, ["ip", "link", "set", "tunl0", "up"])
            tb.put_node(lab, n.name, n.ip)
            tb.put_affinity(lab, n.name, f"10.244.{n.index}.0/26")
            lab.spawn(n, "bgpd", tb.bgpd_argv(lab, n))
        n2, n3 = lab.node("n2"), lab.node("n3")

        def routes() -> dict[str, dict[str, object]]:
            return {r["dst"]: r for r in tb.kernel_routes(lab, "n1", "81")}

        tb.wait_for(lambda: {"10.244.2.0/26", "10.244.3.0/26"} <= set(routes()), 30, "n1 routes")
        cross, same = routes()["10.244.2.0/26"], routes()["10.244.3.0/26"]
        assert (cross["gateway"], cross["dev"]) == (n2.ip, "tunl0") and "onlink" in cross["flags"]
        assert (same["gateway"], same["dev"]) == (n3.ip, "eth0") and "onlink" not in same["flags"]
        # stable: the periodic resync (every 5 s) re-reads the kernel and finds nothing to change
        log = os.path.join(lab.node("n1").dir, "log", "bgpd.log")

        def applied() -> int:
            with open(log) as f:
                return sum(1 for line in f if '"routes applied"' in line)

        before = applied()
        time.sleep(6)
        assert applied() == before
    finally:
        lab.down()
