"""pycni-bgpd against itself, BIRD 2 and GoBGP, in lab namespaces (no pods: routes and sessions).

One lab for the module (4 nodes): n1 and n2 run pycni-bgpd in a full mesh, n3 runs BIRD and n4
runs gobgpd, both global BGPPeers of our nodes. Each test checks real effects: sessions in the
status socket, routes in the kernels (ours with proto 81, BIRD's with proto bird), GoBGP's RIB.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from pycni.bgp import testbed as tb
from pycni.bgp.status import query
from pycni.lab.lab import Lab

pytestmark = [pytest.mark.privileged, pytest.mark.etcd, pytest.mark.bgp]

BIRD_NET = "10.250.3.0/24"
GOBGP_NET = "10.250.4.0/24"


def dsts(lab: Lab, node: str, proto: str | None = "81") -> set[str]:
    return {r["dst"] for r in tb.kernel_routes(lab, node, proto)}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab("pyt-bgp-i")
    lab.down()
    lab.up(nodes=4, mode="bgp-bare")
    try:
        n1, n2, n3, n4 = lab.nodes
        tb.put_pool(lab)
        for i, n in enumerate((n1, n2)):
            tb.put_node(lab, n.name, n.ip)
            tb.put_affinity(lab, n.name, f"10.244.{i + 1}.0/26")
        tb.put_peer(lab, "bird", peerIP=n3.ip, asNumber=64512)
        tb.put_peer(lab, "gobgp", peerIP=n4.ip, asNumber=64512)
        bc = os.path.join(n3.dir, "bird.conf")
        with open(bc, "w") as f:
            f.write(tb.bird_conf(n3.ip, [(n1.ip, 64512), (n2.ip, 64512)], statics=(BIRD_NET,)))
        lab.spawn(n3, "bird", ["bird", "-f", "-c", bc, "-s", os.path.join(n3.dir, "run", "bird.ctl")])
        gc = os.path.join(n4.dir, "gobgpd.toml")
        with open(gc, "w") as f:
            f.write(tb.gobgp_conf(n4.ip, [(n1.ip, 64512), (n2.ip, 64512)]))
        lab.spawn(
            n4, "gobgpd", ["gobgpd", "-f", gc, "-p", "--api-hosts", "127.0.0.1:50051", "--pprof-disable"]
        )
        for n in (n1, n2):
            lab.spawn(n, "bgpd", tb.bgpd_argv(lab, n))
        tb.wait_for(
            lambda: (
                lab.exec(
                    n4, ["gobgp", "global", "rib", "add", "-a", "ipv4", GOBGP_NET], check=False
                ).returncode
                == 0
            ),
            10,
            "gobgpd API",
            0.2,
        )
        yield lab
    finally:
        lab.down()


def established(lab: Lab, node: str) -> dict[str, str]:
    doc = query(tb.status_socket(lab.node(node))) or {}
    return {p["address"]: p["info"] for p in doc.get("peers", [])}


def test_sessions_and_routes_with_bird_and_gobgp(lab: Lab) -> None:
    n1, n2, n3, n4 = lab.nodes
    want = {n2.ip: "Established", n3.ip: "Established", n4.ip: "Established"}
    tb.wait_for(lambda: established(lab, "n1") == want, 20, "n1 sessions")
    # theirs in ours, with our protocol number, direct next hops (no tunl0)
    tb.wait_for(lambda: dsts(lab, "n1") >= {"10.244.2.0/26", BIRD_NET, GOBGP_NET}, 10, "n1 learned routes")
    r = {x["dst"]: x for x in tb.kernel_routes(lab, "n1", "81")}
    assert (r["10.244.2.0/26"]["gateway"], r["10.244.2.0/26"]["dev"]) == (n2.ip, "eth0")
    assert (r[GOBGP_NET]["gateway"], r[BIRD_NET]["gateway"]) == (n4.ip, n3.ip)
    # ours in BIRD's kernel and GoBGP's RIB
    tb.wait_for(lambda: dsts(lab, "n3", "bird") >= {"10.244.1.0/26", "10.244.2.0/26"}, 10, "bird kernel")
    rib = lab.exec(n4, ["gobgp", "global", "rib", "-a", "ipv4", "-j"]).stdout
    assert "10.244.1.0/26" in rib and "10.244.2.0/26" in rib
    doc = query(tb.status_socket(n1))
    assert doc is not None and doc["ready"] is True and doc["live"] is True
    probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9098/readiness').status)"
    assert lab.exec(n1, [os.sys.executable, "-c", probe]).stdout.strip() == "200"
    out = lab.exec(
        n1,
        [
            os.path.join(os.path.dirname(os.sys.executable), "pycnictl"),
            "node",
            "status",
            "--status-socket",
            tb.status_socket(n1),
        ],
    ).stdout
    assert f"| {n3.ip}   | global            | up    |" in out and "node-to-node mesh" in out


def test_block_added_and_removed_reaches_every_peer(lab: Lab) -> None:
    tb.put_affinity(lab, "n1", "10.244.5.0/26")
    tb.wait_for(
        lambda: "10.244.5.0/26" in dsts(lab, "n2") and "10.244.5.0/26" in dsts(lab, "n3", "bird"),
        10,
        "new block everywhere",
    )
    lab.etcdctl("del", tb.affinity_key("n1", "10.244.5.0/26"))
    tb.wait_for(
        lambda: "10.244.5.0/26" not in dsts(lab, "n2") | dsts(lab, "n3", "bird"), 10, "block withdrawn"
    )


def test_route_deleted_by_hand_is_repaired(lab: Lab) -> None:
    tb.wait_for(lambda: "10.244.2.0/26" in dsts(lab, "n1"), 10, "route")
    lab.exec("n1", ["ip", "route", "del", "10.244.2.0/26"])
    assert "10.244.2.0/26" not in dsts(lab, "n1")
    tb.wait_for(lambda: "10.244.2.0/26" in dsts(lab, "n1"), 12, "repair (resync interval 5 s)")


def test_reload_keeps_unchanged_sessions(lab: Lab) -> None:
    n1 = lab.node("n1")
    before = query(tb.status_socket(n1))
    assert before is not None
    since = {p["address"]: p["since"] for p in before["peers"]}
    tb.put_peer(lab, "nowhere", peerIP="10.99.0.99", asNumber=65099)
    tb.wait_for(lambda: "10.99.0.99" in established(lab, "n1"), 10, "new peer configured")
    time.sleep(1.5)
    after = query(tb.status_socket(n1))
    assert after is not None and after["exabgp_pid"] == before["exabgp_pid"]
    for p in after["peers"]:
        if p["address"] in since:
            assert (p["info"], p["since"]) == ("Established", since[p["address"]]), p
    lab.etcdctl("del", "/calico/resources/v3/projectcalico.org/bgppeers/nowhere")
    tb.wait_for(lambda: "10.99.0.99" not in established(lab, "n1"), 10, "peer removed")


def test_killed_bgpd_restarts_without_losing_routes(lab: Lab) -> None:
    n1 = lab.node("n1")
    tb.wait_for(lambda: established(lab, "n1").get(lab.node("n2").ip) == "Established", 20, "mesh up")
    gaps: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if "10.244.2.0/26" not in dsts(lab, "n1"):
                gaps.append("n1 lost n2's block")
            if "10.244.1.0/26" not in dsts(lab, "n2"):
                gaps.append("n2 lost n1's block")
            if "10.244.1.0/26" not in dsts(lab, "n3", "bird"):
                gaps.append("bird lost n1's block")
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        lab.kill(n1, "bgpd", signal.SIGKILL)
        time.sleep(1.0)
        lab.spawn(n1, "bgpd", tb.bgpd_argv(lab, n1))
        tb.wait_for(lambda: (query(tb.status_socket(n1)) or {}).get("ready"), 20, "bgpd ready again")
        tb.wait_for(lambda: set(established(lab, "n1").values()) == {"Established"}, 20, "all sessions back")
        time.sleep(1.0)
    finally:
        stop.set()
        t.join()
    assert gaps == []


def test_md5_mesh_password(lab: Lab) -> None:
    tb.put_bgp_config(lab, nodeMeshPassword={"value": "s3cr3t pw"})
    n2ip = lab.node("n2").ip

    def md5_up() -> bool:
        conf = open(os.path.join(lab.node("n1").dir, "run", "bgpd", "exabgp.conf")).read()
        return 'md5-password "s3cr3t pw"' in conf and established(lab, "n1").get(n2ip) == "Established"

    tb.wait_for(md5_up, 30, "mesh session with MD5")
    assert "10.244.2.0/26" in dsts(lab, "n1")
    lab.etcdctl("del", "/calico/resources/v3/projectcalico.org/bgpconfigurations/default")
    tb.wait_for(lambda: established(lab, "n1").get(n2ip) == "Established", 30, "mesh session without MD5")


def test_node_leaving_withdraws_its_blocks_everywhere(lab: Lab) -> None:
    n2 = lab.node("n2")
    tb.wait_for(lambda: "10.244.2.0/26" in dsts(lab, "n3", "bird"), 10, "n2 block at bird")
    # kube-controllers' order: the Node and its affinities go; then its daemons stop.
    lab.etcdctl("del", "--prefix", "/calico/ipam/v2/host/n2/")
    lab.etcdctl("del", "/calico/resources/v3/projectcalico.org/nodes/n2")
    tb.wait_for(lambda: "10.244.2.0/26" not in dsts(lab, "n1"), 10, "n1 dropped n2's block")
    tb.wait_for(lambda: "10.244.2.0/26" not in dsts(lab, "n3", "bird"), 10, "bird dropped n2's block")
    lab.kill(n2, "bgpd", signal.SIGTERM)
    doc = query(tb.status_socket(lab.node("n1")))
    assert doc is not None and n2.ip not in {p["address"] for p in doc["peers"]}
    assert "10.244.1.0/26" in dsts(lab, "n3", "bird")  # the rest is untouched
