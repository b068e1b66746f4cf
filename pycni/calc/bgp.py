"""The BGP speaker's pure calculation: peers, announcements, reflection, kernel routes.

`calc(snapshot, ctx) -> BgpSpec` reads only the snapshot (Calico v3 resources, IPAM block
affinities, and the synthetic keys the exabgp reader writes for learned routes and session state)
plus a few local facts fixed at start-up (`BgpContext`), so every decision here is unit-tested
without exabgp or a kernel.

Peers (Calico's rules, kube-router's shape `syncInternalPeers`): with the node-to-node mesh on,
every other node with a BGP address is a peer; when some nodes carry a route-reflector cluster
ID, clients peer only with the reflectors and reflectors peer with everyone. BGPPeer resources add
global peers (no `node`/`nodeSelector`) and node-specific ones, by `peerIP` or by `peerSelector`
(then the selected nodes' addresses and ASes). One session per address: mesh first, then node
specific, then global. confd makes the node with the higher address passive; we let both sides
dial (exabgp listens too and resolves the collision), because exabgp's reconnect back-off grows to
60 s: a restarted node must not wait for its passive peer's next attempt.

Announcements: our confirmed affine blocks (minus pools that are disabled or `disableBGPExport`)
go to every peer with our address as next hop. exabgp does not reflect, so a reflector does it here: a
client's best route goes to every other iBGP peer, a non-client's to clients only, with
ORIGINATOR_ID set (kept if present) and our cluster ID prepended to CLUSTER_LIST; a route whose
cluster list already holds our ID, or whose originator is us, is a loop and is dropped.

Kernel routes (`proto RTPROT_BGPD`): the best learned route per prefix, from a peer still in the
peer set, never for our own blocks. Pool ownership follows modern Calico: VXLAN pools are felix's;
IPIP pools are felix's unless `BGPConfiguration.programClusterRoutes` is `Enabled`, in which case
we program them as felix would (CrossSubnet: via `tunl0 onlink` only across subnets); no-encap
pools and anything outside the pools are ours unless `programClusterRoutes` is `Disabled`.

Graceful restart: after our own restart the kernel still holds the routes the previous run
installed. `hold_deletions` stays true (the route driver only adds and replaces) until every peer
has sent End-of-RIB on its current session or the restart window has closed.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import ipaddress
import json
import re
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from pycni.bgp.exabgp_api import Announcement, RouteAttrs
from pycni.constants import IPIP_DEV, RTPROT_BGPD
from pycni.dataplane.netlink import Route
from pycni.datastore.calico import (
    BGPCONFIG_PREFIX,
    BGPPEERS_PREFIX,
    DEFAULT_AS,
    IPPOOLS_PREFIX,
    NODES_PREFIX,
    BGPConfiguration,
    BGPPeer,
    IPPool,
    Node,
    decode_all,
)
from pycni.datastore.snapshot import Snapshot
from pycni.ipam.keys import HOST_PREFIX, STATE_CONFIRMED, BlockAffinity, parse_affinity_key
from pycni.model import IPAddress, IPInterface, IPNetwork, parse_address, parse_network

log = structlog.get_logger(__name__)


#: Synthetic key space written by the exabgp reader (source "bgp"); never stored in a datastore.
BGP_PREFIX = "/pycni/bgp/"
LEARNED_PREFIX = "/pycni/bgp/learned/"  # + <peer>/<net>-<len>  -> RouteAttrs JSON
PEER_STATE_PREFIX = "/pycni/bgp/peer/"  # + <peer>               -> {"state", "since", "eor"}
RESTART_WINDOW_KEY = "/pycni/bgp/restart-window"  # "closed" once the graceful-restart window is over

DATASTORE_PREFIXES = (NODES_PREFIX, BGPCONFIG_PREFIX, BGPPEERS_PREFIX, IPPOOLS_PREFIX, HOST_PREFIX)


def datastore_prefixes(nodename: str) -> tuple[str, ...]:
    """What one node's bgpd watches: DATASTORE_PREFIXES with only its own block affinities.

    calc reads no other node's affinities (their blocks arrive over BGP), and watching them all
    made every bgpd recalc on every other node's IPAM writes: a 1000-block allocation on one node
    cost each of its peers several full calcs before the first UPDATE even reached them."""
    return (NODES_PREFIX, BGPCONFIG_PREFIX, BGPPEERS_PREFIX, IPPOOLS_PREFIX, f"{HOST_PREFIX}{nodename}/")

KIND_MESH = "node-to-node mesh"
KIND_GLOBAL = "global"
KIND_NODE = "node specific"
_NAME_PREFIX = {KIND_MESH: "Mesh", KIND_GLOBAL: "Global", KIND_NODE: "Node"}


def learned_key(peer: IPAddress | str, prefix: IPNetwork) -> str:
    return f"{LEARNED_PREFIX}{peer}/{prefix.network_address}-{prefix.prefixlen}"


def parse_learned_key(key: str) -> tuple[IPAddress, IPNetwork] | None:
    rest = key[len(LEARNED_PREFIX):]
    peer, _, net = rest.partition("/")
    try:
        return parse_address(peer), parse_network(net.replace("-", "/"))
    except ValueError:
        return None


def peer_state_key(peer: IPAddress | str) -> str:
    return f"{PEER_STATE_PREFIX}{peer}"


# -- model -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BgpPeer:
    """One BGP session as the speaker configures it."""

    address: IPAddress
    peer_as: int
    kind: str = KIND_MESH  # KIND_MESH | KIND_GLOBAL | KIND_NODE
    local_as: int | None = None  # override of the node's AS for this session
    password: str = ""
    passive: bool = False
    port: int | None = None
    rr_client: bool = False  # we reflect to/from it as a client (only when we are a reflector)
    node: str = ""  # the Calico node behind this address, if any

    @property
    def name(self) -> str:
        """BIRD's protocol name in confd's scheme (`Mesh_10_99_0_12`), also our exabgp description."""
        s = str(self.address).replace(".", "_").replace(":", "_")
        return f"{_NAME_PREFIX[self.kind]}_{s}" + (f"_port_{self.port}" if self.port else "")


@dataclass(frozen=True)
class PeerSession:
    state: str = "down"
    since: float = 0.0
    eor: bool = False  # End-of-RIB received on the current session
    session: int = 0  # bumped by the reader on every "up"


@dataclass(frozen=True)
class BgpContext:
    """Local facts fixed at start-up (not in any datastore)."""

    nodename: str
    iface: str = ""  # the underlay device holding the node's address ("" = ask `resolve`)
    #: how to reach a next hop outside the local subnet: (gateway, device), or None
    resolve: Callable[[IPAddress], tuple[IPAddress | None, str] | None] | None = None
    #: secretKeyRef lookup (name, key) -> value, for BGP passwords
    secret: Callable[[str, str], str | None] | None = None


@dataclass(frozen=True)
class BgpSpec:
    ready: bool  # our Node is known with a BGP address: nothing is configured before that
    router_id: str = ""
    local_address: str = ""
    local_as: int = DEFAULT_AS
    cluster_id: str = ""
    peers: tuple[BgpPeer, ...] = ()
    own_blocks: tuple[IPNetwork, ...] = ()
    announcements: Mapping[tuple[IPAddress, IPNetwork], Announcement] = field(default_factory=dict)
    routes: Mapping[IPNetwork, Route] = field(default_factory=dict)
    hold_deletions: bool = True
    sessions: Mapping[IPAddress, PeerSession] = field(default_factory=dict)

    @property
    def established(self) -> int:
        return sum(1 for p in self.peers if self.sessions.get(p.address, PeerSession()).state == "up")


# -- selectors (the subset of Calico's selector language that node/peer selectors use) ------------

_TERM = re.compile(
    r"\s*(?:(?P<all>all\(\))|(?P<nhas>!\s*has\((?P<nk>[\w./-]+)\))|(?P<has>has\((?P<hk>[\w./-]+)\))"
    r"|(?P<k>[\w./-]+)\s*(?P<op>==|!=)\s*(?P<q>['\"])(?P<v>[^'\"]*)(?P=q)"
    r"|(?P<k2>[\w./-]+)\s+(?P<op2>in|not in)\s*\{(?P<vs>[^}]*)\})\s*"
)


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Evaluate `all()`, `has(k)`, `!has(k)`, `k == 'v'`, `k != 'v'`, `k in {'a','b'}` joined by
    `&&` and `||` (no parentheses). An unparsable selector matches nothing (and is logged)."""
    sel = selector.strip()
    if not sel:
        return False
    for alt in sel.split("||"):
        ok = True
        for term in alt.split("&&"):
            m = _TERM.fullmatch(term)
            if m is None:
                log.warning("unsupported selector", selector=selector)
                return False
            if m["all"]:
                continue
            if m["nhas"]:
                ok = m["nk"] not in labels
            elif m["has"]:
                ok = m["hk"] in labels
            elif m["k"]:
                eq = labels.get(m["k"]) == m["v"]
                ok = eq if m["op"] == "==" else not eq
            else:
                vals = {v.strip().strip("'\"") for v in m["vs"].split(",") if v.strip()}
                inside = labels.get(m["k2"]) in vals
                ok = inside if m["op2"] == "in" else not inside
            if not ok:
                break
        if ok:
            return True
    return False


# -- helpers ---------------------------------------------------------------------------------------

def _password(raw: Any, ctx: BgpContext) -> str:
    """Calico's BGPPassword `{secretKeyRef: {name, key}}`; also a plain string or `{value: ...}`."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, dict):
        return ""
    if isinstance(raw.get("value"), str):
        return str(raw["value"])
    ref = raw.get("secretKeyRef")
    if isinstance(ref, dict) and ctx.secret is not None:
        v = ctx.secret(str(ref.get("name", "")), str(ref.get("key", "")))
        if v is None:
            log.warning("bgp password secret not found", secret=ref.get("name"), key=ref.get("key"))
        return v or ""
    return ""


def _best(cands: list[tuple[IPAddress, RouteAttrs]]) -> tuple[IPAddress, RouteAttrs]:
    """Deterministic best path: local-pref, AS-path length, MED, cluster-list length, peer address."""
    return min(
        cands,
        key=lambda c: (
            -(c[1].local_pref if c[1].local_pref is not None else 100),
            len(c[1].as_path),
            c[1].med or 0,
            len(c[1].cluster_list),
            c[0].version,
            int(c[0]),
        ),
    )


def _nodes(snap: Snapshot) -> dict[str, Node]:
    return {n.name: n for n in decode_all(snap.items(NODES_PREFIX), Node)}


def _bgp_config(snap: Snapshot) -> BGPConfiguration | None:
    for c in decode_all(snap.items(BGPCONFIG_PREFIX), BGPConfiguration):
        if c.name == "default":
            return c
    return None


@functools.lru_cache(maxsize=65536)
def _affinity(key: str, value: str, nodename: str) -> IPNetwork | None:
    parsed = parse_affinity_key(key)
    if parsed is None or parsed[0] != nodename:
        return None
    try:
        aff = BlockAffinity.from_json(value)
    except Exception:  # noqa: BLE001 - a bad record is skipped, not fatal
        log.warning("bad block affinity skipped", key=key)
        return None
    if aff.state != STATE_CONFIRMED or aff.deleted:
        return None
    return parse_network(str(parsed[1]))  # the shared object, hashed once (see pycni.model)


@functools.lru_cache(maxsize=131072)
def _learned(key: str, value: str) -> tuple[IPAddress, IPNetwork, RouteAttrs] | None:
    """Parse one learned-route record (memoised: calc runs on every batch, records rarely change)."""
    parsed = parse_learned_key(key)
    if parsed is None:
        return None
    attrs = _route_attrs(value)
    if attrs is None:
        log.warning("bad learned route skipped", key=key)
        return None
    return parsed[0], parsed[1], attrs


@functools.lru_cache(maxsize=4096)
def _route_attrs(value: str) -> RouteAttrs | None:
    """The attributes JSON, parsed once per distinct text (the routes of one UPDATE share it)."""
    try:
        return RouteAttrs.from_json(json.loads(value))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class _Nets:
    """Fast containment/overlap lookups over a fixed set of networks (ipaddress is slow per call)."""

    def __init__(self, items: Iterable[tuple[IPNetwork, Any]]) -> None:
        rows = sorted(((n.version, int(n.network_address), int(n.broadcast_address), n.prefixlen, v)
                       for n, v in items), key=lambda r: (r[0], r[1]))
        self._rows = rows
        self._starts = [(r[0], r[1]) for r in rows]
        self._containing: dict[IPNetwork, Any] = {}

    def overlapping(self, net: IPNetwork) -> list[tuple[int, Any]]:
        """(prefix length, value) of every network overlapping `net` (rows starting after it are skipped)."""
        lo, hi, ver = int(net.network_address), int(net.broadcast_address), net.version
        end = bisect.bisect_right(self._starts, (ver, hi))
        return [(r[3], r[4]) for r in self._rows[:end] if r[0] == ver and r[2] >= lo]

    def containing(self, net: IPNetwork) -> Any:
        """The value of the most specific network containing `net`, or None (memoised per index)."""
        try:
            return self._containing[net]
        except KeyError:
            pass
        best: tuple[int, Any] | None = None
        for plen, val in self.overlapping(net):
            if plen <= net.prefixlen and (best is None or plen > best[0]):
                best = (plen, val)
        found = self._containing[net] = best[1] if best is not None else None
        return found


@functools.lru_cache(maxsize=4)
def _pools(records: tuple[tuple[str, str], ...]) -> tuple[list[IPPool], _Nets]:
    """The pools and their index, kept across calcs while the pool records do not change: calc runs
    on every batch of learned routes, and the per-prefix pool lookups are then dictionary hits."""
    pools = list(decode_all(iter(records), IPPool))
    return pools, _Nets((p.cidr, p) for p in pools)


def peers_for(snap: Snapshot, me: Node, nodes: Mapping[str, Node], cfg: BGPConfiguration | None,
              ctx: BgpContext) -> list[BgpPeer]:
    default_as = cfg.as_number if cfg is not None else DEFAULT_AS
    my_ip = me.ip
    assert my_ip is not None
    cluster = me.rr_cluster_id
    by_addr: dict[IPAddress, BgpPeer] = {}

    def add(p: BgpPeer) -> None:
        if p.address == my_ip or p.address in by_addr:
            return
        if p.address.version != my_ip.version:
            return
        # the shared parsed address (hashed once): it keys the announcements, thousands per step
        by_addr[p.address] = dataclasses.replace(p, address=parse_address(str(p.address)))

    def node_peer(n: Node, kind: str, password: str, local_as: int | None = None) -> BgpPeer | None:
        ip = n.ip
        if ip is None:
            return None
        return BgpPeer(
            address=ip, peer_as=n.as_number or default_as, kind=kind, local_as=local_as,
            password=password, passive=False, node=n.name,
            rr_client=bool(cluster) and n.rr_cluster_id != cluster,
        )

    mesh_on = cfg.node_to_node_mesh_enabled if cfg is not None else True
    if mesh_on:
        mesh_pw = _password(cfg.extra.get("nodeMeshPassword"), ctx) if cfg is not None else ""
        reflectors = {name for name, n in nodes.items() if n.rr_cluster_id}
        for name in sorted(nodes):
            if name == me.name:
                continue
            n = nodes[name]
            if reflectors and not cluster and name not in reflectors:
                continue  # a client peers only with the reflectors
            p = node_peer(n, KIND_MESH, mesh_pw)
            if p is not None:
                add(p)

    explicit = sorted(decode_all(snap.items(BGPPEERS_PREFIX), BGPPeer), key=lambda r: r.name)
    for kind in (KIND_NODE, KIND_GLOBAL):
        for r in explicit:
            is_global = not r.node and not r.node_selector
            if (kind == KIND_GLOBAL) != is_global:
                continue
            if r.node and r.node != me.name:
                continue
            if r.node_selector and not selector_matches(r.node_selector, me.meta.labels):
                continue
            pw = _password(r.extra.get("password"), ctx)
            if r.peer_ip is not None:
                add(BgpPeer(address=r.peer_ip, peer_as=r.as_number or default_as, kind=kind,
                            local_as=r.local_as_number, password=pw, port=r.peer_port,
                            rr_client=bool(cluster)))
            else:
                for name in sorted(nodes):
                    n = nodes[name]
                    if name == me.name or not selector_matches(r.peer_selector, n.meta.labels):
                        continue
                    p = node_peer(n, kind, pw, r.local_as_number)
                    if p is not None:
                        add(p)
    # Selector peerings are symmetric, as confd makes them: a node selected by a BGPPeer's
    # peerSelector peers back with every node that BGPPeer applies to (route reflectors learn
    # their clients this way).
    for r in explicit:
        if not r.peer_selector or not selector_matches(r.peer_selector, me.meta.labels):
            continue
        pw = _password(r.extra.get("password"), ctx)
        for name in sorted(nodes):
            n = nodes[name]
            if name == me.name:
                continue
            applies = (r.node == name) if r.node else (
                selector_matches(r.node_selector, n.meta.labels) if r.node_selector else True)
            if applies:
                p = node_peer(n, KIND_NODE if (r.node or r.node_selector) else KIND_GLOBAL, pw)
                if p is not None:
                    add(p)
    return [by_addr[a] for a in sorted(by_addr, key=lambda a: (a.version, int(a)))]


def sessions(snap: Snapshot) -> dict[IPAddress, PeerSession]:
    out: dict[IPAddress, PeerSession] = {}
    for key, value in snap.items(PEER_STATE_PREFIX):
        try:
            d = json.loads(value)
            out[ipaddress.ip_address(key[len(PEER_STATE_PREFIX):])] = PeerSession(
                state=str(d.get("state", "down")), since=float(d.get("since", 0.0)),
                eor=bool(d.get("eor", False)), session=int(d.get("session", 0)))
        except (ValueError, TypeError):
            continue
    return out


# -- the calculation -------------------------------------------------------------------------------

def calc(snap: Snapshot, ctx: BgpContext) -> BgpSpec:
    nodes = _nodes(snap)
    me = nodes.get(ctx.nodename)
    if me is None or me.ipv4_address is None:
        return BgpSpec(ready=False, sessions=sessions(snap))
    my_iface: IPInterface = me.ipv4_address
    my_ip = my_iface.ip
    cfg = _bgp_config(snap)
    default_as = cfg.as_number if cfg is not None else DEFAULT_AS
    local_as = me.as_number or default_as
    cluster = me.rr_cluster_id
    peers = peers_for(snap, me, nodes, cfg, ctx)
    peer_by_addr = {p.address: p for p in peers}
    pools, pool_index = _pools(tuple(snap.items(IPPOOLS_PREFIX)))
    program = cfg.program_cluster_routes if cfg is not None else ""

    memo = _memo(snap, ctx.nodename)
    blocks, exported = memo.blocks(snap, ctx.nodename, pool_index)

    # Our address, not "self": same meaning for every session (they all use the node address), and
    # exabgp deep-copies every "self" route per neighbour to rewrite it (see exabgp_launch.py).
    ann = memo.own_announcements(tuple(p.address for p in peers), Announcement(next_hop=str(my_ip)), exported)
    sig = (tuple(peers), cluster, my_iface, pool_index, program, blocks, local_as, ctx)
    routes, reflected = memo.learned(snap, sig, _Learned(
        peers=peers, peer_by_addr=peer_by_addr, cluster=cluster, router_id=str(my_ip), my_iface=my_iface,
        block_index=functools.partial(memo.block_index, blocks), pool_index=pool_index, program=program,
        local_as=local_as, ctx=ctx))
    for r in reflected:
        ann.update(r)
    router_id = str(my_ip)

    sess = sessions(snap)
    window_closed = snap.get(RESTART_WINDOW_KEY) == "closed"
    all_eor = all(sess.get(p.address, PeerSession()).eor for p in peers)
    return BgpSpec(
        ready=True, router_id=router_id, local_address=str(my_ip), local_as=local_as, cluster_id=cluster,
        peers=tuple(peers), own_blocks=exported, announcements=ann, routes=routes,
        hold_deletions=not (window_closed or all_eor), sessions=sess,
    )


# -- the learned-route section, incrementally ------------------------------------------------------

@dataclass(frozen=True)
class _Learned:
    """What decides the kernel route and the reflected announcements of one learned prefix."""

    peers: list[BgpPeer]
    peer_by_addr: dict[IPAddress, BgpPeer]
    cluster: str
    router_id: str
    my_iface: IPInterface
    block_index: Callable[[], _Nets | None]  # built on first use (a node with no learned routes: never)
    pool_index: _Nets
    program: str
    local_as: int
    ctx: BgpContext

    def accept(self, peer: IPAddress, prefix: IPNetwork, attrs: RouteAttrs) -> bool:
        """The loop and ownership checks a learned path must pass to be a candidate at all."""
        if peer not in self.peer_by_addr:
            return False
        if self.cluster and self.cluster in attrs.cluster_list:
            return False
        if attrs.originator_id == self.router_id or attrs.next_hop == self.my_iface.ip:
            return False
        index = self.block_index()
        return not (index is not None and index.overlapping(prefix))

    def result(self, prefix: IPNetwork, cands: dict[IPAddress, RouteAttrs]
               ) -> tuple[Route | None, dict[tuple[IPAddress, IPNetwork], Announcement]]:
        src, attrs = next(iter(cands.items())) if len(cands) == 1 else _best(list(cands.items()))
        refl: dict[tuple[IPAddress, IPNetwork], Announcement] = {}
        if self.cluster:
            sp = self.peer_by_addr[src]
            if sp.peer_as == self.local_as:
                for q in self.peers:
                    if q.address == src or q.peer_as != self.local_as:
                        continue
                    if not sp.rr_client and not q.rr_client:
                        continue
                    if attrs.originator_id and attrs.originator_id == str(q.address):
                        continue
                    refl[(q.address, prefix)] = Announcement(
                        next_hop=str(attrs.next_hop), as_path=attrs.as_path, local_pref=attrs.local_pref,
                        med=attrs.med, origin=attrs.origin,
                        originator_id=attrs.originator_id or str(src),
                        cluster_list=(self.cluster, *attrs.cluster_list),
                        communities=attrs.communities,
                    )
        r = _kernel_route(prefix, attrs.next_hop, self.pool_index.containing(prefix), self.program,
                          self.my_iface, self.ctx)
        return r, refl


#: A full recalculation of every learned prefix at least this often (s): next hops resolved
#: through the kernel (`BgpContext.resolve`) are looked up again, as a fresh calc would.
FULL_RECALC_INTERVAL = 10.0


class _Memo:
    """calc's memory of its previous run on the same Snapshot, so a batch of learned routes costs
    work in proportion to the batch, not to the table: a peer sending a thousand routes in
    fifty-route UPDATEs made every batch recompute the whole table (quadratic in the burst).

    Invisible by construction: the learned section is recomputed only for prefixes whose records
    changed (diffed by identity against the values seen last time: the Snapshot keeps unchanged
    values as the same objects), and from scratch whenever anything else it depends on changed
    (peers, pools, our blocks, cluster, ...) or FULL_RECALC_INTERVAL has passed. The unit tests
    check it against fresh calcs on random sequences."""

    def __init__(self) -> None:
        self.sig: tuple[Any, ...] | None = None
        self.full_at = 0.0
        self.items: dict[str, str] = {}
        self.cands: dict[IPNetwork, dict[IPAddress, RouteAttrs]] = {}
        self.routes: dict[IPNetwork, Route] = {}
        self.refl: dict[IPNetwork, dict[tuple[IPAddress, IPNetwork], Announcement]] = {}
        self.own_sig: tuple[Any, ...] | None = None
        self.own: dict[tuple[IPAddress, IPNetwork], Announcement] = {}
        self.pools_for: _Nets | None = None
        self.block_items: dict[str, str] = {}
        self.block_of: dict[str, tuple[tuple[int, int, int], IPNetwork, bool]] = {}
        self.block_tuple: tuple[IPNetwork, ...] = ()
        self.exported_tuple: tuple[IPNetwork, ...] = ()
        self.exp_added: list[IPNetwork] = []  # exported blocks that came / went since own_announcements
        self.exp_removed: list[IPNetwork] = []
        self.index_for: tuple[IPNetwork, ...] | None = None
        self.index: _Nets | None = None

    def blocks(self, snap: Snapshot, nodename: str, pool_index: _Nets
               ) -> tuple[tuple[IPNetwork, ...], tuple[IPNetwork, ...]]:
        """Our confirmed affine blocks in address order, and those we export (not in a disabled
        pool or one with disableBGPExport): the same tuple objects while nothing changed. The
        exported blocks that came or went since the last call are queued for own_announcements."""
        cur = snap.range(f"{HOST_PREFIX}{nodename}/")
        if pool_index is not self.pools_for:  # pools changed: every block's export decision may have
            self.pools_for, self.block_items, self.block_of = pool_index, {}, {}
            self.own_sig = None  # and the announcements are rebuilt from scratch
        prev = self.block_items
        changed = [k for k, v in cur.items() if prev.get(k) is not v]
        gone = prev.keys() - cur.keys() if len(prev) + len(changed) != len(cur) else ()
        if not changed and not gone:
            return self.block_tuple, self.exported_tuple
        for k in (*gone, *changed):
            old = self.block_of.pop(k, None)
            if old is not None and old[2]:
                self.exp_removed.append(old[1])
            v = cur.get(k)
            b = _affinity(k, v, nodename) if v is not None else None
            if b is not None:
                pool = pool_index.containing(b)
                export = pool is None or not (pool.disabled or pool.disable_bgp_export)
                self.block_of[k] = ((b.version, int(b.network_address), b.prefixlen), b, export)
                if export:
                    self.exp_added.append(b)
        self.block_items = cur
        ordered = sorted(self.block_of.values(), key=lambda e: e[0])
        self.block_tuple = tuple(e[1] for e in ordered)
        self.exported_tuple = tuple(e[1] for e in ordered if e[2])
        return self.block_tuple, self.exported_tuple

    def block_index(self, blocks: tuple[IPNetwork, ...]) -> _Nets | None:
        if not blocks:
            return None
        if self.index_for is not blocks:
            self.index_for, self.index = blocks, _Nets((b, b) for b in blocks)
        return self.index

    def own_announcements(self, peers: tuple[IPAddress, ...], own: Announcement,
                          blocks: tuple[IPNetwork, ...]) -> dict[tuple[IPAddress, IPNetwork], Announcement]:
        """{(peer, block): own} for every peer and exported block: a new dict, patched from the last
        with the blocks that came and went (unchanged entries keep their value objects, which the
        announcer compares by identity first)."""
        added, removed = self.exp_added, self.exp_removed
        self.exp_added, self.exp_removed = [], []
        if self.own_sig != (peers, own):
            self.own_sig = (peers, own)
            self.own = {(p, b): own for b in blocks for p in peers}
            return dict(self.own)
        own = self.own_sig[1]
        for b in removed:
            for p in peers:
                self.own.pop((p, b), None)
        for b in added:
            for p in peers:
                self.own[(p, b)] = own
        return dict(self.own)

    def learned(self, snap: Snapshot, sig: tuple[Any, ...], how: _Learned
                ) -> tuple[dict[IPNetwork, Route], list[dict[tuple[IPAddress, IPNetwork], Announcement]]]:
        cur = snap.range(LEARNED_PREFIX)
        now = time.monotonic()
        if sig != self.sig or now >= self.full_at:
            self.sig, self.full_at = sig, now + FULL_RECALC_INTERVAL
            self.items, self.cands, self.routes, self.refl = {}, {}, {}, {}
        prev = self.items
        changed = [k for k, v in cur.items() if prev.get(k) is not v]
        gone = prev.keys() - cur.keys() if len(prev) + len(changed) != len(cur) else ()
        touched: set[IPNetwork] = set()
        for key in (*changed, *gone):
            old = prev.get(key)
            if old is not None:
                rec = _learned(key, old)
                if rec is not None:
                    peer, prefix, _ = rec
                    c = self.cands.get(prefix)
                    if c is not None and c.pop(peer, None) is not None:
                        touched.add(prefix)
            value = cur.get(key)
            if value is not None:
                rec = _learned(key, value)
                if rec is not None and how.accept(*rec):
                    peer, prefix, attrs = rec
                    self.cands.setdefault(prefix, {})[peer] = attrs
                    touched.add(prefix)
        self.items = cur
        for prefix in touched:
            c = self.cands.get(prefix)
            if not c:
                self.cands.pop(prefix, None)
                self.routes.pop(prefix, None)
                self.refl.pop(prefix, None)
                continue
            r, refl = how.result(prefix, c)
            if r is None:
                self.routes.pop(prefix, None)
            else:
                self.routes[prefix] = r
            if refl:
                self.refl[prefix] = refl
            else:
                self.refl.pop(prefix, None)
        return dict(self.routes), list(self.refl.values())


_MEMOS: weakref.WeakKeyDictionary[Snapshot, dict[str, _Memo]] = weakref.WeakKeyDictionary()


def _memo(snap: Snapshot, nodename: str) -> _Memo:
    per_node = _MEMOS.get(snap)
    if per_node is None:
        per_node = _MEMOS[snap] = {}
    m = per_node.get(nodename)
    if m is None:
        m = per_node[nodename] = _Memo()
    return m


_RESOLVE = Route(dst=ipaddress.ip_network("0.0.0.0/32"))  # sentinel: ask the kernel


@functools.lru_cache(maxsize=131072)
def _route_for(prefix: IPNetwork, nh: IPAddress, encap: tuple[str, str] | None, program: str,
               my_iface: IPInterface, iface: str) -> Route | None:
    """The kernel route for one learned path, or `_RESOLVE` (memoised: calc runs on every batch)."""
    if program == "Disabled" or nh.version != prefix.version:
        return None
    if encap is not None:
        ipip, vxlan = encap
        if vxlan != "Never":
            return None  # VXLAN pools: felix, always
        if ipip != "Never":
            if program != "Enabled":
                return None  # IPIP pools: felix by default (programClusterRoutes)
            if ipip == "Always" or nh not in my_iface.network:
                return Route(dst=prefix, gateway=nh, oif=IPIP_DEV, onlink=True, proto=RTPROT_BGPD)
    if iface and nh in my_iface.network:
        return Route(dst=prefix, gateway=nh, oif=iface, proto=RTPROT_BGPD)
    return _RESOLVE


def _kernel_route(prefix: IPNetwork, nh: IPAddress, pool: IPPool | None, program: str,
                  my_iface: IPInterface, ctx: BgpContext) -> Route | None:
    encap = (pool.ipip_mode, pool.vxlan_mode) if pool is not None else None
    r = _route_for(prefix, nh, encap, program, my_iface, ctx.iface)
    if r is not _RESOLVE:
        return r
    # Ask the kernel how the next hop is reached: on-link (no gateway) or, for a next hop outside
    # our subnet, through a gateway (BIRD's `gateway recursive`).
    if ctx.resolve is None:
        return None
    via = ctx.resolve(nh)
    if via is None:
        return None
    gw, dev = via
    return Route(dst=prefix, gateway=gw or nh, oif=dev, proto=RTPROT_BGPD)
