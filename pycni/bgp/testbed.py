"""Test and benchmark scaffolding for BGP: a bare lab mode, Calico records, BIRD/GoBGP peers.

The BGP integration tests and `bench/bgp.py` need the lab's namespaces and etcd but none of its
CNI wiring, so `bgp-bare` is a lab mode that starts nothing; the tests spawn `pycni-bgpd`, `bird`
or `gobgpd` on the nodes they choose. The helpers write the exact Calico v3 resources and IPAM
affinity records calico-node and calico-ipam write, so bgpd reads them as it would in a cluster.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from pycni.lab import modes as modes_mod
from pycni.lab.lab import Lab, LabNode

RES = "/calico/resources/v3/projectcalico.org"


class BareMode:
    """Namespaces, underlay and etcd only: the test decides what runs on each node."""

    name = "bgp-bare"

    def available(self) -> str | None:
        return None

    def cluster_setup(self, lab: Lab) -> None:
        return None

    def node_start(self, lab: Lab, node: LabNode) -> None:
        lab.sysctl(node.netns, "net.ipv4.ip_forward", "1")

    def node_stop(self, lab: Lab, node: LabNode) -> None:
        return None

    def cni_config(self, lab: Lab, node: LabNode) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": "bgp-bare", "plugins": []}

    def wait_ready(self, lab: Lab, node: LabNode, timeout: float) -> None:
        return None


if "bgp-bare" not in modes_mod.names():
    modes_mod.register("bgp-bare", BareMode)


def _res(kind: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return json.dumps({"kind": kind, "apiVersion": "projectcalico.org/v3", "metadata": meta, "spec": spec})


def put_node(
    lab: Lab,
    name: str,
    ip: str,
    *,
    asn: int | None = None,
    rr_cluster_id: str = "",
    labels: dict[str, str] | None = None,
    prefix: int = 24,
) -> None:
    bgp: dict[str, Any] = {"ipv4Address": f"{ip}/{prefix}"}
    if asn is not None:
        bgp["asNumber"] = asn
    if rr_cluster_id:
        bgp["routeReflectorClusterID"] = rr_cluster_id
    lab.etcd_put(f"{RES}/nodes/{name}", _res("Node", name, {"bgp": bgp}, labels))


def put_pool(
    lab: Lab, cidr: str = "10.244.0.0/16", *, ipip: str = "Never", name: str = "default-ipv4-ippool"
) -> None:
    lab.etcd_put(
        f"{RES}/ippools/{name}",
        _res(
            "IPPool",
            name,
            {
                "cidr": cidr,
                "blockSize": 26,
                "ipipMode": ipip,
                "vxlanMode": "Never",
                "natOutgoing": True,
                "nodeSelector": "all()",
            },
        ),
    )


def put_bgp_config(lab: Lab, **spec: Any) -> None:
    lab.etcd_put(f"{RES}/bgpconfigurations/default", _res("BGPConfiguration", "default", spec))


def put_peer(lab: Lab, name: str, **spec: Any) -> None:
    lab.etcd_put(f"{RES}/bgppeers/{name}", _res("BGPPeer", name, spec))


def affinity_key(node: str, block: str) -> str:
    net = ipaddress.ip_network(block)
    return f"/calico/ipam/v2/host/{node}/ipv4/block/{net.network_address}-{net.prefixlen}"


def put_affinity(lab: Lab, node: str, block: str) -> None:
    lab.etcd_put(affinity_key(node, block), json.dumps({"state": "confirmed", "deleted": False}))


def bgpd_argv(lab: Lab, node: LabNode, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pycni_daemons.bgpd",
        "--etcd-endpoints",
        lab.etcd_endpoint,
        "--nodename",
        node.name,
        "--run-dir",
        os.path.join(node.dir, "run", "bgpd"),
        "--restart-window",
        "20",
        *extra,
    ]


def status_socket(node: LabNode) -> str:
    return os.path.join(node.dir, "run", "bgpd", "status.sock")


def bird_conf(
    router_id: str,
    peers: list[tuple[str, int]],
    *,
    asn: int = 64512,
    statics: tuple[str, ...] = (),
    rr_cluster: str = "",
) -> str:
    """A BIRD 2 config peering with our nodes (lab notes (b), with gateway direct for iBGP)."""
    lines = [
        f"router id {router_id};",
        "protocol device { scan time 2; }",
        "protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; merge paths on; }",
        "protocol static own { ipv4; " + " ".join(f"route {s} blackhole;" for s in statics) + " }",
        "template bgp peers {",
        f"  local {router_id} as {asn}; direct; hold time 90; connect retry time 1; graceful restart;",
        "  ipv4 { import all; export where source ~ [ RTS_STATIC, RTS_BGP ]; gateway direct; };",
        f"  {'rr client; rr cluster id ' + rr_cluster + ';' if rr_cluster else ''}",
        "}",
    ]
    for i, (ip, pas) in enumerate(peers):
        lines.append(f"protocol bgp p{i} from peers {{ neighbor {ip} as {pas}; }}")
    return "\n".join(lines) + "\n"


def gobgp_conf(router_id: str, peers: list[tuple[str, int]], *, asn: int = 64512) -> str:
    out = [
        "[global.config]",
        f"  as = {asn}",
        f'  router-id = "{router_id}"',
        f'  local-address-list = ["{router_id}"]',
    ]
    for ip, pas in peers:
        out += [
            "[[neighbors]]",
            "  [neighbors.config]",
            f'    neighbor-address = "{ip}"',
            f"    peer-as = {pas}",
            "  [neighbors.timers.config]",
            "    connect-retry = 1",
            "    hold-time = 90",
            "    keepalive-interval = 30",
            "  [neighbors.graceful-restart.config]",
            "    enabled = true",
            "  [[neighbors.afi-safis]]",
            "    [neighbors.afi-safis.config]",
            '      afi-safi-name = "ipv4-unicast"',
            "    [neighbors.afi-safis.mp-graceful-restart.config]",
            "      enabled = true",
        ]
    return "\n".join(out) + "\n"


def kernel_routes(lab: Lab, node: str | LabNode, proto: str | None = None) -> list[dict[str, Any]]:
    argv = ["ip", "-j", "route", "show"] + (["proto", proto] if proto else [])
    cp = lab.exec(node, argv)
    return list(json.loads(cp.stdout or "[]"))


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def netns_run(netns: str, argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", "--", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
