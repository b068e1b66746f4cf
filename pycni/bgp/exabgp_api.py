"""exabgp's line API: our commands out, its JSON events in, as typed values.

exabgp's JSON encoder builds text by string concatenation (`reactor/api/response/json.py`), so we
treat its output as an external contract: parse with `json`, accept the shapes 4.2 and 5.0 emit,
and pin golden samples captured from the real 5.0.15 (`tests/fixtures/exabgp/`). Anything we do not
understand (keepalives, opens, notifications, unknown families) decodes to nothing rather than
raising, so one odd line never stops the speaker.

Commands are the text exabgp's `announce`/`withdraw` parser accepts, one per line, always scoped to
one neighbor (`neighbor 10.99.0.12 announce route ...`): the announcer tracks what each peer has
been told, which is what makes reflection and per-peer withdrawal possible.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pycni.model import IPAddress, IPNetwork, parse_address, parse_network


@dataclass(frozen=True)
class RouteAttrs:
    """The path attributes we act on (and carry when reflecting)."""

    next_hop: IPAddress
    as_path: tuple[int, ...] = ()
    local_pref: int | None = None
    med: int | None = None
    origin: str = "igp"
    originator_id: str | None = None
    cluster_list: tuple[str, ...] = ()
    communities: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"next_hop": str(self.next_hop)}
        if self.as_path:
            d["as_path"] = list(self.as_path)
        if self.local_pref is not None:
            d["local_pref"] = self.local_pref
        if self.med is not None:
            d["med"] = self.med
        if self.origin != "igp":
            d["origin"] = self.origin
        if self.originator_id:
            d["originator_id"] = self.originator_id
        if self.cluster_list:
            d["cluster_list"] = list(self.cluster_list)
        if self.communities:
            d["communities"] = list(self.communities)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RouteAttrs:
        return cls(
            next_hop=parse_address(d["next_hop"]),
            as_path=tuple(int(a) for a in d.get("as_path", ())),
            local_pref=d.get("local_pref"),
            med=d.get("med"),
            origin=d.get("origin", "igp"),
            originator_id=d.get("originator_id"),
            cluster_list=tuple(d.get("cluster_list", ())),
            communities=tuple(d.get("communities", ())),
        )


@dataclass(frozen=True)
class PeerState:
    peer: IPAddress
    state: str  # "connected" | "up" | "down"
    reason: str = ""


@dataclass(frozen=True)
class RouteAnnounce:
    peer: IPAddress
    prefix: IPNetwork
    attrs: RouteAttrs


@dataclass(frozen=True)
class RouteWithdraw:
    peer: IPAddress
    prefix: IPNetwork


@dataclass(frozen=True)
class EndOfRib:
    peer: IPAddress
    family: str = "ipv4 unicast"


@dataclass(frozen=True)
class Ack:
    ok: bool


BgpEvent = PeerState | RouteAnnounce | RouteWithdraw | EndOfRib | Ack

_FAMILIES = ("ipv4 unicast", "ipv6 unicast")


def _peer(msg: dict[str, Any]) -> IPAddress | None:
    nb = msg.get("neighbor")
    if not isinstance(nb, dict):
        return None
    addr = nb.get("address")
    peer = addr.get("peer") if isinstance(addr, dict) else nb.get("ip")
    try:
        return parse_address(str(peer))
    except ValueError:
        return None


def _attrs(raw: dict[str, Any], next_hop: IPAddress) -> RouteAttrs:
    as_path: list[int] = []
    ap = raw.get("as-path")
    if isinstance(ap, list):
        as_path = [int(a) for a in ap if isinstance(a, int) or str(a).isdigit()]
    elif isinstance(ap, dict):  # 5.x may emit segments: {"0": {"element": "as-sequence", "value": [..]}}
        for seg in ap.values():
            if isinstance(seg, dict):
                as_path.extend(int(a) for a in seg.get("value", []))
    cl = raw.get("cluster-list") or []
    comms = raw.get("community") or []
    return RouteAttrs(
        next_hop=next_hop,
        as_path=tuple(as_path),
        local_pref=raw.get("local-preference"),
        med=raw.get("med"),
        origin=str(raw.get("origin", "igp")),
        originator_id=raw.get("originator-id"),
        cluster_list=tuple(str(c) for c in cl),
        communities=tuple(":".join(str(x) for x in c) if isinstance(c, list) else str(c) for c in comms),
    )


def decode(line: str) -> list[BgpEvent]:
    """Decode one line from exabgp (a JSON event or an ack); [] for what we ignore."""
    line = line.strip()
    if not line:
        return []
    if line == "done":
        return [Ack(True)]
    if line == "error":
        return [Ack(False)]
    if not line.startswith("{"):
        return []
    try:
        msg = json.loads(line)
    except ValueError:
        return []
    if not isinstance(msg, dict):
        return []
    kind = msg.get("type")
    peer = _peer(msg)
    if peer is None:
        return []
    nb = msg["neighbor"]
    if kind == "state":
        state = nb.get("state", msg.get("state"))
        return [PeerState(peer, str(state), str(nb.get("reason", "")))]
    if kind != "update":
        return []
    message = nb.get("message")
    if not isinstance(message, dict):
        return []
    if "eor" in message:
        eor = message["eor"]
        return [EndOfRib(peer, f"{eor.get('afi', 'ipv4')} {eor.get('safi', 'unicast')}")]
    upd = message.get("update")
    if not isinstance(upd, dict):
        return []
    out: list[BgpEvent] = []
    for fam, entries in (upd.get("withdraw") or {}).items():
        if fam not in _FAMILIES or not isinstance(entries, list):
            continue
        for e in entries:
            try:
                out.append(RouteWithdraw(peer, parse_network(e["nlri"] if isinstance(e, dict) else e)))
            except (KeyError, ValueError):
                continue
    raw_attrs = upd.get("attribute") or {}
    for fam, by_nh in (upd.get("announce") or {}).items():
        if fam not in _FAMILIES or not isinstance(by_nh, dict):
            continue
        for nh, entries in by_nh.items():
            try:
                attrs = _attrs(raw_attrs, parse_address(nh))
            except ValueError:
                continue
            for e in entries or []:
                try:
                    pfx = parse_network(e["nlri"] if isinstance(e, dict) else e)
                except (KeyError, ValueError):
                    continue
                out.append(RouteAnnounce(peer, pfx, attrs))
    return out


# -- commands ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Announcement:
    """What we tell one peer about one prefix (the announcer's DeltaTracker value)."""

    next_hop: str = "self"
    as_path: tuple[int, ...] = ()
    local_pref: int | None = None
    med: int | None = None
    origin: str = "igp"
    originator_id: str | None = None
    cluster_list: tuple[str, ...] = field(default=())
    communities: tuple[str, ...] = ()


def announce_cmd(peer: IPAddress | str, prefix: IPNetwork | str, a: Announcement) -> str:
    return f"neighbor {peer} announce route {prefix} {_attr_text(a)}"


def _attr_text(a: Announcement) -> str:
    parts = [f"next-hop {a.next_hop}"]
    if a.origin != "igp":
        parts.append(f"origin {a.origin}")
    if a.as_path:
        parts.append("as-path [ " + " ".join(str(x) for x in a.as_path) + " ]")
    if a.local_pref is not None:
        parts.append(f"local-preference {a.local_pref}")
    if a.med is not None:
        parts.append(f"med {a.med}")
    if a.originator_id:
        parts.append(f"originator-id {a.originator_id}")
    if a.cluster_list:
        parts.append("cluster-list [ " + " ".join(a.cluster_list) + " ]")
    if a.communities:
        parts.append("community [ " + " ".join(a.communities) + " ]")
    return " ".join(parts)


Peers = IPAddress | str | Sequence[IPAddress | str]
Prefixes = Sequence[IPNetwork | str]


def _selector(peers: Peers) -> str:
    if isinstance(peers, str) or not isinstance(peers, Sequence):
        return f"neighbor {peers}"
    return " , ".join(f"neighbor {p}" for p in peers)


def _nlri(prefixes: Prefixes) -> str:
    return "nlri " + " ".join(str(p) for p in prefixes)


def announce_many_cmd(peers: Peers, prefixes: Prefixes, a: Announcement) -> str:
    """One command for many prefixes sharing their attributes, to one or several neighbours (one ack;
    exabgp handles each prefix once for all the neighbours named, `neighbor A , neighbor B ...`)."""
    return f"{_selector(peers)} announce attributes {_attr_text(a)} {_nlri(prefixes)}"


def withdraw_many_cmd(peers: Peers, prefixes: Prefixes, next_hop: str = "self") -> str:
    return f"{_selector(peers)} withdraw attributes next-hop {next_hop} {_nlri(prefixes)}"


def withdraw_cmd(peer: IPAddress | str, prefix: IPNetwork | str) -> str:
    return f"neighbor {peer} withdraw route {prefix}"


def eor_cmd(peer: IPAddress | str, family: str = "ipv4 unicast") -> str:
    return f"neighbor {peer} announce eor {family}"


def commands_text(cmds: Sequence[str]) -> bytes:
    return "".join(c + "\n" for c in cmds).encode()
