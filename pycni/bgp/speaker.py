"""Speaker: exabgp's events become snapshot Updates under the synthetic `/pycni/bgp/` key space.

BGP is just another Agent source: a learned route is `Update(/pycni/bgp/learned/<peer>/<net>-<len>,
attrs JSON)`, a withdrawal is that key with `None`, and each session's state is
`/pycni/bgp/peer/<peer>` = `{"state", "since", "eor", "session"}`. The source reports IN_SYNC at
once: it has told the agent everything it knows (nothing yet), and holding the whole agent until
the peers converge would keep exabgp from ever being configured.

Graceful restart, receiving side (RFC 4724's "helper"): when a session drops, the peer's routes are
kept (stale) rather than withdrawn, so traffic keeps flowing while the peer restarts. When the
session comes back, what the peer re-announces is fresh again; at its End-of-RIB every route still
stale is withdrawn. If the peer does not come back within `stale_time`, its stale routes go. A peer
removed from the configuration needs nothing here: calc ignores routes from peers not in the set.

Graceful restart, restarting side: `RESTART_WINDOW_KEY` is set to "closed" `restart_window` seconds
after start, which lets the route driver delete (see `BgpSpec.hold_deletions`).

Thread: everything here runs on the exabgp reader thread, plus `tick()` from a timer thread, hence
the lock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import structlog

from pycni.bgp.exabgp_api import BgpEvent, EndOfRib, IPAddress, PeerState, RouteAnnounce, RouteWithdraw
from pycni.calc.bgp import RESTART_WINDOW_KEY, learned_key, peer_state_key
from pycni.datastore import Batch, Emit, SyncStatus, Update
from pycni.testing.clock import Clock, SystemClock

log = structlog.get_logger(__name__)


class Speaker:
    def __init__(self, emit: Emit, *, clock: Clock | None = None, stale_time: float = 120.0,
                 restart_window: float = 120.0, wallclock: Callable[[], float] = time.time) -> None:
        self._emit = emit
        self._clock = clock or SystemClock()
        self._wall = wallclock
        self.stale_time = stale_time
        self._window_ends = self._clock.now() + restart_window
        self._window_closed = False
        self._lock = threading.Lock()
        self._routes: dict[IPAddress, set[str]] = {}  # peer -> learned keys we emitted
        self._stale: dict[IPAddress, set[str]] = {}  # peer -> keys not refreshed since the session began
        self._down_at: dict[IPAddress, float] = {}
        self._session: dict[IPAddress, int] = {}
        self._state: dict[IPAddress, dict[str, object]] = {}
        self._rev = 0
        self._attrs_json: tuple[object, str] = (None, "")  # the last attributes and their JSON
        self._batch: list[Update] | None = None  # collecting (handle_many) instead of emitting

    def start(self) -> None:
        self._emit(SyncStatus.IN_SYNC)

    # -- emit helpers ---------------------------------------------------------------------------
    @property
    def emitted(self) -> int:
        """Updates emitted so far (the daemon uses the rate to coalesce bursts)."""
        return self._rev

    def _put(self, key: str, value: str | None) -> None:
        self._rev += 1
        if self._batch is not None:
            self._batch.append(Update(key, value, self._rev))
        else:
            self._emit(Update(key, value, self._rev))

    def _set_state(self, peer: IPAddress, **kw: object) -> None:
        st = self._state.setdefault(peer, {"state": "down", "since": 0.0, "eor": False, "session": 0})
        st.update(kw)
        self._put(peer_state_key(peer), json.dumps(st, sort_keys=True))

    def _drop(self, peer: IPAddress, keys: set[str]) -> None:
        for k in sorted(keys):
            self._put(k, None)
        self._routes.get(peer, set()).difference_update(keys)

    # -- events ---------------------------------------------------------------------------------
    def handle(self, ev: BgpEvent) -> None:
        with self._lock:
            self._handle(ev)

    def handle_many(self, evs: list[BgpEvent]) -> None:
        """The events of one exabgp line (one UPDATE: up to hundreds of routes), emitted as one Batch."""
        with self._lock:
            self._batch = []
            try:
                for ev in evs:
                    self._handle(ev)
            finally:
                batch, self._batch = self._batch, None
                if batch:
                    self._emit(batch[0] if len(batch) == 1 else Batch(tuple(batch)))

    def _handle(self, ev: BgpEvent) -> None:
        if isinstance(ev, RouteAnnounce):
            k = learned_key(ev.peer, ev.prefix)
            self._routes.setdefault(ev.peer, set()).add(k)
            self._stale.get(ev.peer, set()).discard(k)
            # the routes of one UPDATE share one RouteAttrs object: encode it once
            cached, text = self._attrs_json
            if cached is not ev.attrs:
                text = json.dumps(ev.attrs.to_json(), sort_keys=True)
                self._attrs_json = (ev.attrs, text)
            self._put(k, text)
        elif isinstance(ev, RouteWithdraw):
            k = learned_key(ev.peer, ev.prefix)
            self._routes.get(ev.peer, set()).discard(k)
            self._stale.get(ev.peer, set()).discard(k)
            self._put(k, None)
        elif isinstance(ev, EndOfRib):
            stale = self._stale.pop(ev.peer, set())
            if stale:
                log.info("stale routes swept at end-of-rib", peer=str(ev.peer), routes=len(stale))
            self._drop(ev.peer, stale)
            self._set_state(ev.peer, eor=True)
        elif isinstance(ev, PeerState):
            self._peer_state(ev.peer, ev.state, ev.reason)

    def _peer_state(self, peer: IPAddress, state: str, reason: str = "") -> None:
        was = self._state.get(peer, {}).get("state")
        if state == "up":
            n = self._session.get(peer, 0) + 1
            self._session[peer] = n
            self._down_at.pop(peer, None)
            # Everything we hold from this peer is stale until it re-announces it (or sends EOR).
            self._stale[peer] = set(self._routes.get(peer, set()))
            log.info("bgp session up", peer=str(peer), session=n, retained=len(self._stale[peer]))
            self._set_state(peer, state="up", since=self._wall(), eor=False, session=n)
        else:
            if was == "up":
                log.info("bgp session down", peer=str(peer), reason=reason,
                         retained=len(self._routes.get(peer, set())))
            if state == "down" and reason.startswith("notification"):
                # A NOTIFICATION (e.g. Cease, administrative shutdown) ends graceful restart: the
                # peer meant to go (RFC 4724 helpers retain routes only when the TCP session just
                # died). exabgp's own graceful shutdown sends none, so pycni peers are retained.
                keys = set(self._routes.get(peer, set()))
                if keys:
                    log.info("peer routes withdrawn after notification", peer=str(peer), routes=len(keys))
                self._stale.pop(peer, None)
                self._down_at.pop(peer, None)
                self._drop(peer, keys)
            elif state == "down" and peer not in self._down_at:
                self._down_at[peer] = self._clock.now()
            info = {"connected": "connect", "down": "down"}.get(state, state)
            self._set_state(peer, state=info, since=self._wall() if was != info else
                            self._state.get(peer, {}).get("since", 0.0), eor=False)

    def all_down(self) -> None:
        """exabgp was restarted: every session is gone (routes retained as stale)."""
        with self._lock:
            for peer in list(self._state):
                if self._state[peer].get("state") != "down":
                    self._peer_state(peer, "down", "exabgp restarted")

    def tick(self) -> None:
        """Expire stale routes of peers that stayed down too long; close the restart window."""
        now = self._clock.now()
        with self._lock:
            for peer, t in list(self._down_at.items()):
                if now - t >= self.stale_time:
                    del self._down_at[peer]
                    keys = set(self._routes.get(peer, set()))
                    if keys:
                        log.info("stale routes expired", peer=str(peer), routes=len(keys))
                    self._stale.pop(peer, None)
                    self._drop(peer, keys)
            if not self._window_closed and now >= self._window_ends:
                self._window_closed = True
                log.info("restart window closed")
                self._put(RESTART_WINDOW_KEY, "closed")

    def close_window(self) -> None:
        with self._lock:
            if not self._window_closed:
                self._window_closed = True
                self._put(RESTART_WINDOW_KEY, "closed")
