"""Speaker (graceful-restart helper), Announcer (acks, resync, EOR) and the learned-route driver."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

from pycni.bgp.announcer import Announcer
from pycni.bgp.drivers import LearnedRoutes
from pycni.bgp.exabgp_api import Announcement, EndOfRib, PeerState, RouteAnnounce, RouteAttrs, RouteWithdraw
from pycni.bgp.speaker import Speaker
from pycni.calc.bgp import RESTART_WINDOW_KEY, BgpPeer, BgpSpec, PeerSession, learned_key, peer_state_key
from pycni.constants import RTPROT_BGPD
from pycni.dataplane.netlink import Route
from pycni.datastore import Batch, Event, SyncStatus, Update
from pycni.errors import Transient
from pycni.testing.clock import FakeClock

ip = ipaddress.ip_address
net = ipaddress.ip_network
P = ip("10.99.0.12")


class Sink:
    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self.events: list[Event] = []

    def __call__(self, ev: Event) -> None:
        self.events.append(ev)
        for u in ev.updates if isinstance(ev, Batch) else (ev,):
            if isinstance(u, Update):
                if u.value is None:
                    self.state.pop(u.key, None)
                else:
                    self.state[u.key] = u.value


def ann(prefix: str, peer: ipaddress.IPv4Address = P) -> RouteAnnounce:
    return RouteAnnounce(peer, net(prefix), RouteAttrs(next_hop=peer))


def test_speaker_in_sync_at_once_and_tracks_routes() -> None:
    sink = Sink()
    sp = Speaker(sink, clock=FakeClock())
    sp.start()
    assert sink.events == [SyncStatus.IN_SYNC]
    sp.handle(PeerState(P, "up"))
    sp.handle(ann("10.244.2.0/26"))
    k = learned_key(P, net("10.244.2.0/26"))
    assert json.loads(sink.state[k])["next_hop"] == "10.99.0.12"
    assert json.loads(sink.state[peer_state_key(P)])["state"] == "up"
    sp.handle(RouteWithdraw(P, net("10.244.2.0/26")))
    assert k not in sink.state


def test_graceful_restart_helper_retains_then_sweeps_at_eor() -> None:
    sink, clock = Sink(), FakeClock()
    sp = Speaker(sink, clock=clock, stale_time=60)
    sp.handle(PeerState(P, "up"))
    sp.handle(ann("10.244.2.0/26"))
    sp.handle(ann("10.244.3.0/26"))
    sp.handle(PeerState(P, "down", "closing connection"))
    assert learned_key(P, net("10.244.2.0/26")) in sink.state  # retained while the peer restarts
    assert json.loads(sink.state[peer_state_key(P)])["state"] == "down"
    sp.handle(PeerState(P, "up"))
    sp.handle(ann("10.244.2.0/26"))  # re-announced: fresh
    sp.handle(EndOfRib(P))
    assert learned_key(P, net("10.244.2.0/26")) in sink.state
    assert learned_key(P, net("10.244.3.0/26")) not in sink.state  # stale at EOR: gone
    assert json.loads(sink.state[peer_state_key(P)])["eor"] is True


def test_stale_routes_expire_and_notification_flushes() -> None:
    sink, clock = Sink(), FakeClock()
    sp = Speaker(sink, clock=clock, stale_time=60, restart_window=30)
    sp.handle(PeerState(P, "up"))
    sp.handle(ann("10.244.2.0/26"))
    sp.handle(PeerState(P, "down", "closing connection"))
    clock.advance(31)
    sp.tick()
    assert sink.state[RESTART_WINDOW_KEY] == "closed"
    assert learned_key(P, net("10.244.2.0/26")) in sink.state
    clock.advance(30)
    sp.tick()
    assert learned_key(P, net("10.244.2.0/26")) not in sink.state
    sp.handle(PeerState(P, "up"))
    sp.handle(ann("10.244.5.0/26"))
    sp.handle(PeerState(P, "down", "notification received (6,2)"))
    assert learned_key(P, net("10.244.5.0/26")) not in sink.state


def no_eor(cmds: list[str]) -> list[str]:
    return [c for c in cmds if " announce eor " not in c]


class FakeExa:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.refuse: set[str] = set()
        self.down = False

    def __call__(self, cmds: Sequence[str]) -> list[bool]:
        if self.down:
            raise Transient("not connected")
        self.sent.extend(cmds)
        return [c not in self.refuse for c in cmds]


def spec(
    ann: dict[tuple[ipaddress.IPv4Address, ipaddress.IPv4Network], Announcement],
    peers: Sequence[str] = ("10.99.0.12",),
    sessions: dict[str, PeerSession] | None = None,
) -> BgpSpec:
    if sessions is None:  # default: every peer established
        sessions = {p: PeerSession(state="up", session=1) for p in peers}
    return BgpSpec(
        ready=True,
        peers=tuple(BgpPeer(ip(p), 64512) for p in peers),
        announcements=ann,
        sessions={ip(k): v for k, v in sessions.items()},
    )


def test_announcer_minimal_commands_errors_retry_and_eor() -> None:
    exa = FakeExa()
    a = Announcer(exa, group=1)
    b1, b2 = net("10.244.1.0/26"), net("10.244.9.0/26")
    up = {"10.99.0.12": PeerSession(state="up", session=1)}
    a.set_spec(spec({(P, b1): Announcement(), (P, b2): Announcement()}, sessions=up))
    exa.refuse = {"neighbor 10.99.0.12 announce route 10.244.9.0/26 next-hop self"}
    assert a.apply() is False  # one refused: pending, no EOR yet
    assert exa.sent == [
        "neighbor 10.99.0.12 announce route 10.244.1.0/26 next-hop self",
        "neighbor 10.99.0.12 announce route 10.244.9.0/26 next-hop self",
    ]
    exa.refuse, exa.sent = set(), []
    assert a.apply() is True
    assert exa.sent == [
        "neighbor 10.99.0.12 announce route 10.244.9.0/26 next-hop self",
        "neighbor 10.99.0.12 announce eor ipv4 unicast",
    ]
    exa.sent = []
    assert a.apply() is True and exa.sent == []  # in sync; EOR once per session
    a.set_spec(spec({(P, b1): Announcement()}, sessions=up))
    assert a.apply() is True and exa.sent == ["neighbor 10.99.0.12 withdraw route 10.244.9.0/26"]


def test_announcer_groups_prefixes_sharing_attributes() -> None:
    exa = FakeExa()
    a = Announcer(exa, group=2)
    bs = [net(f"10.244.{i}.0/26") for i in range(3)]
    a.set_spec(spec({(P, b): Announcement() for b in bs}))
    assert a.apply()
    assert no_eor(exa.sent) == [
        "neighbor 10.99.0.12 announce attributes next-hop self nlri 10.244.0.0/26 10.244.1.0/26",
        "neighbor 10.99.0.12 announce route 10.244.2.0/26 next-hop self",
    ]
    exa.sent = []
    a.set_spec(spec({}))
    assert a.apply() and no_eor(exa.sent) == [
        "neighbor 10.99.0.12 withdraw attributes next-hop self nlri 10.244.0.0/26 10.244.1.0/26",
        "neighbor 10.99.0.12 withdraw route 10.244.2.0/26",
    ]


def test_announcer_groups_neighbours_and_waits_for_down_ones() -> None:
    exa = FakeExa()
    a = Announcer(exa)
    q, later = ip("10.99.0.13"), ip("10.99.0.14")
    b = net("10.244.1.0/26")
    sessions = {
        "10.99.0.12": PeerSession(state="up", session=1),
        "10.99.0.13": PeerSession(state="up", session=1),
        "10.99.0.14": PeerSession(state="down"),
    }
    want = {(P, b): Announcement(), (q, b): Announcement(), (later, b): Announcement()}
    peers = ("10.99.0.12", "10.99.0.13", "10.99.0.14")
    a.set_spec(spec(want, peers=peers, sessions=sessions))
    assert a.apply() is True  # a down peer is not a failure: it waits for its session
    assert (
        exa.sent[0]
        == "neighbor 10.99.0.12 , neighbor 10.99.0.13 announce attributes next-hop self nlri 10.244.1.0/26"
    )
    assert set(a.tracker.dataplane) == {(P, b), (q, b)}
    exa.sent = []
    sessions["10.99.0.14"] = PeerSession(state="up", session=1)
    a.set_spec(spec(want, peers=peers, sessions=sessions))
    assert a.apply() and exa.sent == [
        "neighbor 10.99.0.14 announce route 10.244.1.0/26 next-hop self",
        "neighbor 10.99.0.14 announce eor ipv4 unicast",
    ]


def test_announcer_withdraws_everything_when_our_node_goes() -> None:
    exa = FakeExa()
    a = Announcer(exa, group=1)
    a.set_spec(spec({(P, net("10.244.1.0/26")): Announcement()}))
    assert a.apply()
    exa.sent = []
    a.set_spec(BgpSpec(ready=False))
    assert a.apply() and exa.sent == ["neighbor 10.99.0.12 withdraw route 10.244.1.0/26"]


def test_announcer_resends_everything_after_exabgp_restart_and_skips_removed_peers() -> None:
    exa = FakeExa()
    a = Announcer(exa)
    b1 = net("10.244.1.0/26")
    a.set_spec(spec({(P, b1): Announcement()}))
    assert a.apply()
    exa.down = True
    a.exabgp_restarted()
    assert a.apply() is False
    exa.down, exa.sent = False, []
    assert a.apply() and no_eor(exa.sent) == [
        "neighbor 10.99.0.12 announce route 10.244.1.0/26 next-hop self"
    ]
    exa.sent = []
    a.set_spec(spec({}, peers=()))  # the peer is gone from exabgp with its RIB: nothing to send
    assert a.apply() and no_eor(exa.sent) == [] and not a.tracker.dataplane


class FakeNl:
    def __init__(self, routes: list[Route]) -> None:
        self.table = {r.dst: r for r in routes}
        self.ops: list[str] = []

    def routes(self, *, table: int = 254, proto: int | None = None) -> list[Route]:
        return [r for r in self.table.values() if proto is None or r.proto == proto]

    def route_replace(self, r: Route) -> None:
        self.ops.append(f"replace {r.dst}")
        self.table[r.dst] = r

    def route_delete(self, r: Route) -> bool:
        self.ops.append(f"delete {r.dst}")
        return self.table.pop(r.dst, None) is not None


def test_learned_routes_hold_deletions_until_released_then_sweep_and_repair() -> None:
    old = Route(dst=net("10.244.7.0/26"), gateway=ip("10.99.0.17"), oif="eth0", proto=RTPROT_BGPD)
    other = Route(dst=net("10.1.0.0/16"), gateway=ip("10.99.0.1"), oif="eth0", proto=3)
    nl = FakeNl([old, other])
    drv = LearnedRoutes(nl)  # type: ignore[arg-type]
    want = Route(dst=net("10.244.2.0/26"), gateway=ip("10.99.0.12"), oif="eth0", proto=RTPROT_BGPD)
    s = BgpSpec(ready=True, routes={want.dst: want}, hold_deletions=True)
    drv.set_spec(s)
    assert drv.apply() and nl.ops == ["replace 10.244.2.0/26"]  # the old route survives our restart
    drv.set_spec(BgpSpec(ready=True, routes={want.dst: want}, hold_deletions=False))
    assert drv.apply() and nl.ops[-1] == "delete 10.244.7.0/26"
    assert other.dst in nl.table  # never touches other protocols' routes
    drv.set_spec(BgpSpec(ready=True, routes={want.dst: want}, hold_deletions=True))  # latched: stays released
    del nl.table[want.dst]  # deleted by hand
    drv.queue_resync()
    assert drv.apply() and nl.table[want.dst] == want


def test_one_update_line_is_one_batch_and_the_agent_applies_it_whole() -> None:
    from pycni.agent import Agent

    sink = Sink()
    sp = Speaker(sink, clock=FakeClock())
    sp.handle(PeerState(P, "up"))
    routes = [ann(f"10.244.{i}.0/26") for i in range(50)] + [RouteWithdraw(P, net("10.244.0.0/26"))]
    sp.handle_many(list(routes))
    assert isinstance(sink.events[-1], Batch) and len(sink.events[-1].updates) == 51
    assert learned_key(P, net("10.244.0.0/26")) not in sink.state
    assert learned_key(P, net("10.244.49.0/26")) in sink.state
    sp.handle_many([ann("10.244.60.0/26")])
    assert isinstance(sink.events[-1], Update)  # a single route is not wrapped
    # the agent applies a batch as the updates it holds
    seen: list[int] = []
    agent: Agent[int] = Agent(name="t", calc=lambda s: seen.append(len(s)) or len(s), bindings=[],
                              sources=("bgp",))
    emit = agent.emitter("bgp")
    emit(SyncStatus.IN_SYNC)
    for ev in sink.events:
        if not isinstance(ev, SyncStatus):
            emit(ev)
    agent.step()
    assert seen == [len(sink.state)] and agent.snapshot.get(learned_key(P, net("10.244.1.0/26"))) is not None
