"""exabgp_launch.py: no reactor sleep while queued API work is pending (the same sleep when idle)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("exabgp")

from exabgp.reactor.loop import Reactor  # noqa: E402

from pycni.bgp import exabgp_launch  # noqa: E402


class _Poller:
    def __init__(self) -> None:
        self.timeouts: list[int] = []

    def poll(self, timeout: int) -> list[tuple[int, int]]:
        self.timeouts.append(timeout)
        return []


class _Async:
    def __init__(self, pending: bool) -> None:
        self.pending = pending

    def ready(self) -> bool:
        return not self.pending


class _FakeReactor:
    def __init__(self, pending: bool) -> None:
        self._poller = _Poller()
        self.asynchronous = _Async(pending)


def test_reactor_polls_without_sleeping_while_api_work_is_queued() -> None:
    original = Reactor._wait_for_io
    try:
        assert exabgp_launch._patch_reactor()
        busy: Any = _FakeReactor(pending=True)
        idle: Any = _FakeReactor(pending=False)
        assert list(Reactor._wait_for_io(busy, 10)) == []
        assert list(Reactor._wait_for_io(idle, 10)) == []
        assert busy._poller.timeouts == [0]
        assert idle._poller.timeouts == [10]
    finally:
        Reactor._wait_for_io = original  # type: ignore[method-assign]


def test_api_work_runs_without_an_event_loop_and_errors_are_answered() -> None:
    from exabgp.environment import getenv
    from exabgp.logger import log
    from exabgp.reactor.asynchronous import ASYNC

    log.init(getenv())  # exabgp's logger must be set up before any log call
    original = ASYNC.run
    try:
        assert exabgp_launch._patch_async()
        done: list[str] = []
        errors: list[str] = []

        def work(name: str, steps: int, fail: bool = False) -> Any:
            for i in range(steps):
                done.append(f"{name}{i}")
                yield False
            if fail:
                raise ValueError("bad route")

        a = ASYNC()
        a.set_error_handler(errors.append)
        a.schedule("svc1", "cmd1", work("a", 3, fail=True))
        a.schedule("svc2", "cmd2", work("b", 2))
        assert a.run() is False  # everything ran in one turn (well inside the 20 ms budget)
        assert done == ["a0", "a1", "a2", "b0", "b1"] and errors == ["svc1"] and a.ready()
        # a long command yields the turn when the budget is spent, and resumes where it stopped
        a.schedule("svc3", "cmd3", work("c", 10**7))
        assert a.run() is True and not a.ready()
        n = len(done)
        assert 5 < n < 5 + 10**7
        assert a.run() is True and len(done) > n
        a.clear()
    finally:
        ASYNC.run = original  # type: ignore[method-assign]


def test_family_is_one_shared_object_per_address_family() -> None:
    from exabgp.protocol.family import AFI, SAFI, Family

    original = Family.family
    try:
        assert exabgp_launch._patch_family()
        one = Family(AFI.ipv4, SAFI.unicast)
        two = Family(AFI.ipv4, SAFI.unicast)
        v6 = Family(AFI.ipv6, SAFI.unicast)
        assert one.family() is two.family() and one.family() == one
        assert one.family().afi_safi() == (AFI.ipv4, SAFI.unicast)
        assert v6.family() is not one.family() and v6.family().afi_safi() == (AFI.ipv6, SAFI.unicast)
    finally:
        Family.family = original  # type: ignore[method-assign]
