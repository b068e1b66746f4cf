"""The agent's after-reply bookkeeping and the ADD hot path's caches, without root.

`CniPlugin.deferring` runs queued work when its block ends (after the server has replied); the next
request of the same container waits for it. `read_subnet_env` re-reads a changed file; host-local's
`last_reserved_ip` is rewritten in place and must never keep a longer value's tail.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from pycni.cni.plugin import CniPlugin, read_subnet_env
from pycni.ipam.host_local import HostLocalStore, Range


def test_deferred_work_runs_after_the_block_and_the_next_request_waits() -> None:
    pl = CniPlugin()
    done: list[str] = []
    assert not pl._after_reply("c1", lambda: done.append("now"))  # no host collecting: caller runs it
    release = threading.Event()
    waited: list[float] = []

    def slow() -> None:
        release.wait(5)
        done.append("deferred")

    def next_request() -> None:
        t0 = time.monotonic()
        pl._settle("c1")
        waited.append(time.monotonic() - t0)
        done.append("next")

    with pl.deferring():
        assert pl._after_reply("c1", slow)
        assert done == []  # not yet: the reply goes first
        t = threading.Thread(target=next_request)
        t.start()
        time.sleep(0.05)
        assert done == []  # the next request of c1 is waiting
        pl._settle("other")  # another container does not wait
        release.set()
    t.join(5)
    assert done == ["deferred", "next"] and waited[0] >= 0.04
    assert pl._settling == {}
    pl.close()


def test_deferred_failure_is_logged_and_releases_waiters() -> None:
    pl = CniPlugin()

    def boom() -> None:
        raise OSError("disk full")

    with pl.deferring():
        pl._after_reply("c2", boom)
    pl._settle("c2", timeout=1)  # returns at once
    assert pl._settling == {}
    pl.close()


def test_subnet_env_is_reread_when_it_changes(tmp_path: Path) -> None:
    p = tmp_path / "subnet.env"
    text = (
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.{}.1/24\nFLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n"
    )
    p.write_text(text.format(1))
    assert str(read_subnet_env(str(p)).subnet) == "10.244.1.1/24"
    p.write_text(text.format(2))  # same size, same inode, maybe the same mtime tick
    assert str(read_subnet_env(str(p)).subnet) == "10.244.2.1/24"
    old = time.time() - 10
    os.utime(p, (old, old))
    first = read_subnet_env(str(p))
    assert read_subnet_env(str(p)) is first  # unchanged and settled: served from the cache
    p.write_text(text.format(3))
    assert str(read_subnet_env(str(p)).subnet) == "10.244.3.1/24"


def test_last_reserved_ip_shrinks_without_a_stale_tail(tmp_path: Path) -> None:
    st = HostLocalStore(tmp_path, "net")
    r = [
        Range.from_json(
            {"subnet": "10.250.1.0/24", "rangeStart": "10.250.1.99", "rangeEnd": "10.250.1.101"}
        )
    ]
    got = [str(st.allocate(r, f"c{i}", "eth0")[0].address.ip) for i in range(3)]
    assert got == ["10.250.1.99", "10.250.1.100", "10.250.1.101"]
    st.release("c0", "eth0")
    assert str(st.allocate(r, "c3", "eth0")[0].address.ip) == "10.250.1.99"  # wrapped around
    assert (tmp_path / "net" / "last_reserved_ip.0").read_bytes() == b"10.250.1.99"
