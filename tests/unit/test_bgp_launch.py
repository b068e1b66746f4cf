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
