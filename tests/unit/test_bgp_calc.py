"""Pure BGP calc: mesh vs route reflector peer sets, BGPPeers, announcements, reflection, kernel routes."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from pycni.bgp.exabgp_api import RouteAttrs
from pycni.calc.bgp import (
    KIND_GLOBAL,
    KIND_MESH,
    KIND_NODE,
    RESTART_WINDOW_KEY,
    BgpContext,
    calc,
    datastore_prefixes,
    learned_key,
    peer_state_key,
    selector_matches,
)
from pycni.constants import RTPROT_BGPD
from pycni.datastore import SyncStatus, Update
from pycni.datastore.snapshot import Snapshot

RES = "/calico/resources/v3/projectcalico.org"
ip = ipaddress.ip_address
net = ipaddress.ip_network


class Snap:
    def __init__(self) -> None:
        self.s = Snapshot(("datastore",))
        self.rev = 0
        self.s.set_status("datastore", SyncStatus.IN_SYNC)

    def put(self, key: str, value: Any) -> Snap:
        self.rev += 1
        self.s.apply(
            Update(key, value if isinstance(value, str) or value is None else json.dumps(value), self.rev)
        )
        return self

    def node(
        self,
        name: str,
        addr: str,
        *,
        asn: int | None = None,
        rr: str = "",
        labels: dict[str, str] | None = None,
    ) -> Snap:
        bgp: dict[str, Any] = {"ipv4Address": f"{addr}/24"}
        if asn:
            bgp["asNumber"] = asn
        if rr:
            bgp["routeReflectorClusterID"] = rr
        meta: dict[str, Any] = {"name": name}
        if labels:
            meta["labels"] = labels
        return self.put(
            f"{RES}/nodes/{name}",
            {"kind": "Node", "apiVersion": "projectcalico.org/v3", "metadata": meta, "spec": {"bgp": bgp}},
        )

    def pool(
        self,
        cidr: str = "10.244.0.0/16",
        ipip: str = "Never",
        vxlan: str = "Never",
        name: str = "p",
        **extra: Any,
    ) -> Snap:
        spec = {"cidr": cidr, "ipipMode": ipip, "vxlanMode": vxlan, **extra}
        return self.put(f"{RES}/ippools/{name}", {"kind": "IPPool", "metadata": {"name": name}, "spec": spec})

    def config(self, **spec: Any) -> Snap:
        return self.put(
            f"{RES}/bgpconfigurations/default",
            {"kind": "BGPConfiguration", "metadata": {"name": "default"}, "spec": spec},
        )

    def peer(self, name: str, **spec: Any) -> Snap:
        return self.put(
            f"{RES}/bgppeers/{name}", {"kind": "BGPPeer", "metadata": {"name": name}, "spec": spec}
        )

    def block(self, node: str, cidr: str, state: str = "confirmed") -> Snap:
        n = net(cidr)
        return self.put(
            f"/calico/ipam/v2/host/{node}/ipv4/block/{n.network_address}-{n.prefixlen}",
            {"state": state, "deleted": False},
        )

    def learned(self, peer: str, prefix: str, nh: str, **attrs: Any) -> Snap:
        a = RouteAttrs(next_hop=ip(nh), **attrs)
        return self.put(learned_key(peer, net(prefix)), json.dumps(a.to_json()))

    def session(self, peer: str, state: str = "up", eor: bool = True) -> Snap:
        return self.put(peer_state_key(peer), {"state": state, "since": 1.0, "eor": eor, "session": 1})


CTX = BgpContext(nodename="n1", iface="eth0")


def three(rr: str = "") -> Snap:
    return Snap().pool().node("n1", "10.99.0.11").node("n2", "10.99.0.12").node("n3", "10.99.0.13", rr=rr)


def addrs(spec: Any) -> list[str]:
    return [str(p.address) for p in spec.peers]


def test_not_ready_without_own_node() -> None:
    spec = calc(Snap().node("n2", "10.99.0.12").s, CTX)
    assert spec.ready is False and spec.peers == ()


def test_full_mesh_peers_everyone_else_and_both_sides_dial() -> None:
    spec = calc(three().s, CTX)
    assert addrs(spec) == ["10.99.0.12", "10.99.0.13"]
    assert all(p.kind == KIND_MESH and p.peer_as == 64512 for p in spec.peers)
    # both sides dial: a restarted node never waits for its peer's reconnect back-off
    assert not any(p.passive for p in spec.peers)
    assert not any(p.passive for p in calc(three().s, BgpContext(nodename="n3")).peers)
    assert spec.peers[0].name == "Mesh_10_99_0_12"


def test_route_reflector_clients_peer_only_with_reflectors() -> None:
    s = three(rr="1.1.1.1").node("n4", "10.99.0.14")
    client = calc(s.s, CTX)
    assert addrs(client) == ["10.99.0.13"]
    rr = calc(s.s, BgpContext(nodename="n3"))
    assert addrs(rr) == ["10.99.0.11", "10.99.0.12", "10.99.0.14"]
    assert all(p.rr_client for p in rr.peers)
    assert rr.cluster_id == "1.1.1.1"


def test_mesh_disabled_global_and_node_specific_peers() -> None:
    s = three().config(nodeToNodeMeshEnabled=False, asNumber=64600)
    s.peer("tor", peerIP="10.99.0.200", asNumber=65001)
    s.peer("mine", node="n1", peerIP="10.99.0.201", asNumber=65002, password={"value": "s3cret"})
    s.peer("other", node="n2", peerIP="10.99.0.202", asNumber=65003)
    s.peer("sel", nodeSelector="rack == 'a'", peerSelector="has(rr)")
    s.node("n1", "10.99.0.11", labels={"rack": "a"}).node("n3", "10.99.0.13", labels={"rr": ""})
    spec = calc(s.s, CTX)
    got = {str(p.address): (p.kind, p.peer_as, p.password) for p in spec.peers}
    assert got == {
        "10.99.0.13": (KIND_NODE, 64600, ""),
        "10.99.0.200": (KIND_GLOBAL, 65001, ""),
        "10.99.0.201": (KIND_NODE, 65002, "s3cret"),
    }
    assert spec.local_as == 64600


def test_per_node_as_and_mesh_password_from_secret() -> None:
    s = three().config(nodeMeshPassword={"secretKeyRef": {"name": "bgp", "key": "pw"}})
    s.node("n2", "10.99.0.12", asn=65010)
    ctx = BgpContext(nodename="n1", secret=lambda n, k: "pw!" if (n, k) == ("bgp", "pw") else None)
    spec = calc(s.s, ctx)
    p2 = next(p for p in spec.peers if str(p.address) == "10.99.0.12")
    assert p2.peer_as == 65010 and p2.password == "pw!"


def test_announces_confirmed_own_blocks_to_every_peer() -> None:
    s = (
        three()
        .block("n1", "10.244.1.0/26")
        .block("n1", "10.244.9.0/26", state="pending")
        .block("n2", "10.244.2.0/26")
    )
    s.pool("10.245.0.0/16", name="quiet", disableBGPExport=True).block("n1", "10.245.0.0/26")
    spec = calc(s.s, CTX)
    assert set(spec.announcements) == {
        (ip("10.99.0.12"), net("10.244.1.0/26")),
        (ip("10.99.0.13"), net("10.244.1.0/26")),
    }
    assert all(a.next_hop == "10.99.0.11" for a in spec.announcements.values())


def test_only_own_affinities_are_watched_and_calc_needs_no_other() -> None:
    full = three().block("n1", "10.244.1.0/26").block("n2", "10.244.2.0/26").block("n2", "10.244.3.0/26")
    prefixes = datastore_prefixes("n1")
    assert "/calico/ipam/v2/host/n1/" in prefixes and "/calico/ipam/v2/host/" not in prefixes
    narrow = Snap()
    for k, v in full.s.items():
        if any(k.startswith(p) for p in prefixes):
            narrow.put(k, v)
    assert len(narrow.s) < len(full.s)
    a, b = calc(full.s, CTX), calc(narrow.s, CTX)
    assert (a.announcements, a.routes, a.peers) == (b.announcements, b.routes, b.peers)


def test_learned_routes_become_direct_kernel_routes() -> None:
    s = three().block("n1", "10.244.1.0/26").learned("10.99.0.12", "10.244.2.0/26", "10.99.0.12")
    s.learned("10.99.0.12", "10.244.1.0/26", "10.99.0.12")  # our own block: never installed
    s.learned("10.99.0.99", "10.244.3.0/26", "10.99.0.99")  # not a peer: ignored
    spec = calc(s.s, CTX)
    assert dict(spec.routes) == {net("10.244.2.0/26"): spec.routes[net("10.244.2.0/26")]}
    r = spec.routes[net("10.244.2.0/26")]
    assert (str(r.gateway), r.oif, r.proto, r.onlink) == ("10.99.0.12", "eth0", RTPROT_BGPD, False)


def test_pool_ownership_vxlan_ipip_and_program_cluster_routes() -> None:
    s = (
        three()
        .pool("10.246.0.0/16", vxlan="Always", name="vx")
        .pool("10.247.0.0/16", ipip="CrossSubnet", name="ip")
    )
    s.node("n3", "10.99.1.13")  # another subnet
    s.learned("10.99.0.12", "10.246.0.0/26", "10.99.0.12")
    s.learned("10.99.0.12", "10.247.0.0/26", "10.99.0.12")
    s.learned("10.99.1.13", "10.247.1.0/26", "10.99.1.13")
    s.learned("10.99.0.12", "192.0.2.0/24", "10.99.0.12")  # outside every pool: ours
    spec = calc(s.s, CTX)
    assert set(spec.routes) == {net("192.0.2.0/24")}
    s.config(programClusterRoutes="Enabled")
    spec = calc(s.s, BgpContext(nodename="n1", iface="eth0", resolve=lambda nh: (ip("10.99.0.254"), "eth0")))
    same, cross = spec.routes[net("10.247.0.0/26")], spec.routes[net("10.247.1.0/26")]
    assert (same.oif, same.onlink) == ("eth0", False)
    assert (cross.oif, cross.onlink, str(cross.gateway)) == ("tunl0", True, "10.99.1.13")
    assert net("10.246.0.0/26") not in spec.routes


def test_next_hop_outside_subnet_is_resolved_recursively() -> None:
    s = three().node("n2", "10.99.1.12").learned("10.99.1.12", "10.244.2.0/26", "10.99.1.12")
    spec = calc(s.s, BgpContext(nodename="n1", iface="eth0", resolve=lambda nh: (ip("10.99.0.254"), "eth0")))
    r = spec.routes[net("10.244.2.0/26")]
    assert (str(r.gateway), r.oif) == ("10.99.0.254", "eth0")
    assert not calc(s.s, CTX).routes  # unresolvable: not installed


def test_reflector_reflects_with_originator_and_cluster_list() -> None:
    s = three(rr="9.9.9.9").node("n4", "10.99.0.14")
    s.learned("10.99.0.11", "10.244.1.0/26", "10.99.0.11")
    spec = calc(s.s, BgpContext(nodename="n3", iface="eth0"))
    got = {str(k[0]): v for k, v in spec.announcements.items() if k[1] == net("10.244.1.0/26")}
    assert set(got) == {"10.99.0.12", "10.99.0.14"}  # not back to the originator
    a = got["10.99.0.12"]
    assert (a.next_hop, a.originator_id, a.cluster_list) == ("10.99.0.11", "10.99.0.11", ("9.9.9.9",))


def test_reflector_drops_cluster_list_loops_and_non_client_to_non_client() -> None:
    s = three(rr="9.9.9.9").node("n4", "10.99.0.14", rr="9.9.9.9")  # n4: another reflector, same cluster
    s.learned("10.99.0.11", "10.244.1.0/26", "10.99.0.11", cluster_list=("9.9.9.9",))  # loop
    s.learned("10.99.0.14", "10.244.4.0/26", "10.99.0.14")  # from a non-client: clients only
    spec = calc(s.s, BgpContext(nodename="n3", iface="eth0"))
    assert net("10.244.1.0/26") not in spec.routes
    to = {str(k[0]) for k in spec.announcements if k[1] == net("10.244.4.0/26")}
    assert to == {"10.99.0.11", "10.99.0.12"}


def test_client_drops_routes_it_originated() -> None:
    s = three(rr="9.9.9.9").learned("10.99.0.13", "10.244.7.0/26", "10.99.0.12", originator_id="10.99.0.11")
    assert calc(s.s, CTX).routes == {}


def test_best_path_is_deterministic() -> None:
    s = three().learned("10.99.0.13", "192.0.2.0/24", "10.99.0.13", as_path=(65001, 65002))
    s.learned("10.99.0.12", "192.0.2.0/24", "10.99.0.12", as_path=(65001,))
    assert str(calc(s.s, CTX).routes[net("192.0.2.0/24")].gateway) == "10.99.0.12"
    s.learned("10.99.0.13", "192.0.2.0/24", "10.99.0.13", local_pref=200)
    assert str(calc(s.s, CTX).routes[net("192.0.2.0/24")].gateway) == "10.99.0.13"


def test_hold_deletions_until_every_peer_sent_eor_or_window_closed() -> None:
    s = three().session("10.99.0.12", eor=True).session("10.99.0.13", eor=False)
    assert calc(s.s, CTX).hold_deletions is True
    s.session("10.99.0.13", eor=True)
    assert calc(s.s, CTX).hold_deletions is False
    s.session("10.99.0.13", state="down", eor=False).put(RESTART_WINDOW_KEY, "closed")
    assert calc(s.s, CTX).hold_deletions is False


def test_bad_records_are_skipped() -> None:
    s = (
        three()
        .put(f"{RES}/bgppeers/bad", "{not json")
        .put(learned_key("10.99.0.12", net("10.244.2.0/26")), "[]")
    )
    spec = calc(s.s, CTX)
    assert spec.ready and addrs(spec) == ["10.99.0.12", "10.99.0.13"] and not spec.routes


def test_selectors() -> None:
    labels = {"rack": "a", "rr": ""}
    assert selector_matches("all()", {})
    assert selector_matches("has(rr) && rack == 'a'", labels)
    assert not selector_matches("!has(rr)", labels)
    assert selector_matches("rack != 'b'", labels)
    assert selector_matches("rack in {'a', 'c'}", labels)
    assert selector_matches("rack == 'x' || has(rr)", labels)
    assert not selector_matches("(broken", labels)


def test_calico_docs_route_reflector_setup_is_symmetric() -> None:
    # calicoctl docs: mesh off, RRs labelled, one BGPPeer "every node peers with the reflectors".
    s = Snap().pool().config(nodeToNodeMeshEnabled=False)
    s.node("n1", "10.99.0.11", rr="224.0.0.1", labels={"route-reflector": "true"})
    s.node("n2", "10.99.0.12").node("n3", "10.99.0.13")
    s.peer("peer-with-route-reflectors", nodeSelector="all()", peerSelector="route-reflector == 'true'")
    rr = calc(s.s, CTX)
    assert addrs(rr) == ["10.99.0.12", "10.99.0.13"] and all(p.rr_client for p in rr.peers)
    client = calc(s.s, BgpContext(nodename="n2"))
    assert addrs(client) == ["10.99.0.11"] and client.peers[0].kind == KIND_NODE


def _fresh(s: Snapshot) -> Snapshot:
    """A new Snapshot with the same contents: calc has no memory of it."""
    f = Snapshot(("datastore",))
    f.set_status("datastore", SyncStatus.IN_SYNC)
    for i, (k, v) in enumerate(s.items()):
        f.apply(Update(k, v, i + 1))
    return f


def _same(a: Any, b: Any) -> None:
    assert dict(a.routes) == dict(b.routes)
    assert dict(a.announcements) == dict(b.announcements)
    assert a.own_blocks == b.own_blocks and a.peers == b.peers and a.hold_deletions == b.hold_deletions


def test_incremental_calc_equals_a_fresh_calc_on_random_changes() -> None:
    """calc remembers its last run on a Snapshot and recomputes only the learned prefixes whose
    records changed; after every random change the result must equal a calc with no memory."""
    import random

    rnd = random.Random(7)
    for rr in ("", "1.1.1.1"):
        s = three(rr=rr).node("n4", "10.99.0.14", rr="1.1.1.1" if rr else "")
        for p in ("10.99.0.12", "10.99.0.13", "10.99.0.14"):
            s.session(p)
        ctx = BgpContext(nodename="n1", iface="eth0")
        if rr:
            s.node("n1", "10.99.0.11", rr=rr)
        prefixes = [f"10.244.{i}.0/26" for i in range(12)] + ["10.245.0.0/24", "10.244.3.0/24"]
        for _step in range(300):
            r = rnd.random()
            if r < 0.55:
                peer = rnd.choice(["10.99.0.12", "10.99.0.13", "10.99.0.14", "10.99.0.99"])
                pfx = rnd.choice(prefixes)
                if rnd.random() < 0.3:
                    s.put(learned_key(peer, net(pfx)), None)
                else:
                    attrs: dict[str, Any] = {}
                    if rnd.random() < 0.3:
                        attrs["local_pref"] = rnd.choice([50, 100, 200])
                    if rnd.random() < 0.2:
                        attrs["cluster_list"] = (rnd.choice(["1.1.1.1", "2.2.2.2"]),)
                    if rnd.random() < 0.1:
                        attrs["originator_id"] = rnd.choice(["10.99.0.11", "10.99.0.13"])
                    nh = rnd.choice([peer, "10.99.0.11", "10.99.0.13"])
                    s.learned(peer, pfx, nh if peer != "10.99.0.99" else peer, **attrs)
            elif r < 0.7:
                s.block("n1", rnd.choice(prefixes[:6]), state=rnd.choice(["confirmed", "pending"]))
            elif r < 0.8:
                s.pool(ipip=rnd.choice(["Never", "Always", "CrossSubnet"]))
            elif r < 0.85:
                s.config(programClusterRoutes=rnd.choice(["Enabled", "Disabled", ""]))
            elif r < 0.9:
                s.node("n3", "10.99.0.13", rr=rnd.choice(["", "1.1.1.1"]))
            else:
                s.session(rnd.choice(["10.99.0.12", "10.99.0.13"]), eor=rnd.random() < 0.5)
            if rnd.random() < 0.7:  # calc after most changes, sometimes after two
                _same(calc(s.s, ctx), calc(_fresh(s.s), ctx))
        _same(calc(s.s, ctx), calc(_fresh(s.s), ctx))
