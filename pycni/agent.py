"""Agent: the one engine every daemon runs (queue -> Snapshot -> pure calc -> drivers).

Sources (a datastore `sync` thread, the exabgp reader, timers) only put events on the queue; one
agent thread owns all state, so nothing needs a lock. Each batch of events updates the
`Snapshot`; once every source is IN_SYNC, `calc(snapshot)` computes the whole desired state (the
Spec), each binding hands its driver its part (`set_desired`, no I/O), and the drivers `apply()` in
list order (links before neighbours before routes). A driver that reports pending work is retried
after a capped back-off; every `resync_interval` each driver re-reads the kernel, so drift made by
hand is repaired. Nothing is applied before the first IN_SYNC: a half-listed datastore would
otherwise make us delete routes that are merely not loaded yet.

`step()` runs exactly one iteration, so tests drive the loop deterministically with a FakeClock.
felix, flanneld and bgpd differ only in their `calc` and their bindings.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog

from pycni.dataplane.netlink import Driver
from pycni.datastore import Batch, Emit, Event, SyncStatus, Update
from pycni.datastore.snapshot import Snapshot
from pycni.testing.clock import Clock, SystemClock

log = structlog.get_logger(__name__)

S = TypeVar("S")


@dataclass(frozen=True)
class Binding(Generic[S]):
    """A driver and the function that hands it its part of the spec (no I/O)."""

    driver: Driver
    program: Callable[[S], None]


@dataclass(frozen=True)
class _Sourced:
    source: str
    event: Event


@dataclass(frozen=True)
class _Call:
    fn: Callable[[], None]


class Agent(Generic[S]):
    def __init__(
        self,
        *,
        name: str,
        calc: Callable[[Snapshot], S],
        bindings: Sequence[Binding[S]],
        sources: tuple[str, ...] = ("datastore",),
        clock: Clock | None = None,
        retry_interval: float = 0.5,
        max_retry_interval: float = 10.0,
        resync_interval: float = 30.0,
    ) -> None:
        self.name = name
        self._calc = calc
        self._bindings = list(bindings)
        self._clock = clock or SystemClock()
        self._queue: queue.Queue[_Sourced | _Call] = queue.Queue()
        self.snapshot = Snapshot(sources)
        self._retry_interval = retry_interval
        self._max_retry = max_retry_interval
        self._resync_interval = resync_interval
        self._calculated_gen = -1
        self._retry_at: float | None = None
        self._backoff = retry_interval
        self._next_resync: float | None = None
        self.spec: S | None = None
        self.applied_once = False
        self.last_apply_ok = False
        self._log = log.bind(agent=name)

    # -- inputs (any thread) ---------------------------------------------------------------
    def emitter(self, source: str) -> Emit:
        """An `emit` callable for one source; give it to `Datastore.sync` or a reader thread."""
        self.snapshot.add_source(source)

        def emit(event: Event) -> None:
            self._queue.put(_Sourced(source, event))

        return emit

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the agent thread (timers, health probes, forced resyncs)."""
        self._queue.put(_Call(fn))

    def queue_resync(self) -> None:
        self.call_soon(self._resync_all)

    # -- the loop (agent thread) -----------------------------------------------------------
    def step(self, *, timeout: float = 0.0) -> bool:
        """One iteration: drain a batch of events, then calc and apply if due. Returns whether it applied."""
        self._drain(timeout)
        if not self.snapshot.in_sync:
            return False
        now = self._clock.now()
        if self._next_resync is None:
            self._next_resync = now + self._resync_interval
        elif now >= self._next_resync:
            self._resync_all()
            self._next_resync = now + self._resync_interval
        dirty = self.snapshot.generation != self._calculated_gen
        retry_due = self._retry_at is not None and now >= self._retry_at
        forced = self._force_apply
        if not (dirty or retry_due or forced or not self.applied_once):
            return False
        self._force_apply = False
        if dirty or self.spec is None:
            self.spec = self._calc(self.snapshot)
            self._calculated_gen = self.snapshot.generation
            for b in self._bindings:
                b.program(self.spec)
        ok = True
        for b in self._bindings:
            try:
                if not b.driver.apply():
                    ok = False
            except Exception:
                ok = False
                self._log.exception("driver apply failed", driver=b.driver.name)
        self.applied_once = True
        self.last_apply_ok = ok
        if ok:
            self._retry_at = None
            self._backoff = self._retry_interval
        else:
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, self._max_retry)
        return True

    _force_apply = False

    def _resync_all(self) -> None:
        for b in self._bindings:
            b.driver.queue_resync()
        self._force_apply = True

    def _drain(self, timeout: float) -> None:
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: _Sourced | _Call) -> None:
        if isinstance(item, _Call):
            item.fn()
            return
        ev = item.event
        if isinstance(ev, Update):
            self.snapshot.apply(ev)
        elif isinstance(ev, Batch):
            for u in ev.updates:
                self.snapshot.apply(u)
        else:
            was = self.snapshot.in_sync
            self.snapshot.set_status(item.source, ev)
            if self.snapshot.in_sync != was or ev is not SyncStatus.IN_SYNC:
                self._log.info("sync status", source=item.source, status=ev.value,
                               in_sync=self.snapshot.in_sync, keys=len(self.snapshot))
            if ev is SyncStatus.IN_SYNC:
                # After a relist the kernel may have drifted too: re-read it.
                self._resync_all()

    def next_wakeup(self) -> float:
        """Seconds until a timer (retry or resync) needs the loop, for the blocking wait."""
        now = self._clock.now()
        due = [t for t in (self._retry_at, self._next_resync) if t is not None]
        return max(0.01, min(due) - now) if due else 1.0

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set (the daemon's main thread)."""
        while not stop.is_set():
            self.step(timeout=min(self.next_wakeup(), 1.0))

    def health(self) -> dict[str, Any]:
        return {"in_sync": self.snapshot.in_sync, "applied": self.applied_once, "ok": self.last_apply_ok}


def run_source(
    target: Callable[[Sequence[str], Emit, threading.Event], None],
    prefixes: Sequence[str],
    emit: Emit,
    stop: threading.Event,
    *,
    name: str,
) -> threading.Thread:
    """Run a blocking source (e.g. `Datastore.sync`) in a thread; an unexpected crash kills the process.

    Threads never die silently: if the source raises, it is logged and the process exits, so the
    supervisor (kubelet, the lab) restarts us and mark-and-sweep resumes from kernel + datastore.
    """

    def body() -> None:
        try:
            target(prefixes, emit, stop)
        except Exception:
            log.critical("source thread crashed", source=name, exc_info=True)
            time.sleep(0.1)
            import os

            os._exit(1)

    t = threading.Thread(target=body, name=name, daemon=True)
    t.start()
    return t
