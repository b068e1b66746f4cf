"""Render exabgp.conf from the peer set, deterministically (written atomically by `pycni.atomic`).

One `template` holds what every session shares (our router id and address, the API process, the
families, graceful restart, `manual-eor`), and one `neighbor` block per peer `inherit`s it and adds
only what differs (peer AS, local AS override, password, passive, description). Output depends
only on the inputs, sorted by peer address, so an unchanged peer set renders byte-identical text
and the config driver can skip the reload.

Why these settings:
- `manual-eor true`: exabgp would otherwise send End-of-RIB as soon as a session opens, before
  bgpd has announced anything through the API. A restarting peer's neighbours (BIRD with graceful
  restart, or another pycni-bgpd) then flush our routes on EOR. bgpd sends EOR itself once the
  announcer has caught up.
- `adj-rib-out true`: exabgp keeps what the API announced and replays it when a session
  re-establishes, so a flapping session needs no help from bgpd.
- `adj-rib-in false`: bgpd keeps what each peer sent (the speaker's learned keys, with its own
  graceful-restart handling), so exabgp's copy was only cost: ~15% of its CPU per received route.
- `capability { graceful-restart N; }`: peers keep our routes for N seconds while we restart.
- `passive` only when a peer asks for it: between pycni nodes both sides dial (see
  `pycni.calc.bgp`), exabgp listens on the node address and resolves the collision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pycni.calc.bgp import BgpPeer
from pycni.errors import Invalid


@dataclass(frozen=True)
class SpeakerSettings:
    """Per-process settings that are not per peer."""

    router_id: str
    local_address: str
    local_as: int
    relay_argv: tuple[str, ...]  # the command exabgp runs as the API process
    hold_time: int = 90
    graceful_restart: int = 120
    families: tuple[str, ...] = ("ipv4 unicast",)


def _quote(s: str, what: str) -> str:
    if any(c in s for c in "\"\n\r;{}") or not s:
        raise Invalid(f"{what}: characters exabgp cannot take in a config string", field=what)
    return f'"{s}"'


def render(settings: SpeakerSettings, peers: Sequence[BgpPeer]) -> str:
    run = " ".join(settings.relay_argv)
    fams = " ".join(f"{f};" for f in settings.families)
    lines = [
        "# Rendered by pycni-bgpd; do not edit (it is rewritten on every peer change).",
        f"process pycni {{ run {run}; encoder json; }}",
        "template {",
        "    neighbor pycni {",
        f"        router-id {settings.router_id};",
        f"        local-address {settings.local_address};",
        f"        local-as {settings.local_as};",
        f"        hold-time {settings.hold_time};",
        "        adj-rib-out true;",
        "        adj-rib-in false;",
        "        manual-eor true;",
        "        group-updates true;",
        f"        family {{ {fams} }}",
        f"        capability {{ graceful-restart {settings.graceful_restart}; }}",
        "        api { processes [ pycni ]; neighbor-changes; receive { parsed; update; } }",
        "    }",
        "}",
    ]
    for p in sorted(peers, key=lambda p: (p.address.version, int(p.address))):
        body = [f"inherit pycni; peer-as {p.peer_as}; description {_quote(p.name, 'description')};"]
        if p.local_as is not None and p.local_as != settings.local_as:
            body.append(f"local-as {p.local_as};")
        if p.password:
            body.append(f"md5-password {_quote(p.password, f'password of {p.name}')};")
        if p.passive:
            body.append("passive true;")
        if p.port and p.port != 179:
            body.append(f"connect {p.port};")
        lines.append(f"neighbor {p.address} {{ {' '.join(body)} }}")
    return "\n".join(lines) + "\n"
