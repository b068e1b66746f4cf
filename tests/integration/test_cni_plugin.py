"""The installed CNI plugin, driven as kubelet drives it, in real namespaces (root).

Every verb runs twice: through the resident agent (`python -m pycni.cni.server` in the node
namespace) and in-process (no agent listening); both must behave identically. Assertions read the
kernel back with `ip -j`, and the host-local directory and result cache from disk.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "cni"))
from harness import NODE_IP, Node, ip_json, netns_del  # noqa: E402

from pycni.cni.calico import host_veth_name  # noqa: E402
from pycni.cni.veth import bridge_port_name  # noqa: E402

pytestmark = pytest.mark.privileged

STEPS = ("after_ipam", "after_veth", "after_addresses", "after_routes", "after_host", "after_record")
K8S = "K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"


@pytest.fixture(params=["agent", "inproc"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    try:
        if request.param == "agent":
            n.start_agent()
        yield n
    finally:
        n.teardown()


def calico_conf(n: Node, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    conf = {
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "pycni",
        "mode": "calico",
        "nodename": "n1",
        "datastore_type": "none",
        "mtu": 1450,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.244.7.0/24"}]],
            "dataDir": str(n.tmp / "ipam"),
        },
        "agentSocket": str(n.socket),
        "cacheDir": str(n.tmp / "cache"),
    }
    conf.update(extra)
    return conf


def flannel_conf(n: Node, version: str = "0.3.1", ipmasq: bool = True) -> dict[str, Any]:
    env = n.tmp / "subnet.env"
    env.write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n"
        f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n"
    )
    return {
        "cniVersion": version,
        "name": "cbr0",
        "type": "pycni",
        "mode": "flannel",
        "subnetFile": str(env),
        "dataDir": str(n.tmp / "flannel"),
        "agentSocket": str(n.socket),
        "delegate": {"hairpinMode": True, "isDefaultGateway": True},
    }


def ipam_files(d: Path) -> list[str]:
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        try:
            ipaddress.ip_address(p.name)
        except ValueError:
            continue
        out.append(p.name)
    return sorted(out)


def pod_addrs(ns: str) -> list[str]:
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in ip_json(ns, "addr", "show", "eth0")
        for a in link.get("addr_info", [])
        if a["family"] == "inet"
    ]


# ----------------------------------------------------------------------------------- calico


def test_calico_add_check_del(node: Node) -> None:
    conf = calico_conf(node)
    pa, pb = node.pod("pa"), node.pod("pb")
    ra = node.cni("ADD", conf, cid="ca", netns=pa, args=K8S.format(pod="web-0"))
    assert ra.rc == 0, ra.stdout
    res = ra.json
    host = host_veth_name({"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0"}, "ca")
    assert res["cniVersion"] == "1.0.0"
    assert res["interfaces"][0] == {"name": host, "mac": "ee:ee:ee:ee:ee:ee"}
    assert res["interfaces"][1]["name"] == "eth0" and res["interfaces"][1]["sandbox"] == f"/run/netns/{pa}"
    ip_a = res["ips"][0]["address"]
    assert ip_a.endswith("/32") and ip_a.startswith("10.244.7.")

    # kernel: pod side
    assert pod_addrs(pa) == [ip_a]
    proutes = {(r["dst"], r.get("gateway"), r.get("scope")) for r in ip_json(pa, "route")}
    assert ("169.254.1.1", None, "link") in proutes
    assert ("default", "169.254.1.1", None) in proutes
    pl = ip_json(pa, "link", "show", "eth0")[0]
    assert pl["address"] == res["interfaces"][1]["mac"] and pl["mtu"] == 1450
    # kernel: host side
    hl = node.links()[host]
    assert hl["address"] == "ee:ee:ee:ee:ee:ee" and "UP" in hl["flags"]
    # one TX and one RX queue on each end, as Calico (num_queues, default 1)
    hd = ip_json(node.ns, "-d", "link", "show", host)[0]
    assert (hd["num_tx_queues"], hd["num_rx_queues"]) == (1, 1)
    pd = ip_json(pa, "-d", "link", "show", "eth0")[0]
    assert (pd["num_tx_queues"], pd["num_rx_queues"]) == (1, 1)
    hr = [r for r in node.routes() if r["dst"] == ip_a.split("/")[0]]
    assert (
        hr
        and hr[0]["dev"] == host
        and hr[0]["protocol"] in ("80", "pycni-felix")
        and hr[0]["scope"] == "link"
    )
    for key, want in (("conf/{}/proxy_arp", "1"), ("neigh/{}/proxy_delay", "0"), ("conf/{}/forwarding", "1")):
        path = "/proc/sys/net/ipv4/" + key.format(host)
        got = node_sysctl(node, path)
        assert got == want, path
    # IPAM + cache on disk
    assert ipam_files(node.tmp / "ipam" / "k8s-pod-network") == [ip_a.split("/")[0]]
    assert (node.tmp / "ipam" / "k8s-pod-network" / ip_a.split("/")[0]).read_bytes() == b"ca\r\neth0"
    assert wait_exists(node.tmp / "cache" / "k8s-pod-network-ca-eth0")

    rb = node.cni("ADD", conf, cid="cb", netns=pb, args=K8S.format(pod="web-1"))
    assert rb.rc == 0, rb.stdout
    ip_b = rb.json["ips"][0]["address"].split("/")[0]
    assert node.ping(pa, ip_b), "pod to pod"
    assert node.ping(pa, NODE_IP), "pod to node"
    assert node.ping(node.ns, ip_a.split("/")[0]), "node to pod"

    rc = node.cni("CHECK", {**conf, "prevResult": res}, cid="ca", netns=pa, args=K8S.format(pod="web-0"))
    assert rc.rc == 0, rc.stdout

    rd = node.cni("DEL", conf, cid="ca", netns=pa, args=K8S.format(pod="web-0"))
    assert rd.rc == 0 and rd.stdout == "", rd.stdout
    node.wait_reaped(host)
    assert not [r for r in node.routes() if r["dst"] == ip_a.split("/")[0]]
    assert ipam_files(node.tmp / "ipam" / "k8s-pod-network") == [ip_b]
    assert not (node.tmp / "cache" / "k8s-pod-network-ca-eth0").exists()
    # DEL again: success, nothing to do
    assert node.cni("DEL", conf, cid="ca", netns=pa, args=K8S.format(pod="web-0")).rc == 0


def _possible_cpus() -> int:
    n = 0
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def test_calico_num_queues(node: Node) -> None:
    conf = calico_conf(node, num_queues=2)
    pa = node.pod("pa")
    r = node.cni("ADD", conf, cid="cq", netns=pa, args=K8S.format(pod="web-q"))
    assert r.rc == 0, r.stdout
    host = r.json["interfaces"][0]["name"]
    hd = ip_json(node.ns, "-d", "link", "show", host)[0]
    assert (hd["num_tx_queues"], hd["num_rx_queues"]) == (2, 2)
    pd = ip_json(pa, "-d", "link", "show", "eth0")[0]
    assert (pd["num_tx_queues"], pd["num_rx_queues"]) == (2, 2)
    bad = node.cni("ADD", calico_conf(node, num_queues="many"), cid="cq2", netns=node.pod("pb"),
                   args=K8S.format(pod="web-q2"))
    assert bad.rc != 0 and bad.json["code"] == 7, bad.stdout
    assert node.cni("DEL", conf, cid="cq", netns=pa, args=K8S.format(pod="web-q")).rc == 0


def node_sysctl(node: Node, path: str) -> str:
    import subprocess

    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{node.ns}", "cat", path], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_check_reports_what_differs(node: Node) -> None:
    conf = calico_conf(node)
    pa = node.pod("pa")
    res = node.cni("ADD", conf, cid="ca", netns=pa, args=K8S.format(pod="web-0")).json
    ip_a = res["ips"][0]["address"]
    import subprocess

    subprocess.run(["ip", "-n", pa, "addr", "del", ip_a, "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", node.ns, "route", "del", ip_a], check=True)
    r = node.cni("CHECK", {**conf, "prevResult": res}, cid="ca", netns=pa, args=K8S.format(pod="web-0"))
    assert r.rc == 1
    err = r.json
    assert err["code"] == 999 and "difference" in err["msg"]
    assert f"address {ip_a} is missing" in err["details"]
    assert "host route" in err["details"]
    # CHECK without any ADD record: unknown container
    r = node.cni("CHECK", conf, cid="nobody", netns=pa, args=K8S.format(pod="x"))
    assert r.rc == 1 and r.json["code"] == 3


def test_add_into_existing_ifname_fails_cleanly(node: Node) -> None:
    conf = calico_conf(node)
    pa = node.pod("pa")
    import subprocess

    subprocess.run(["ip", "-n", pa, "link", "add", "eth0", "type", "veth", "peer", "name", "x0"], check=True)
    r = node.cni("ADD", conf, cid="ca", netns=pa, args=K8S.format(pod="web-0"))
    assert r.rc == 1 and "Traceback" not in r.stdout + r.stderr
    assert r.json["code"] == 999 and "already exists" in r.json["msg"]
    assert ipam_files(node.tmp / "ipam" / "k8s-pod-network") == []
    assert not [n for n in node.links() if n.startswith("cali")]


def test_del_after_netns_is_gone_and_without_netns(node: Node) -> None:
    conf = calico_conf(node)
    pa = node.pod("pa")
    assert node.cni("ADD", conf, cid="ca", netns=pa, args=K8S.format(pod="web-0")).rc == 0
    netns_del(pa)
    r = node.cni("DEL", conf, cid="ca", netns=pa, args=K8S.format(pod="web-0"))
    assert r.rc == 0, r.stdout
    assert ipam_files(node.tmp / "ipam" / "k8s-pod-network") == []
    # no CNI_NETNS at all (allowed for DEL), nothing cached: still success
    r = node.cni("DEL", conf, cid="ca", netns=None, args=K8S.format(pod="web-0"))
    assert r.rc == 0, r.stdout


@pytest.mark.parametrize("step", STEPS)
def test_failure_at_each_step_leaves_nothing(node: Node, step: str) -> None:
    conf = calico_conf(node)
    pa = node.pod("pa")
    r = node.cni("ADD", conf, cid="ca", netns=pa, args=K8S.format(pod="web-0"), env={"PYCNI_FAULT": step})
    assert r.rc == 1 and r.json["msg"] == f"injected fault at {step}"
    host = host_veth_name({"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0"}, "ca")
    node.wait_reaped(host)
    assert ipam_files(node.tmp / "ipam" / "k8s-pod-network") == []
    assert not [r for r in node.routes() if r["dst"].startswith("10.244.")]
    assert ip_json(pa, "link", "show") and "eth0" not in {x["ifname"] for x in ip_json(pa, "link")}
    assert not (node.tmp / "cache" / "k8s-pod-network-ca-eth0").exists()
    # and the same pod can be added afterwards
    assert node.cni("ADD", conf, cid="ca", netns=pa, args=K8S.format(pod="web-0")).rc == 0


def test_result_versions(node: Node) -> None:
    for i, v in enumerate(("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")):
        ns = node.pod(f"v{i}")
        conf = calico_conf(node, version=v)
        r = node.cni("ADD", conf, cid=f"v{i}", netns=ns, args=K8S.format(pod=f"v{i}"))
        assert r.rc == 0, r.stdout
        res = r.json
        assert res["cniVersion"] == v
        if v.startswith("0."):
            assert res["ips"][0]["version"] == "4"
        else:
            assert "version" not in res["ips"][0]


def test_gc_releases_everything_not_valid(node: Node) -> None:
    conf = calico_conf(node, version="1.1.0")
    pods = [node.pod(f"g{i}") for i in range(3)]
    for i, ns in enumerate(pods):
        assert node.cni("ADD", conf, cid=f"g{i}", netns=ns, args=K8S.format(pod=f"g{i}")).rc == 0
    # a leaked allocation nobody knows about
    (node.tmp / "ipam" / "k8s-pod-network" / "10.244.7.200").write_bytes(b"ghost\r\neth0")
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "g1", "ifname": "eth0"}]}
    r = node.cni("GC", gc)
    assert r.rc == 0, r.stdout
    names = {host_veth_name({"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": f"g{i}"}, "") for i in range(3)}
    links = node.links()
    assert [n for n in names if n in links] == [
        host_veth_name({"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "g1"}, "")
    ]
    assert len(ipam_files(node.tmp / "ipam" / "k8s-pod-network")) == 1
    assert sorted(os.listdir(node.tmp / "cache")) == ["k8s-pod-network-g1-eth0"]
    # GC needs 1.1.0
    r = node.cni("GC", calico_conf(node, version="1.0.0"))
    assert r.rc == 1 and r.json["code"] == 1


def test_status(node: Node) -> None:
    conf = calico_conf(node, version="1.1.0")
    assert node.cni("STATUS", conf).rc == 0
    small = calico_conf(
        node,
        version="1.1.0",
        ipam={
            "type": "host-local",
            "dataDir": str(node.tmp / "small"),
            "ranges": [[{"subnet": "10.244.9.0/30"}]],
        },
    )
    ns = node.pod("s0")
    assert node.cni("ADD", small, cid="s0", netns=ns, args=K8S.format(pod="s0")).rc == 0
    r = node.cni("STATUS", small)
    assert r.rc == 1 and r.json["code"] == 50 and "exhausted" in r.json["msg"]
    fconf = flannel_conf(node, version="1.1.0")
    assert node.cni("STATUS", fconf).rc == 0
    os.unlink(fconf["subnetFile"])
    r = node.cni("STATUS", fconf)
    assert r.rc == 1 and r.json["code"] == 50


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "case",
    [
        "malformed",
        "unknown_version",
        "missing_env",
        "bad_netns",
        "own_netns",
        "no_command",
        "bad_mode",
        "missing_version",
    ],
)
def test_errors(node: Node, case: str) -> None:
    conf = calico_conf(node)
    pa = node.pod("pa")
    if case == "malformed":
        r = node.cni("ADD", b'{"cniVersion": "1.0.0", nope', cid="c", netns=pa)
        code = 6
    elif case == "unknown_version":
        r = node.cni("ADD", {**conf, "cniVersion": "9.9.9"}, cid="c", netns=pa)
        code = 1
    elif case == "missing_env":
        r = node.cni("ADD", conf, cid="c", netns=pa, drop=("CNI_CONTAINERID",))
        code = 4
        assert "CNI_CONTAINERID" in r.json["msg"]
    elif case == "bad_netns":
        r = node.cni("ADD", conf, cid="c", netns="/run/netns/pyt-cni-does-not-exist")
        code = 8
    elif case == "own_netns":
        r = node.cni("ADD", conf, cid="c", netns=f"/run/netns/{node.ns}")
        code = 8
    elif case == "no_command":
        r = node.cni("ADD", conf, cid="c", netns=pa, drop=("CNI_COMMAND",))
        code = 4
    elif case == "bad_mode":
        r = node.cni("ADD", {**conf, "mode": "weave"}, cid="c", netns=pa)
        code = 7
    else:
        r = node.cni("ADD", {k: v for k, v in conf.items() if k != "cniVersion"}, cid="c", netns=pa)
        code = 7
    assert r.rc == 1, r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    err = r.json
    assert err["code"] == code and err["msg"], err
    assert set(err) <= {"cniVersion", "code", "msg", "details"}
    assert ipam_files(node.tmp / "ipam" / "k8s-pod-network") == []


def test_version(node: Node) -> None:
    r = node.cni("VERSION", b"", cid="", netns=None, ifname="")
    assert r.rc == 0
    assert json.loads(r.stdout) == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


def test_conflist_on_stdin(node: Node) -> None:
    plug = calico_conf(node)
    conflist = {
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [{k: v for k, v in plug.items() if k not in ("cniVersion", "name")}],
    }
    pa = node.pod("pa")
    r = node.cni("ADD", conflist, cid="ca", netns=pa, args=K8S.format(pod="web-0"))
    assert r.rc == 0, r.stdout


# ----------------------------------------------------------------------------------- flannel


def test_flannel_add_check_del(node: Node) -> None:
    conf = flannel_conf(node)
    pa, pb = node.pod("pa"), node.pod("pb")
    ra = node.cni("ADD", conf, cid="fa", netns=pa, args=K8S.format(pod="web-0"))
    assert ra.rc == 0, ra.stdout
    res = ra.json
    assert res["cniVersion"] == "0.3.1"
    assert [i["name"] for i in res["interfaces"]] == ["cni0", bridge_port_name("fa", "eth0"), "eth0"]
    assert res["ips"] == [
        {"version": "4", "address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 2}
    ]
    assert res["routes"] == [
        {"dst": "10.244.0.0/16", "gw": "10.244.1.1"},
        {"dst": "0.0.0.0/0", "gw": "10.244.1.1"},
    ]
    # seed 001's `route -n` in the pod
    routes = {(r["dst"], r.get("gateway")) for r in ip_json(pa, "route")}
    assert routes == {("default", "10.244.1.1"), ("10.244.0.0/16", "10.244.1.1"), ("10.244.1.0/24", None)}
    assert pod_addrs(pa) == ["10.244.1.2/24"]
    assert ip_json(pa, "link", "show", "eth0")[0]["mtu"] == 1450
    links = node.links()
    assert "10.244.1.1" in [a["local"] for a in ip_json(node.ns, "addr", "show", "cni0")[0]["addr_info"]]
    port = bridge_port_name("fa", "eth0")
    assert links[port]["master"] == "cni0"
    detail = ip_json(node.ns, "-d", "link", "show", port)[0]
    assert detail["linkinfo"]["info_slave_data"]["hairpin"] is True
    # queue counts left to the kernel (one per possible CPU), as the reference bridge plugin does
    ncpu = _possible_cpus()
    assert (detail["num_tx_queues"], detail["num_rx_queues"]) == (ncpu, ncpu)

    rb = node.cni("ADD", conf, cid="fb", netns=pb, args=K8S.format(pod="web-1"))
    assert rb.rc == 0
    assert node.ping(pa, "10.244.1.3") and node.ping(pa, NODE_IP) and node.ping(node.ns, "10.244.1.2")

    assert node.cni("CHECK", {**conf, "prevResult": res}, cid="fa", netns=pa).rc == 0
    assert node.cni("DEL", conf, cid="fa", netns=pa).rc == 0
    assert node.cni("DEL", conf, cid="fa", netns=pa).rc == 0
    node.wait_reaped(port)
    assert ipam_files(node.tmp / "flannel" / "networks" / "cbr0") == ["10.244.1.3"]


def test_flannel_ipmasq_when_flanneld_does_not(node: Node) -> None:
    conf = flannel_conf(node, ipmasq=False)
    pa = node.pod("pa")
    assert node.cni("ADD", conf, cid="fa", netns=pa).rc == 0
    import subprocess

    def nat() -> str:
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{node.ns}", "iptables-save", "-t", "nat"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    saved = nat()
    assert "-A POSTROUTING -s 10.244.1.2/32" in saved and "MASQUERADE" in saved
    assert node.cni("DEL", conf, cid="fa", netns=pa).rc == 0
    assert "10.244.1.2" not in nat()


def test_flannel_without_subnet_env_is_try_again_later(node: Node) -> None:
    conf = flannel_conf(node)
    os.unlink(conf["subnetFile"])
    pa = node.pod("pa")
    r = node.cni("ADD", conf, cid="fa", netns=pa)
    assert r.rc == 1 and r.json["code"] == 11


def test_concurrent_adds_and_dels(node: Node) -> None:
    """20 ADDs at once (the agent serves them on several threads): all succeed, no address twice;
    then 20 DELs at once leave nothing behind."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    conf = flannel_conf(node)
    pods = [node.pod(f"c{i}") for i in range(20)]
    with ThreadPoolExecutor(20) as ex:
        results = list(ex.map(lambda i: node.cni("ADD", conf, cid=f"c{i}", netns=pods[i]), range(20)))
    assert all(r.rc == 0 for r in results), [r.stdout for r in results if r.rc]
    ips = [r.json["ips"][0]["address"] for r in results]
    assert len(set(ips)) == 20
    with ThreadPoolExecutor(20) as ex:
        dels = list(ex.map(lambda i: node.cni("DEL", conf, cid=f"c{i}", netns=pods[i]), range(20)))
    assert all(r.rc == 0 for r in dels)
    for i in range(20):
        node.wait_reaped(bridge_port_name(f"c{i}", "eth0"))
    assert ipam_files(node.tmp / "flannel" / "networks" / "cbr0") == []
    assert (
        subprocess.run(
            ["ip", "-n", node.ns, "link", "show", "master", "cni0"], capture_output=True, text=True
        ).stdout.strip()
        == ""
    )


def test_restarted_agent_destroys_pairs_a_crash_left_behind(tmp_path: Path) -> None:
    import subprocess

    node = Node(tmp_path)
    try:
        node.start_agent()
        conf = calico_conf(node)
        pa = node.pod("pa")
        assert node.cni("ADD", conf, cid="ca", netns=pa, args=K8S.format(pod="web-0")).rc == 0
        host = host_veth_name({"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0"}, "ca")
        node.stop_agent()
        # what a DEL leaves when the agent dies before its reaper ran: the pair down and marked
        subprocess.run(
            ["ip", "-n", node.ns, "link", "set", host, "down", "alias", "pycni:deleted"], check=True
        )
        node.start_agent()
        node.wait_reaped(host)
    finally:
        node.teardown()


def wait_exists(path: Path, timeout: float = 5.0) -> bool:
    """The agent writes the ADD result cache just after its reply (docs/cni.md)."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return path.exists()


def test_del_uses_prev_result_when_the_cache_is_gone(node: Node) -> None:
    conf = calico_conf(node)
    pa = node.pod("pa")
    res = node.cni("ADD", conf, cid="ca", netns=pa, args=K8S.format(pod="web-0")).json
    # The agent writes the cache just after its reply (docs/cni.md): lose it once it is there.
    cache = node.tmp / "cache" / "k8s-pod-network-ca-eth0"
    assert wait_exists(cache)
    os.unlink(cache)
    r = node.cni("DEL", {**conf, "prevResult": res}, cid="ca", netns=pa, args=K8S.format(pod="web-0"))
    assert r.rc == 0, r.stdout
    assert ipam_files(node.tmp / "ipam" / "k8s-pod-network") == []
    node.wait_reaped(res["interfaces"][0]["name"])
    assert not [x for x in node.routes() if x["dst"] == res["ips"][0]["address"].split("/")[0]]


def test_second_interface_of_a_pod(node: Node) -> None:
    conf = calico_conf(node)
    pa = node.pod("pa")
    args = K8S.format(pod="web-0")
    r0 = node.cni("ADD", conf, cid="ca", netns=pa, args=args)
    r1 = node.cni("ADD", conf, cid="ca", netns=pa, args=args, ifname="net1")
    assert r0.rc == 0 and r1.rc == 0, r1.stdout
    assert r0.json["interfaces"][0]["name"] != r1.json["interfaces"][0]["name"]
    assert {x["ifname"] for x in ip_json(pa, "link")} >= {"eth0", "net1"}
    assert node.cni("DEL", conf, cid="ca", netns=pa, args=args, ifname="net1").rc == 0
    node.wait_reaped(r1.json["interfaces"][0]["name"])
    assert "eth0" in {x["ifname"] for x in ip_json(pa, "link")}
