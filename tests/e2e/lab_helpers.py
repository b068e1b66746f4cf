"""Helpers the e2e tests share: polling, `ip -j` read-backs, Calico records, a lab with pods up.

Imported by the test modules of this directory as `lab_helpers` (pytest puts a rootless test
directory on sys.path). Everything reads real state back: the kernel through `ip -j` in a node's
namespace, the datastore through the lab's etcd.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from pycni.constants import RTPROT_FELIX, RTPROT_FLANNELD
from pycni.datastore import calico as c
from pycni.lab import Lab


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def ipj(lab: Lab, node: str, *argv: str) -> list[dict[str, Any]]:
    cp = lab.exec(node, list(argv), check=False)
    return json.loads(cp.stdout or "[]")


def proto_routes(lab: Lab, node: str, proto: int) -> dict[str, dict[str, Any]]:
    """The node's routes of one route protocol (one writer), by destination."""
    return {r["dst"]: r for r in ipj(lab, node, "ip", "-j", "route", "show", "proto", str(proto))}


def felix_routes(lab: Lab, node: str) -> dict[str, dict[str, Any]]:
    return proto_routes(lab, node, RTPROT_FELIX)


def flannel_routes(lab: Lab, node: str) -> dict[str, dict[str, Any]]:
    return proto_routes(lab, node, RTPROT_FLANNELD)


def node_res(lab: Lab, name: str) -> c.Node:
    key = c.resource_key(c.Node, name)
    v = lab.etcd_get(key)
    assert v is not None, f"no Node {name}"
    n = c.decode(key, v, c.Node)
    assert isinstance(n, c.Node)
    return n


def blocks_of(lab: Lab, node: str) -> list[str]:
    out = []
    for key in lab.etcd_get_prefix(f"/calico/ipam/v2/host/{node}/ipv4/block/"):
        addr, _, plen = key.rsplit("/", 1)[1].rpartition("-")
        out.append(f"{addr}/{plen}")
    return sorted(out)


def pod_ip(lab: Lab, node: str, pod: str) -> str:
    for p in lab.pods:
        if p.node == node and p.name == pod:
            return str(p.ip)
    raise AssertionError(f"no pod {node}/{pod}")


def up_with_pods(
    lab: Lab, mode: str, segments: int = 1, *, wait_timeout: float = 30, resync: float = 1, **opts: Any
) -> None:
    """3 nodes in `mode`, pods a and b on each, and the whole ping matrix green."""
    lab.up(nodes=3, segments=segments, mode=mode, wait_timeout=wait_timeout, resync=resync, **opts)
    for n in lab.nodes:
        for p in ("a", "b"):
            lab.pod_add(n, p)
    m = lab.ping_matrix()
    assert lab.matrix_ok(m), json.dumps(m, indent=1)
