"""Announcer: what each peer should hear from us, reconciled into exabgp announce/withdraw commands.

A Driver whose DeltaTracker is keyed by `(peer, prefix)` with the `Announcement` (next hop and
attributes) as value; its "dataplane" is what exabgp's adj-RIB-out holds, as far as we know.
`apply()` pipelines every pending command and waits for exabgp's acks: `done` confirms the key,
`error` leaves it pending for the next retry (for example a peer added by a reload exabgp has not
finished). When exabgp restarts, its RIB is empty, so `queue_resync()` forgets everything and the
next apply re-announces it all.

Deletions for a peer that is no longer configured send nothing: the reload removed that neighbour
and its RIB with it, and exabgp would answer `error` for an unknown neighbour forever.

Only established sessions are told anything; changes for a peer that is down wait for its "up".
exabgp 5.0.15 defers a SIGUSR1 reload while any non-passive neighbour has unsent adj-RIB-out
changes (`reactor/loop.py:_pending_adjribout`), and a neighbour that is down never sends them: one
announcement to an unreachable BGPPeer would block every later peer change. On "up" exabgp first
replays what it held for that neighbour, then our delta goes, then EOR.

End-of-RIB: exabgp runs with `manual-eor`, so after each apply that leaves nothing pending we send
EOR once per session (a session is identified by the reader's counter), telling a restarting peer
that everything we have has been sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import structlog

from pycni.bgp import exabgp_api
from pycni.bgp.exabgp_api import Announcement, IPAddress, IPNetwork
from pycni.calc.bgp import BgpSpec, PeerSession
from pycni.dataplane.delta import DeltaTracker
from pycni.errors import Transient

log = structlog.get_logger(__name__)

Key = tuple[IPAddress, IPNetwork]


class Announcer:
    name = "announcer"

    def __init__(self, send: Callable[[Sequence[str]], list[bool]], *, group: int = 200) -> None:
        self._send = send
        self._group = group
        self.tracker: DeltaTracker[Key, Announcement] = DeltaTracker()
        self._peers: set[IPAddress] = set()
        self._sessions: Mapping[IPAddress, PeerSession] = {}
        self._eor_sent: dict[IPAddress, int] = {}
        self.ready = False

    def set_spec(self, spec: BgpSpec) -> None:
        if not spec.ready:
            if self.ready:
                # Our Node is gone (decommissioned): take everything back from the peers.
                log.info("own node gone: withdrawing every announcement")
                self.tracker.replace_desired({})
            return
        self.ready = True
        self.tracker.replace_desired(spec.announcements)
        self._peers = {p.address for p in spec.peers}
        self._sessions = spec.sessions

    def queue_resync(self) -> None:
        """Only after an exabgp restart: its RIB is empty (nothing else can drift it)."""

    def exabgp_restarted(self) -> None:
        self.tracker.replace_dataplane({})
        self._eor_sent.clear()

    def apply(self) -> bool:
        if not self.ready:
            return True
        # Group: prefixes with the same attributes going to the same set of neighbours make one
        # command (`neighbor A , neighbor B announce attributes ... nlri P1 P2 ...`, up to `group`
        # prefixes): exabgp's API intake is per prefix and per command, not per neighbour.
        up = {p for p, s in self._sessions.items() if s.state == "up"}
        withdraw_to: dict[tuple[str, IPNetwork], set[IPAddress]] = {}
        for key, old in self.tracker.pending_deletions():
            if key[0] not in self._peers:
                self.tracker.on_dataplane_deleted(key)  # neighbour gone from exabgp with its RIB
                continue
            if key[0] in up:
                # the next hop we announced (a "self" here would cost exabgp a deepcopy per route)
                withdraw_to.setdefault((old.next_hop, key[1]), set()).add(key[0])
        announce_to: dict[tuple[Announcement, IPNetwork], set[IPAddress]] = {}
        for key, ann in self.tracker.pending_updates():
            if key[0] in up:
                announce_to.setdefault((ann, key[1]), set()).add(key[0])
        groups: dict[tuple[Announcement | None, str, tuple[IPAddress, ...]], list[IPNetwork]] = {}

        def add(ann: Announcement | None, nh: str, prefix: IPNetwork, peers: set[IPAddress]) -> None:
            together = tuple(sorted(peers, key=lambda a: (a.version, int(a))))
            groups.setdefault((ann, nh, together), []).append(prefix)

        for (nh, prefix), to in withdraw_to.items():
            add(None, nh, prefix, to)
        for (ann, prefix), to in announce_to.items():
            add(ann, "", prefix, to)
        ops: list[tuple[str, list[Key], Announcement | None]] = []
        order = sorted(groups.items(),
                       key=lambda g: (g[0][0] is not None, g[0][1], [str(p) for p in g[0][2]]))
        for (what, nh, targets), pfxs in order:
            for i in range(0, len(pfxs), self._group):
                chunk = pfxs[i:i + self._group]
                single = len(chunk) == 1 and len(targets) == 1
                if what is None:
                    cmd = (exabgp_api.withdraw_cmd(targets[0], chunk[0]) if single
                           else exabgp_api.withdraw_many_cmd(targets, chunk, nh))
                else:
                    cmd = (exabgp_api.announce_cmd(targets[0], chunk[0], what) if single
                           else exabgp_api.announce_many_cmd(targets, chunk, what))
                ops.append((cmd, [(p, x) for p in targets for x in chunk], what))
        ok = True
        if ops:
            try:
                acks = self._send([c for c, _, _ in ops])
            except Transient as e:
                log.warning("announce failed", error=str(e), pending=len(ops))
                return False
            errors = 0
            for (cmd, keys, a), good in zip(ops, acks, strict=True):
                if not good:
                    errors += 1
                    ok = False
                    log.debug("exabgp refused", command=cmd[:200])
                    continue
                for key in keys:
                    if a is None:
                        self.tracker.on_dataplane_deleted(key)
                    else:
                        self.tracker.on_dataplane_set(key, a)
            log.info("announcements sent", commands=len(ops), routes=sum(len(k) for _, k, _ in ops),
                     errors=errors)
        if ok:
            ok = self._send_eors()
        return ok

    def _send_eors(self) -> bool:
        due = [(p, s.session) for p, s in sorted(self._sessions.items(), key=lambda x: str(x[0]))
               if p in self._peers and s.state == "up" and self._eor_sent.get(p) != s.session]
        if not due:
            return True
        try:
            acks = self._send([exabgp_api.eor_cmd(p, "ipv4 unicast" if p.version == 4 else "ipv6 unicast")
                               for p, _ in due])
        except Transient:
            return False
        for (p, n), good in zip(due, acks, strict=True):
            if good:
                self._eor_sent[p] = n
                log.info("end-of-rib sent", peer=str(p), session=n)
        return True  # a session that just dropped makes `error`; the next "up" retries
