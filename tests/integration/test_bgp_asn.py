"""Per-node AS: a node with its own `spec.bgp.asNumber` peers over eBGP with the rest of the mesh."""

from __future__ import annotations

import os

import pytest

from pycni.bgp import testbed as tb
from pycni.lab.lab import Lab

pytestmark = [pytest.mark.privileged, pytest.mark.etcd, pytest.mark.bgp]


def test_per_node_as_makes_ebgp_sessions_that_carry_routes() -> None:
    lab = Lab("pyt-bgp-as")
    lab.down()
    lab.up(nodes=3, mode="bgp-bare")
    try:
        tb.put_pool(lab)
        for n in lab.nodes:
            tb.put_node(lab, n.name, n.ip, asn=65003 if n.name == "n3" else None)
            tb.put_affinity(lab, n.name, f"10.244.{n.index}.0/26")
            lab.spawn(n, "bgpd", tb.bgpd_argv(lab, n))
        for n in lab.nodes:
            want = {f"10.244.{o.index}.0/26": o.ip for o in lab.nodes if o.name != n.name}
            def routes(n: object = n) -> dict[str, str]:
                return {r["dst"]: r["gateway"] for r in tb.kernel_routes(lab, n, "81")}  # type: ignore[arg-type]

            tb.wait_for(lambda routes=routes, want=want: routes() == want, 30, f"{n.name} routes")
        with open(os.path.join(lab.node("n3").dir, "run", "bgpd", "exabgp.conf")) as f:
            conf = f.read()
        assert "local-as 65003;" in conf
        assert f"neighbor {lab.node('n1').ip} {{ inherit pycni; peer-as 64512;" in conf
    finally:
        if not os.environ.get("PYT_BGP_KEEP"):
            lab.down()
