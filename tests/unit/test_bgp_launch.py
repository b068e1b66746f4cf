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

    original, original_index = Family.family, Family.index
    before = Family(AFI.ipv6, SAFI.unicast).index()
    try:
        assert exabgp_launch._patch_family()
        assert Family(AFI.ipv4, SAFI.unicast).index() == b"0101"
        assert Family(AFI.ipv6, SAFI.unicast).index() == before
        one = Family(AFI.ipv4, SAFI.unicast)
        two = Family(AFI.ipv4, SAFI.unicast)
        v6 = Family(AFI.ipv6, SAFI.unicast)
        assert one.family() is two.family() and one.family() == one
        assert one.family().afi_safi() == (AFI.ipv4, SAFI.unicast)
        assert v6.family() is not one.family() and v6.family().afi_safi() == (AFI.ipv6, SAFI.unicast)
    finally:
        Family.family, Family.index = original, original_index  # type: ignore[method-assign]


def test_update_prefixes_are_sorted_by_key_into_exabgps_own_order() -> None:
    import random

    from exabgp.bgp.message import Action
    from exabgp.bgp.message.update import Update
    from exabgp.protocol.family import AFI, SAFI

    class Nlri:  # the parts of an exabgp NLRI `_split_nlris` reads
        afi, safi, action = AFI.ipv4, SAFI.unicast, Action.ANNOUNCE

        def __init__(self, n: int) -> None:
            self.n = n
            self.nexthop = type("NH", (), {"afi": AFI.ipv4})()
            self.calls = 0

        def index(self) -> bytes:
            self.calls += 1
            return b"0101" + self.n.to_bytes(4, "big")

        def __lt__(self, other: Any) -> bool:
            return bool(self.index() < other.index())

        def family(self) -> Any:
            return type("F", (), {"afi_safi": lambda _s: (AFI.ipv4, SAFI.unicast)})()

    negotiated = type("Neg", (), {"families": [(AFI.ipv4, SAFI.unicast)]})()
    nums = random.Random(3).sample(range(100000), 500)
    plain = Update.__new__(Update)
    plain.nlris = [Nlri(n) for n in nums]
    expected = [x.n for x in Update._split_nlris(plain, negotiated)[0]]
    plain_calls = sum(x.calls for x in plain.nlris)
    original = Update._split_nlris
    try:
        assert exabgp_launch._patch_update_sort()
        fast = Update.__new__(Update)
        fast.nlris = [Nlri(n) for n in nums]
        got = [x.n for x in Update._split_nlris(fast, negotiated)[0]]
        assert got == expected == sorted(nums)
        assert sum(x.calls for x in fast.nlris) * 3 < plain_calls  # 500 keys + ~1000 in-order checks
    finally:
        Update._split_nlris = original  # type: ignore[method-assign]


def test_sessions_it_dials_have_nagle_off() -> None:
    import socket

    from exabgp.reactor.network.outgoing import Outgoing

    original = Outgoing.success
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        Outgoing.success = lambda self: "connected"  # type: ignore[method-assign]
        assert exabgp_launch._patch_nodelay()
        dialed: Any = type("Dialed", (), {"io": sock})()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert Outgoing.success(dialed) == "connected"  # exabgp's own success() still runs
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        Outgoing.success = original  # type: ignore[method-assign]
        sock.close()
