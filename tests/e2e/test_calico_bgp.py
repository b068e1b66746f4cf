"""Calico BGP mode end to end: pycni-felix + pycni-bgpd on lab nodes, pods wired by the real plugin.

Seed 000 section 3 (BGP mode): no tunl0, each node holds `10.244.x.0/26 via <node> dev eth0` for
every other node's block (ours say `proto 81`, BIRD's said `proto bird`), and pods reach each other
unencapsulated. Seed 003: full mesh, or route reflectors that clients alone peer with.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import pycni.lab.modes_calico  # noqa: F401 - registers the calico modes
from pycni.bgp import testbed as tb
from pycni.lab.lab import Lab

PYCNICTL = os.path.join(os.path.dirname(sys.executable), "pycnictl")
pytestmark = [pytest.mark.lab, pytest.mark.privileged, pytest.mark.etcd, pytest.mark.bgp]


def wait_matrix(lab: Lab, timeout: float = 30.0) -> dict[str, dict[str, bool]]:
    deadline = time.monotonic() + timeout
    while True:
        m = lab.ping_matrix()
        if lab.matrix_ok(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.5)


def bgp_routes(lab: Lab, node: str) -> dict[str, dict[str, str]]:
    return {r["dst"]: r for r in tb.kernel_routes(lab, node, "81")}


def restart_argv(lab: Lab, node: str, proc: str) -> list[str]:
    for e in lab.record["processes"]:
        if e["key"] == f"{node}/{proc}":
            return list(e["argv"])
    raise AssertionError(f"{node}/{proc} not recorded")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab("pyt-bgp")
    lab.down()
    lab.up(nodes=3, mode="calico-bgp")
    try:
        for n in lab.nodes:
            for p in ("a", "b"):
                lab.pod_add(n, p)
        yield lab
    finally:
        lab.down()


def test_pods_reach_each_other_over_bgp_routes_without_encapsulation(lab: Lab) -> None:
    m = wait_matrix(lab)
    assert lab.matrix_ok(m), m
    for n in lab.nodes:
        routes = bgp_routes(lab, n.name)
        others = {o.ip for o in lab.nodes if o.name != n.name}
        assert {r["gateway"] for r in routes.values()} == others
        for dst, r in routes.items():
            assert re.fullmatch(r"10\.244\.\d+\.\d+/26", dst) and r["dev"] == "eth0", r
        links = lab.exec(n, ["ip", "-o", "link", "show"]).stdout
        assert "tunl0" not in links and "vxlan.calico" not in links


def test_bgpd_kill_and_restart_loses_no_ping(lab: Lab) -> None:
    wait_matrix(lab)
    dst = next(p for p in lab.pods if p.node == "n2")
    src_ns = next(p for p in lab.pods if p.node == "n1").netns
    ping = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{src_ns}", "ping", "-n", "-i", "0.2", "-c", "50", "-W", "1", dst.ip],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        argv = restart_argv(lab, "n1", "bgpd")
        lab.kill("n1", "bgpd", signal.SIGKILL)
        time.sleep(1.0)
        lab.spawn("n1", "bgpd", argv)
        out, _ = ping.communicate(timeout=60)
    finally:
        if ping.poll() is None:
            ping.kill()
    assert " 0% packet loss" in out, out
    assert lab.matrix_ok(wait_matrix(lab))


def test_route_deleted_by_hand_is_repaired(lab: Lab) -> None:
    n2ip = lab.node("n2").ip
    dst = next(d for d, r in bgp_routes(lab, "n1").items() if r["gateway"] == n2ip)
    lab.exec("n1", ["ip", "route", "del", dst])
    tb.wait_for(lambda: dst in bgp_routes(lab, "n1"), 15, "repaired route")


def test_node_leaving_withdraws_its_blocks_everywhere(lab: Lab) -> None:
    n3ip = lab.node("n3").ip
    assert any(r["gateway"] == n3ip for r in bgp_routes(lab, "n1").values())
    lab.remove_node("n3")
    for n in ("n1", "n2"):
        tb.wait_for(
            lambda n=n: all(r["gateway"] != n3ip for r in bgp_routes(lab, n).values()),
            15,
            f"{n} dropped n3's blocks",
        )
    assert lab.matrix_ok(wait_matrix(lab))


def test_route_reflector_clients_have_one_session_and_reach_every_pod() -> None:
    lab = Lab("pyt-bgp-rr")
    lab.down()
    lab.up(nodes=4, mode="calico-bgp", route_reflectors=1)
    try:
        for n in lab.nodes:
            lab.pod_add(n, "a")
        m = wait_matrix(lab, 40)
        assert lab.matrix_ok(m), m
        rr_ip = lab.node("n1").ip
        for n in lab.nodes[1:]:
            out = lab.exec(
                n,
                [PYCNICTL, "node", "status", "--nodename", n.name, "--run-dir", f"{n.dir}/run/bgp"],
                check=False,
            ).stdout
            rows = [line for line in out.splitlines() if line.startswith("| 10.")]
            assert len(rows) == 1 and rows[0].startswith(f"| {rr_ip} ") and "Established" in rows[0], out
    finally:
        lab.down()
