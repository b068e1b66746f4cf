"""Route reflection: pycni-bgpd as the reflector for its clients, and BIRD as the reflector for ours."""

from __future__ import annotations

import os

import pytest

from pycni.bgp import testbed as tb
from pycni.bgp.status import query
from pycni.lab.lab import Lab

pytestmark = [pytest.mark.privileged, pytest.mark.etcd, pytest.mark.bgp]


def routes(lab: Lab, node: str, proto: str = "81") -> dict[str, str]:
    return {r["dst"]: r.get("gateway", "") for r in tb.kernel_routes(lab, node, proto)}


def peers(lab: Lab, node: str) -> dict[str, str]:
    doc = query(tb.status_socket(lab.node(node))) or {}
    return {p["address"]: p["info"] for p in doc.get("peers", [])}


def test_pycni_reflector_serves_clients_with_one_session_each() -> None:
    lab = Lab("pyt-bgp-r")
    lab.down()
    lab.up(nodes=4, mode="bgp-bare")
    try:
        tb.put_pool(lab)
        for n in lab.nodes:
            tb.put_node(lab, n.name, n.ip, rr_cluster_id="224.0.0.1" if n.name == "n1" else "")
            tb.put_affinity(lab, n.name, f"10.244.{n.index}.0/26")
            lab.spawn(n, "bgpd", tb.bgpd_argv(lab, n))
        ips = {n.name: n.ip for n in lab.nodes}
        for n in lab.nodes[1:]:
            tb.wait_for(lambda n=n: peers(lab, n.name) == {ips["n1"]: "Established"}, 20, f"{n.name} session")
        tb.wait_for(
            lambda: len(peers(lab, "n1")) == 3 and set(peers(lab, "n1").values()) == {"Established"},
            20,
            "reflector sessions",
        )
        for n in lab.nodes:
            want = {f"10.244.{o.index}.0/26": o.ip for o in lab.nodes if o.name != n.name}
            # next hops are the originating nodes, not the reflector
            tb.wait_for(lambda n=n, want=want: routes(lab, n.name) == want, 15, f"{n.name} routes")
        # a client's new block reaches the other clients through the reflector; and leaves again
        tb.put_affinity(lab, "n3", "10.244.30.0/26")
        tb.wait_for(lambda: routes(lab, "n4").get("10.244.30.0/26") == ips["n3"], 10, "reflected new block")
        lab.etcdctl("del", tb.affinity_key("n3", "10.244.30.0/26"))
        tb.wait_for(lambda: "10.244.30.0/26" not in routes(lab, "n4"), 10, "reflected withdrawal")
    finally:
        lab.down()


def test_bird_as_route_reflector_for_our_nodes() -> None:
    lab = Lab("pyt-bgp-b")
    lab.down()
    lab.up(nodes=4, mode="bgp-bare")
    try:
        n1, n2, n3, rr = lab.nodes
        tb.put_pool(lab)
        tb.put_bgp_config(lab, nodeToNodeMeshEnabled=False)
        tb.put_peer(lab, "bird-rr", peerIP=rr.ip, asNumber=64512)
        conf = os.path.join(rr.dir, "bird.conf")
        with open(conf, "w") as f:
            f.write(tb.bird_conf(rr.ip, [(n.ip, 64512) for n in (n1, n2, n3)], rr_cluster=rr.ip))
        lab.spawn(rr, "bird", ["bird", "-f", "-c", conf, "-s", os.path.join(rr.dir, "run", "bird.ctl")])
        for n in (n1, n2, n3):
            tb.put_node(lab, n.name, n.ip)
            tb.put_affinity(lab, n.name, f"10.244.{n.index}.0/26")
            lab.spawn(n, "bgpd", tb.bgpd_argv(lab, n))
        for n in (n1, n2, n3):
            want = {f"10.244.{o.index}.0/26": o.ip for o in (n1, n2, n3) if o is not n}
            tb.wait_for(
                lambda n=n, want=want: routes(lab, n.name) == want, 20, f"{n.name} routes via BIRD RR"
            )
            assert peers(lab, n.name) == {rr.ip: "Established"}
        assert set(routes(lab, rr.name, "bird")) == {f"10.244.{i}.0/26" for i in (1, 2, 3)}
    finally:
        lab.down()
