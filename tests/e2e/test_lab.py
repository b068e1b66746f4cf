"""The lab end to end: 3 nodes in the built-in bridge mode, pods on every node, all pairs ping,
and afterwards nothing of the lab is left (after `down`, and after `kill -9` of a `lab up`).

"Nothing left" is read back from the machine: no netns named like the lab, no recorded process
alive, no lab directory, and the root namespace's links unchanged throughout (the lab never adds
anything there).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pycni.lab import Lab, plan
from pycni.lab.record import proc_alive

pytestmark = [pytest.mark.lab, pytest.mark.privileged, pytest.mark.etcd]

NAME = "pyt-lab"
CTL = [sys.executable, "-m", "pycni_daemons.ctl"]


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out)}


def lab_netns() -> list[str]:
    pat = plan.netns_pattern(NAME)
    try:
        return sorted(ns for ns in os.listdir("/run/netns") if pat.match(ns))
    except FileNotFoundError:
        return []


def assert_gone(pids: list[int]) -> None:
    assert lab_netns() == []
    assert not os.path.exists(plan.lab_dir(NAME))
    alive = [p for p in pids if proc_alive(p)]
    assert alive == [], f"lab processes still alive: {alive}"


def test_three_nodes_bridge_pods_ping_then_down(lab: Lab) -> None:
    before = root_links()
    lab.up(nodes=3, mode="bridge")
    assert [n.name for n in lab.nodes] == ["n1", "n2", "n3"]
    assert [n.ip for n in lab.nodes] == ["10.99.0.11", "10.99.0.12", "10.99.0.13"]
    for n in lab.nodes:
        for pod in ("a", "b"):
            result = lab.pod_add(n, pod)
            assert result["ips"][0]["address"].startswith(f"10.244.{n.index}.")
    assert len(lab.pods) == 6
    # Kernel state: each node has cni0 with its gateway, and a route to every other node's pods.
    for n in lab.nodes:
        addrs = json.loads(lab.exec(n, ["ip", "-j", "addr", "show", "cni0"]).stdout)
        assert addrs[0]["addr_info"][0]["local"] == f"10.244.{n.index}.1"
        routes = "\n".join(lab.routes(n))
        for other in lab.nodes:
            if other.name != n.name:
                assert f"10.244.{other.index}.0/24 via {other.ip} dev eth0" in routes
    # etcd answers from a node, on the contract's address.
    cp = lab.exec("n2", ["etcdctl", f"--endpoints={lab.etcd_endpoint}", "put", "/pyt/k", "v"])
    assert cp.returncode == 0
    assert lab.etcd_get("/pyt/k") == "v"
    matrix = lab.ping_matrix()
    assert len(matrix) == 6 and all(len(row) == 5 for row in matrix.values())
    assert Lab.matrix_ok(matrix), json.dumps(matrix, indent=1)
    # A pod leaves: its netns goes, and the others still reach each other.
    lab.pod_del("n3", "b")
    assert f"{NAME}-n3-b" not in lab_netns()
    assert Lab.matrix_ok(lab.ping_matrix())
    assert root_links() == before, "the lab must not touch the root namespace"
    pids = [int(p["pid"]) for p in lab.processes()]
    assert pids, "etcd should be recorded"
    lab.down()
    assert_gone(pids)
    assert lab.down() == []  # idempotent


def test_down_after_kill_9_of_lab_up(lab: Lab) -> None:
    before = root_links()
    proc = subprocess.Popen(
        [*CTL, "lab", "up", "--name", NAME, "--nodes", "3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    record = os.path.join(plan.lab_dir(NAME), "record.json")
    pids: list[int] = []
    deadline = time.monotonic() + 30
    try:
        # Kill it mid-way: once etcd (a daemon that outlives its parent) is recorded.
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with open(record) as f:
                    rec = json.load(f)
            except (FileNotFoundError, json.JSONDecodeError):
                rec = {}
            if rec.get("processes"):
                pids = [int(p["pid"]) for p in rec["processes"]]
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert pids, "lab up never recorded etcd"
    assert lab_netns(), "the crash should have left namespaces behind"
    assert any(proc_alive(p) for p in pids), "etcd should have survived the crash"
    cp = subprocess.run([*CTL, "lab", "down", "--name", NAME], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    # down ran in another process: etcd was reparented, so wait for the reaper before judging.
    deadline = time.monotonic() + 10
    while any(proc_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_gone(pids)
    assert root_links() == before


def test_cli_up_pods_ping_status_down() -> None:
    def ctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run([*CTL, "lab", *args], capture_output=True, text=True, timeout=120)
        assert not check or cp.returncode == 0, cp.stdout + cp.stderr
        return cp

    ctl("down", "--name", NAME)
    try:
        ctl("up", "--name", NAME, "--nodes", "2", "--segments", "2")
        ctl("pod", "add", "--name", NAME, "n1", "web")
        ctl("pod", "add", "--name", NAME, "n2", "db")
        out = ctl("ping", "--name", NAME).stdout
        assert "2/2 pairs answered" in out
        st = json.loads(ctl("status", "--name", NAME, "--json").stdout)
        assert st["state"] == "up" and [n["ip"] for n in st["nodes"]] == ["10.99.0.11", "10.99.1.12"]
        assert ctl("exec", "--name", NAME, "n2/db", "--", "ping", "-c1", "-W2", "10.244.1.2").returncode == 0
        # n2 is on segment 1: etcd (segment 0) answers through the router.
        ctl(
            "exec",
            "--name",
            NAME,
            "n2",
            "--",
            "etcdctl",
            f"--endpoints={plan.etcd_endpoint()}",
            "endpoint",
            "health",
        )
        bad = ctl("pod", "add", "--name", NAME, "n9", "x", check=False)
        assert bad.returncode == 2 and "no node" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        ctl("down", "--name", NAME)
    assert lab_netns() == []


def test_demo_bridge_mode() -> None:
    cp = subprocess.run(
        [*CTL, "lab", "demo", "--name", NAME, "--modes", "bridge"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "bridge: ok" in cp.stdout
    assert lab_netns() == []


def test_uml_run_passes_status_back_and_fails_loudly(tmp_path: os.PathLike[str]) -> None:
    """scripts/uml-run: the guest command's exit status is ours; timeouts and a missing UML fail."""
    uml_run = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "uml-run")
    env = dict(os.environ, UML_RESULTS=str(tmp_path))
    cp = subprocess.run(
        [uml_run, "sh", "-c", 'test "$PYCNI_IN_UML" = 1 && touch "$UML_RESULTS/seen" && exit 7'],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cp.returncode == 7, cp.stdout + cp.stderr
    assert os.path.exists(os.path.join(tmp_path, "seen"))  # the results dir is written through
    cp = subprocess.run(
        [uml_run, "sleep", "60"], env=dict(env, UML_TIMEOUT="6"), capture_output=True, text=True, timeout=120
    )
    assert cp.returncode == 124 and "timeout" in cp.stderr
    cp = subprocess.run(
        [uml_run, "true"], env=dict(env, UML_BIN="/nonexistent"), capture_output=True, text=True
    )
    assert cp.returncode != 0 and "FAILED" in cp.stderr
