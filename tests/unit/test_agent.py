"""Agent engine: nothing applied before in-sync, retry with back-off on the clock, periodic resync."""

from __future__ import annotations

from pycni.agent import Agent, Binding
from pycni.datastore import SyncStatus, Update
from pycni.datastore.snapshot import Snapshot
from pycni.testing.clock import FakeClock


class RecordingDriver:
    name = "rec"

    def __init__(self) -> None:
        self.desired: dict[str, str] = {}
        self.applied: list[dict[str, str]] = []
        self.resyncs = 0
        self.fail = 0

    def set_desired(self, d: dict[str, str]) -> None:
        self.desired = d

    def queue_resync(self) -> None:
        self.resyncs += 1

    def apply(self) -> bool:
        if self.fail:
            self.fail -= 1
            return False
        self.applied.append(dict(self.desired))
        return True


def calc(s: Snapshot) -> dict[str, str]:
    return dict(s.items("/x/"))


def make() -> tuple[Agent[dict[str, str]], RecordingDriver, FakeClock]:
    clock = FakeClock()
    d = RecordingDriver()
    a: Agent[dict[str, str]] = Agent(name="t", calc=calc, bindings=[Binding(d, d.set_desired)], clock=clock,
                                     retry_interval=1.0, resync_interval=30.0)
    return a, d, clock


def test_nothing_applied_before_in_sync() -> None:
    a, d, _ = make()
    emit = a.emitter("datastore")
    emit(Update("/x/a", "1", 2))
    assert a.step() is False
    assert d.applied == []
    emit(SyncStatus.IN_SYNC)
    assert a.step() is True
    assert d.applied == [{"/x/a": "1"}]


def test_failed_apply_is_retried_after_backoff() -> None:
    a, d, clock = make()
    emit = a.emitter("datastore")
    emit(Update("/x/a", "1", 2))
    emit(SyncStatus.IN_SYNC)
    d.fail = 1
    a.step()
    assert d.applied == []
    assert a.step() is False  # back-off not elapsed
    clock.advance(1.0)
    assert a.step() is True
    assert d.applied == [{"/x/a": "1"}]


def test_periodic_resync_reads_kernel_again() -> None:
    a, d, clock = make()
    emit = a.emitter("datastore")
    emit(SyncStatus.IN_SYNC)
    a.step()
    before = d.resyncs
    clock.advance(31)
    a.step()
    assert d.resyncs > before
    assert len(d.applied) == 2


def test_resync_status_blocks_calc_until_in_sync_again() -> None:
    a, d, _ = make()
    emit = a.emitter("datastore")
    emit(SyncStatus.IN_SYNC)
    a.step()
    emit(SyncStatus.RESYNC)
    emit(Update("/x/b", "2", 5))
    assert a.step() is False
    emit(SyncStatus.IN_SYNC)
    assert a.step() is True
    assert d.applied[-1] == {"/x/b": "2"}
