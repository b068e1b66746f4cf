"""felix against the real kernel in throwaway namespaces: VXLAN device, routes, VTEPs, sysctls,
natOutgoing, repair of a hand-deleted route, and the restart sweep (root; effects read with `ip -j`).

Two namespaces `pyt-fx-<id>-a` / `-b` joined by a veth play two nodes on one segment; the agent of
node a runs on Pyroute2Netlink with the datastore fed through the memory datastore's sync stream.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import netns as pr_netns

from pycni.calc.felix import SYNC_PREFIXES, FelixConfig
from pycni.calico.felix import build_agent
from pycni.constants import RTPROT_FELIX
from pycni.dataplane.netlink import Route
from pycni.dataplane.pyroute2_netlink import Pyroute2Netlink
from pycni.datastore import calico as c
from pycni.datastore.memory import MemoryDatastore

pytestmark = pytest.mark.privileged


def ipj(ns: str, *args: str) -> Any:
    out = subprocess.run(["ip", "-n", ns, "-j", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout or "[]")


def put(ds: MemoryDatastore, res: c.Resource) -> None:
    ds.put(c.key_for(res), c.encode(res))


def aff(ds: MemoryDatastore, node: str, block: str) -> None:
    b = ipaddress.ip_network(block)
    ds.put(
        f"/calico/ipam/v2/host/{node}/ipv4/block/{b.network_address}-{b.prefixlen}",
        json.dumps({"state": "confirmed", "deleted": False}),
    )


@pytest.fixture
def nss() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    a, b = f"pyt-fx-{tag}-a", f"pyt-fx-{tag}-b"
    made: list[str] = []
    try:
        for ns in (a, b):
            pr_netns.create(ns)
            made.append(ns)
        subprocess.run(
            ["ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b],
            check=True,
        )
        for ns, addr in ((a, "10.99.0.11/24"), (b, "10.99.0.12/24")):
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", "eth0"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        # a pod-side veth on node a: host end cali..., pod end in netns b is enough for the kernel
        subprocess.run(
            ["ip", "-n", a, "link", "add", "cali0000000000a", "type", "veth", "peer", "name", "p0"],
            check=True,
        )
        subprocess.run(["ip", "-n", a, "link", "set", "cali0000000000a", "up"], check=True)
        yield a, b
    finally:
        for ns in made:
            try:
                pr_netns.remove(ns)
            except OSError:
                pass


def test_felix_vxlan_in_netns(nss: tuple[str, str]) -> None:
    a, _b = nss
    ds = MemoryDatastore()
    pool = c.IPPool.from_spec(
        c.Meta("default-ipv4-ippool"), {"cidr": "10.244.0.0/16", "vxlanMode": "Always", "natOutgoing": True}
    )
    put(ds, pool)
    for name, ip, vx, mac in (
        ("n1", "10.99.0.11/24", "10.244.1.1", "66:00:00:00:00:01"),
        ("n2", "10.99.0.12/24", "10.244.2.1", "66:00:00:00:00:02"),
    ):
        put(
            ds,
            c.Node(
                meta=c.Meta(name),
                ipv4_address=ipaddress.IPv4Interface(ip),
                vxlan_tunnel_addr=ipaddress.IPv4Address(vx),
                vxlan_tunnel_mac=mac,
            ),
        )
    aff(ds, "n1", "10.244.1.0/26")
    aff(ds, "n2", "10.244.2.0/26")
    put(
        ds,
        c.WorkloadEndpoint(
            meta=c.Meta(c.wep_name("n1", "pa"), "default"),
            node="n1",
            interface_name="cali0000000000a",
            ip_networks=(ipaddress.ip_network("10.244.1.5/32"),),
            pod="pa",
        ),
    )
    nl = Pyroute2Netlink(a)
    # a stale route of ours from "a previous run", and one of someone else's
    nl.route_replace(Route(dst=ipaddress.ip_network("10.244.77.0/26"), type="blackhole", proto=RTPROT_FELIX))
    nl.route_replace(Route(dst=ipaddress.ip_network("192.168.7.0/24"), type="blackhole", proto=4))
    cfg = FelixConfig(nodename="n1", underlay_dev="eth0", underlay_mtu=1500)
    agent = build_agent(nl, cfg, netns=a, grace=0.0)
    stop = threading.Event()
    t = threading.Thread(
        target=ds.sync, args=(list(SYNC_PREFIXES), agent.emitter("datastore"), stop), daemon=True
    )
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not agent.applied_once and time.monotonic() < deadline:
            agent.step(timeout=0.2)
        assert agent.last_apply_ok, agent.health()

        link = ipj(a, "-d", "link", "show", "vxlan.calico")[0]
        info = link["linkinfo"]["info_data"]
        assert (info["id"], info["port"], info["local"], info.get("learning", False)) == (
            4096,
            4789,
            "10.99.0.11",
            False,
        )
        assert link["mtu"] == 1450 and link["address"] == "66:00:00:00:00:01" and "UP" in link["flags"]
        assert [
            x["local"]
            for x in ipj(a, "addr", "show", "dev", "vxlan.calico")[0]["addr_info"]
            if x["family"] == "inet"
        ] == ["10.244.1.1"]

        routes = {r["dst"]: r for r in ipj(a, "route", "show", "proto", "80")}
        assert routes["10.244.2.0/26"]["gateway"] == "10.244.2.1"
        assert (
            routes["10.244.2.0/26"]["dev"] == "vxlan.calico" and "onlink" in routes["10.244.2.0/26"]["flags"]
        )
        assert routes["10.244.1.0/26"]["type"] == "blackhole"
        assert routes["10.244.1.5"]["dev"] == "cali0000000000a" and routes["10.244.1.5"]["scope"] == "link"
        assert "10.244.77.0/26" not in routes  # swept
        assert any(r["dst"] == "192.168.7.0/24" for r in ipj(a, "route", "show", "proto", "static"))

        neigh = ipj(a, "neigh", "show", "dev", "vxlan.calico")
        assert [(n["dst"], n["lladdr"], "PERMANENT" in n["state"]) for n in neigh] == [
            ("10.244.2.1", "66:00:00:00:00:02", True)
        ]
        fdb = json.loads(
            subprocess.run(
                ["bridge", "-n", a, "-j", "fdb", "show", "dev", "vxlan.calico"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert any(f["mac"] == "66:00:00:00:00:02" and f.get("dst") == "10.99.0.12" for f in fdb)

        assert nl.sysctl_get("net/ipv4/conf/cali0000000000a/proxy_arp") == "1"
        assert nl.sysctl_get("net/ipv4/neigh/cali0000000000a/proxy_delay") == "0"
        assert nl.sysctl_get("net/ipv4/ip_forward") == "1"

        nat = subprocess.run(
            ["ip", "netns", "exec", a, "iptables-save", "-t", "nat"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "-A cali-nat-outgoing -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN" in nat
        assert "-A cali-nat-outgoing -s 10.244.0.0/16 -j MASQUERADE" in nat
        assert any(
            ln.startswith("-A POSTROUTING") and ln.endswith("-j cali-nat-outgoing") for ln in nat.splitlines()
        )

        # Repair: a route deleted by hand comes back on the next resync.
        subprocess.run(["ip", "-n", a, "route", "del", "10.244.2.0/26"], check=True)
        agent.queue_resync()
        agent.step(timeout=0.2)
        assert "10.244.2.0/26" in {r["dst"] for r in ipj(a, "route", "show", "proto", "80")}

        # n2 leaves: its routes, neighbour and FDB entry go.
        ds.delete(c.resource_key(c.Node, "n2"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            agent.step(timeout=0.2)
            if "10.244.2.0/26" not in {r["dst"] for r in ipj(a, "route", "show", "proto", "80")}:
                break
        assert "10.244.2.0/26" not in {r["dst"] for r in ipj(a, "route", "show", "proto", "80")}
        assert ipj(a, "neigh", "show", "dev", "vxlan.calico") == []
    finally:
        stop.set()
        t.join(timeout=5)
        nl.close()
