"""flannel modes end to end: 3 nodes x 2 pods wired by the node's plugin, pycni-flanneld on each node.

Per backend one lab (named `pyt-fl`), with the acceptance checks folded in to keep the suite short:
host-gw (seed 001's routes, join/leave, restart without a lost ping, ip-masq removed on clean
stop, repair of a route deleted by hand), vxlan (seed 003's neighbour + FDB + onlink route per
peer, a short TTL renewed and a dead node's lease expiring, a hand-written flannel lease honoured,
the device deleted by hand recreated), vxlan+DirectRouting across 2 segments.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time

import pytest
from lab_helpers import flannel_routes, ipj, up_with_pods, wait_for

from pycni.datastore.flannel import subnet_key
from pycni.flannel import subnet_env
from pycni.lab import Lab
from pycni.lab.modes_flannel import FlannelMode

pytestmark = [pytest.mark.lab, pytest.mark.privileged, pytest.mark.etcd]

NAME = "pyt-fl"


def _net(s: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(s)


def subnet_of(lab: Lab, node: str) -> str:
    sn = subnet_env.previous_subnet(FlannelMode.subnet_file(lab.node(node)))
    assert sn is not None
    return str(sn)


def test_host_gw(lab: Lab) -> None:
    up_with_pods(lab, "flannel-host-gw")
    nodes = {n.name: n for n in lab.nodes}
    subnets = {n: subnet_of(lab, n) for n in nodes}
    # seed 001: each node routes every other node's /24 via that node's address on eth0
    for n in nodes:
        got = {dst: (r.get("gateway"), r["dev"]) for dst, r in flannel_routes(lab, n).items()}
        assert got == {subnets[o]: (nodes[o].ip, "eth0") for o in nodes if o != n}, n
        env = subnet_env.parse(FlannelMode.subnet_file(nodes[n]))
        assert env.mtu == 1500 and env.ipmasq
    # ip-masq: pod traffic leaving the cluster network is masqueraded, pod-to-pod is not
    def counters() -> list[int]:
        out = lab.exec("n1", ["iptables", "-t", "nat", "-L", "FLANNEL-POSTRTG", "-n", "-v", "-x"]).stdout
        return [int(line.split()[0]) for line in out.splitlines()[2:] if line.strip()]

    before = counters()
    pod_n2 = next(p for p in lab.pods if p.node == "n2")
    assert lab.ping("n1/a", str(pod_n2.ip)) and lab.ping("n1/a", nodes["n2"].ip)
    delta = [a - b for a, b in zip(counters(), before, strict=True)]
    assert delta[1] >= 1, delta  # -s <own subnet> -d <cluster> RETURN: pod to pod, not masqueraded
    assert delta[4] >= 1, delta  # -s <cluster> ! -d 224.0.0.0/4 MASQUERADE: pod to the underlay
    # a route deleted by hand comes back
    lab.exec("n1", ["ip", "route", "del", subnets["n2"]])
    wait_for(lambda: subnets["n2"] in flannel_routes(lab, "n1"), 8, "route repaired")
    # restart (clean stop, then start) keeps the subnet and routes; no ping lost meanwhile
    pod_b = next(p for p in lab.pods if p.node == "n2")
    pinger = subprocess.Popen(["ip", "netns", "exec", f"{NAME}-n1-a", "ping", "-q", "-n", "-i", "0.05",
                               "-c", "80", str(pod_b.ip)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        lab.kill("n2", "flanneld")
        saved = lab.exec("n2", ["iptables-save", "-t", "nat"]).stdout
        assert "FLANNEL-POSTRTG" not in saved, "ip-masq chain must go on a clean stop"
        assert subnets["n2"] in flannel_routes(lab, "n1")
        lab.mode.node_start(lab, nodes["n2"])
        lab.mode.wait_ready(lab, nodes["n2"], 20)
        out, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
    assert " 0% packet loss" in out, out
    assert subnet_of(lab, "n2") == subnets["n2"]
    wait_for(lambda: "FLANNEL-POSTRTG" in lab.exec("n2", ["iptables-save", "-t", "nat"]).stdout, 5,
             "masq chain back")
    # join: everyone learns n4; leave: everyone forgets it
    n4 = lab.add_node()
    s4 = subnet_of(lab, n4.name)
    for n in nodes:
        wait_for(lambda n=n: s4 in flannel_routes(lab, n), 5, f"{n} learns n4")  # type: ignore[misc]
    lab.pod_add(n4, "a")
    assert lab.matrix_ok(lab.ping_matrix())
    lab.remove_node(n4.name)
    for n in nodes:
        wait_for(lambda n=n: s4 not in flannel_routes(lab, n), 5, f"{n} forgets n4")  # type: ignore[misc]


def test_vxlan(lab: Lab) -> None:
    up_with_pods(lab, "flannel-vxlan", ttl=4, renew_margin=0.03)  # renew 1.8 s before expiry
    nodes = {n.name: n for n in lab.nodes}
    subnets = {n: subnet_of(lab, n) for n in nodes}
    macs = {n: ipj(lab, n, "ip", "-j", "link", "show", "flannel.1")[0]["address"] for n in nodes}
    for n in nodes:
        dev = ipj(lab, n, "ip", "-j", "-d", "link", "show", "flannel.1")[0]
        info = dev["linkinfo"]["info_data"]
        assert (info["id"], info["port"], info.get("learning", False), dev["mtu"]) == (1, 8472, False, 1450)
        assert subnet_env.parse(FlannelMode.subnet_file(nodes[n])).mtu == 1450
        others = [o for o in nodes if o != n]
        routes = flannel_routes(lab, n)
        assert set(routes) == {subnets[o] for o in others}
        for o in others:
            r = routes[subnets[o]]
            assert (r["gateway"], r["dev"]) == (subnets[o].split("/")[0], "flannel.1")
            assert "onlink" in r["flags"]
        neigh = {e["dst"]: (e["lladdr"], e["state"]) for e in ipj(lab, n, "ip", "-j", "neigh", "show", "dev",
                                                                    "flannel.1")}
        assert neigh == {subnets[o].split("/")[0]: (macs[o], ["PERMANENT"]) for o in others}
        fdb = {e["mac"]: e["dst"] for e in ipj(lab, n, "bridge", "-j", "fdb", "show", "dev", "flannel.1")}
        assert fdb == {macs[o]: nodes[o].ip for o in others}
        # the lease advertises the device's MAC, in flannel's JSON
        v = json.loads(lab.etcd_get(subnet_key(_net(subnets[n]))) or "{}")
        assert v == {"PublicIP": nodes[n].ip, "PublicIPv6": None, "BackendType": "vxlan",
                     "BackendData": {"VNI": 1, "VtepMAC": macs[n]}}
    # a lease written by hand as another flanneld would: honoured like ours
    foreign = subnet_key(_net("10.244.250.0/24"))
    lab.etcd_put(foreign, '{"PublicIP":"10.99.0.99","PublicIPv6":null,"BackendType":"vxlan",'
                          '"BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:99"}}')
    wait_for(lambda: "10.244.250.0/24" in flannel_routes(lab, "n1"), 5, "foreign lease routed")
    assert any(e["mac"] == "0e:00:00:00:00:99" and e["dst"] == "10.99.0.99"
               for e in ipj(lab, "n1", "bridge", "-j", "fdb", "show", "dev", "flannel.1"))
    lab.etcdctl("del", foreign)
    wait_for(lambda: "10.244.250.0/24" not in flannel_routes(lab, "n1"), 5, "foreign lease gone")
    # the device deleted by hand: recreated with the same MAC and entries, pods reach each other
    lab.exec("n1", ["ip", "link", "del", "flannel.1"])
    wait_for(lambda: len(flannel_routes(lab, "n1")) == 2, 8, "device and routes repaired")
    assert ipj(lab, "n1", "ip", "-j", "link", "show", "flannel.1")[0]["address"] == macs["n1"]
    assert lab.matrix_ok(lab.ping_matrix())
    # short TTL: leases live past their TTL by renewal; a dead node's expires and its routes go
    assert all(lab.etcd_get(subnet_key(_net(s))) for s in subnets.values())
    lab.kill("n3", "flanneld", 9)
    wait_for(lambda: lab.etcd_get(subnet_key(_net(subnets["n3"]))) is None, 8, "dead node's lease expiry")
    for n in ("n1", "n2"):
        wait_for(lambda n=n: subnets["n3"] not in flannel_routes(lab, n), 5, f"{n} drops n3")  # type: ignore[misc]
    assert lab.etcd_get(subnet_key(_net(subnets["n1"]))) is not None  # renewed, still alive
    # a revoked lease stops the daemon loudly
    lab.etcdctl("del", subnet_key(_net(subnets["n2"])))
    wait_for(lambda: lab.pid("n2", "flanneld") is None, 5, "n2's flanneld to stop")
    with open(f"{nodes['n2'].dir}/log/flanneld.log") as f:
        assert "Lease has been revoked" in f.read()


def test_vxlan_direct_routing_two_segments(lab: Lab) -> None:
    up_with_pods(lab, "flannel-vxlan-direct", segments=2)
    nodes = {n.name: n for n in lab.nodes}
    subnets = {n: subnet_of(lab, n) for n in nodes}
    for n in nodes:
        routes = flannel_routes(lab, n)
        for o in nodes:
            if o == n:
                continue
            r = routes[subnets[o]]
            if nodes[o].segment == nodes[n].segment:  # same L2: a plain host-gw route
                assert (r["gateway"], r["dev"]) == (nodes[o].ip, "eth0"), (n, o, r)
            else:  # across the router: vxlan
                assert (r["gateway"], r["dev"]) == (subnets[o].split("/")[0], "flannel.1"), (n, o, r)
        neigh = {e["dst"] for e in ipj(lab, n, "ip", "-j", "neigh", "show", "dev", "flannel.1")}
        assert neigh == {subnets[o].split("/")[0] for o in nodes if nodes[o].segment != nodes[n].segment}
    # a crash (SIGKILL) and restart of n1's daemon: device, neighbours, FDB and routes untouched, and a
    # ping over the vxlan path (n2 is across the router) loses nothing. (Not in test_vxlan: with its 4 s
    # TTL the lease could expire while the daemon is down, which is a different, tested, story.)
    before = [ipj(lab, "n1", *c) for c in (("ip", "-j", "route", "show", "proto", "82"),
                                           ("ip", "-j", "neigh", "show", "dev", "flannel.1"),
                                           ("bridge", "-j", "fdb", "show", "dev", "flannel.1"))]
    pod_b = next(p for p in lab.pods if p.node == "n2")
    pinger = subprocess.Popen(["ip", "netns", "exec", f"{NAME}-n1-a", "ping", "-q", "-n", "-i", "0.05",
                               "-c", "60", str(pod_b.ip)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        lab.kill("n1", "flanneld", 9)
        lab.mode.node_start(lab, nodes["n1"])
        lab.mode.wait_ready(lab, nodes["n1"], 20)
        out, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
    assert " 0% packet loss" in out, out
    after = [ipj(lab, "n1", *c) for c in (("ip", "-j", "route", "show", "proto", "82"),
                                          ("ip", "-j", "neigh", "show", "dev", "flannel.1"),
                                          ("bridge", "-j", "fdb", "show", "dev", "flannel.1"))]
    assert after == before and subnet_of(lab, "n1") == subnets["n1"]
