"""Calico VXLAN and CrossSubnet end to end: pycni-felix on 3 nodes, 2 pods each, wired by pycni.

One lab per mode (named `pyt-cal`), with the acceptance checks folded in to keep the suite short:
- calico-vxlan: seed 004's picture (cali* veths with ee:ee:ee:ee:ee:ee, a pod default via
  169.254.1.1, vxlan.calico VNI 4096 port 4789 with the Node's tunnel address and MAC, per remote
  node one permanent neighbour + one FDB entry + `<block> via <vtep> dev vxlan.calico onlink`,
  blackholes for own blocks, proto 80), the full ping matrix, felix killed and restarted under a
  running ping without a lost packet, a route deleted by hand repaired, a node leaving withdrawing
  its routes everywhere, a node joining;
- calico-crosssubnet (vxlanMode CrossSubnet, 2 segments): direct routes inside a segment,
  vxlan.calico across, proved on the wire by counting VXLAN packets on the underlay.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import time

import pytest
from lab_helpers import blocks_of, felix_routes, ipj, node_res, pod_ip, up_with_pods, wait_for

from pycni.datastore import calico as c
from pycni.lab import Lab
from pycni.lab.modes_calico import CalicoMode

pytestmark = [pytest.mark.lab, pytest.mark.privileged, pytest.mark.etcd]

NAME = "pyt-cal"


def test_vxlan(lab: Lab) -> None:
    up_with_pods(lab, "calico-vxlan")
    names = [n.name for n in lab.nodes]

    # -- seed 004: the devices and routes, on every node
    for me in names:
        node = node_res(lab, me)
        assert node.ipv4_address == ipaddress.ip_interface(f"{lab.node(me).ip}/24")
        assert node.vxlan_tunnel_addr is not None and node.vxlan_tunnel_mac
        (vx,) = ipj(lab, me, "ip", "-d", "-j", "link", "show", "vxlan.calico")
        info = vx["linkinfo"]["info_data"]
        assert (info["id"], info["port"], info["local"]) == (4096, 4789, lab.node(me).ip)
        assert vx["mtu"] == 1450 and vx["address"] == node.vxlan_tunnel_mac
        addrs = [
            a["local"]
            for a in ipj(lab, me, "ip", "-j", "addr", "show", "dev", "vxlan.calico")[0]["addr_info"]
            if a["family"] == "inet"
        ]
        assert addrs == [str(node.vxlan_tunnel_addr)]
        routes = felix_routes(lab, me)
        for b in blocks_of(lab, me):
            assert routes[b]["type"] == "blackhole"
        neighs = {n["dst"]: n for n in ipj(lab, me, "ip", "-j", "neigh", "show", "dev", "vxlan.calico")}
        fdb = json.loads(lab.exec(me, ["bridge", "-j", "fdb", "show", "dev", "vxlan.calico"]).stdout)
        for other in names:
            if other == me:
                continue
            on = node_res(lab, other)
            for b in blocks_of(lab, other):
                r = routes[b]
                assert (r["gateway"], r["dev"], "onlink" in r.get("flags", [])) == (
                    str(on.vxlan_tunnel_addr),
                    "vxlan.calico",
                    True,
                )
            n = neighs[str(on.vxlan_tunnel_addr)]
            assert n["lladdr"] == on.vxlan_tunnel_mac and "PERMANENT" in n["state"]
            assert any(f["mac"] == on.vxlan_tunnel_mac and f.get("dst") == lab.node(other).ip for f in fdb)
        # pods: /32 via cali*, MAC ee:ee..., pod default via 169.254.1.1
        for p in lab.pods:
            if p.node != me:
                continue
            r = routes[str(p.ip)]
            assert r["dev"].startswith("cali") and r["scope"] == "link"
            (link,) = ipj(lab, me, "ip", "-j", "link", "show", r["dev"])
            assert link["address"] == "ee:ee:ee:ee:ee:ee"
    # health: Calico's endpoints on 9099 in each node
    cp = lab.exec(
        "n1", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9099/readiness"]
    )
    assert cp.stdout == "200"
    cp = lab.exec(
        "n1", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9099/liveness"]
    )
    assert cp.stdout == "200"
    pod_routes = ipj(lab, "n1/a", "ip", "-j", "route")
    assert {"dst": "default", "gateway": "169.254.1.1", "dev": "eth0", "flags": []} in pod_routes

    # -- felix killed and restarted on two nodes under a running ping: no packet lost
    src, dst = "n1/a", pod_ip(lab, "n2", "a")
    ns = lab.netns_of(src)
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", ns, "ping", "-i", "0.02", "-w", "6", "-q", dst],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        mode = lab.mode
        assert isinstance(mode, CalicoMode)
        for n in ("n1", "n2"):
            lab.kill(n, "felix", signal.SIGKILL)
        for n in ("n1", "n2"):
            mode.start_felix(lab, lab.node(n))
        for n in ("n1", "n2"):
            mode.wait_ready(lab, lab.node(n), 20)
        out, _ = pinger.communicate(timeout=20)
    finally:
        if pinger.poll() is None:
            pinger.kill()
    stats = next(line for line in out.splitlines() if "packets transmitted" in line)
    sent, recv = int(stats.split()[0]), int(stats.split()[3])
    assert sent > 100 and recv == sent, stats

    # -- a route deleted by hand is repaired (resync=1 s)
    b2 = blocks_of(lab, "n2")[0]
    lab.exec("n1", ["ip", "route", "del", b2])
    wait_for(lambda: b2 in felix_routes(lab, "n1"), 10, "route repaired")

    # -- vxlan.calico deleted by hand: device, neighbours, FDB entries and routes come back
    lab.exec("n2", ["ip", "link", "del", "vxlan.calico"])
    b1 = blocks_of(lab, "n1")[0]
    wait_for(lambda: b1 in felix_routes(lab, "n2"), 10, "vxlan device and its routes recreated")
    wait_for(
        lambda: len(ipj(lab, "n2", "ip", "-j", "neigh", "show", "dev", "vxlan.calico")) == 2, 10, "neighbours"
    )
    m = lab.ping_matrix()
    assert lab.matrix_ok(m), json.dumps(m, indent=1)

    # -- a node leaves: its routes, neighbours and FDB entries go everywhere
    b3 = blocks_of(lab, "n3")
    vtep3 = str(node_res(lab, "n3").vxlan_tunnel_addr)
    lab.remove_node("n3")
    for n in ("n1", "n2"):
        wait_for(lambda n=n: not set(b3) & set(felix_routes(lab, n)), 10, f"{n} withdraws n3's routes")
        assert vtep3 not in {
            x["dst"] for x in ipj(lab, n, "ip", "-j", "neigh", "show", "dev", "vxlan.calico")
        }
    # -- and one joins: reachable from the others
    n4 = lab.add_node()
    lab.pod_add(n4, "a")
    m = lab.ping_matrix()
    assert lab.matrix_ok(m), json.dumps(m, indent=1)

    # -- a bad resource is logged once and skipped; everything else keeps working
    lab.etcd_put(
        c.IPPOOLS_PREFIX + "broken", '{"kind":"IPPool","metadata":{"name":"broken"},"spec":{"cidr":"x"}}'
    )
    lab.etcd_put(c.WEPS_PREFIX + "default/garbage", "{not json")
    log_path = f"{lab.node('n1').dir}/log/felix.log"
    wait_for(lambda: "bad resource skipped" in open(log_path).read(), 10, "bad resource logged")
    m = lab.ping_matrix()
    assert lab.matrix_ok(m), json.dumps(m, indent=1)
    assert "Traceback" not in open(log_path).read()

    # natOutgoing: pool traffic leaving the pools is masqueraded
    nat = lab.exec("n1", ["iptables-save", "-t", "nat"]).stdout
    assert "-A cali-nat-outgoing -s 10.244.0.0/16 -j MASQUERADE" in nat


def _count_vxlan(lab: Lab, node: str, src: str, dst_ip: str) -> int:
    """Ping once per 20 ms for 1 s and count VXLAN (udp 4789) packets on the node's eth0."""
    ns = lab.netns_of(node)
    cap = subprocess.Popen(
        ["ip", "netns", "exec", ns, "tcpdump", "-l", "-n", "-i", "eth0", "-c", "1000", "udp port 4789"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(0.5)
        lab.exec(src, ["ping", "-c", "20", "-i", "0.02", "-q", dst_ip], check=True)
        time.sleep(0.3)
    finally:
        cap.send_signal(signal.SIGINT)
        out, _ = cap.communicate(timeout=5)
    return len([ln for ln in out.splitlines() if "VXLAN" in ln or "4789" in ln])


def test_crosssubnet_vxlan_two_segments(lab: Lab) -> None:
    up_with_pods(lab, "calico-crosssubnet", segments=2, encap="vxlan")
    # n1, n3 on segment 0; n2 on segment 1.
    assert lab.node("n1").segment == lab.node("n3").segment != lab.node("n2").segment
    r = felix_routes(lab, "n1")
    for b in blocks_of(lab, "n3"):
        assert (r[b]["gateway"], r[b]["dev"]) == (lab.node("n3").ip, "eth0")
    vtep2 = str(node_res(lab, "n2").vxlan_tunnel_addr)
    for b in blocks_of(lab, "n2"):
        assert (r[b]["gateway"], r[b]["dev"]) == (vtep2, "vxlan.calico")
    same = _count_vxlan(lab, "n1", "n1/a", pod_ip(lab, "n3", "a"))
    across = _count_vxlan(lab, "n1", "n1/a", pod_ip(lab, "n2", "a"))
    print(f"VXLAN packets on n1 eth0 for 20 pings: same segment {same}, across {across}")
    assert same == 0 and across >= 40, (same, across)
