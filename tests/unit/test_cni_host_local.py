"""host-local IPAM: the reference plugin's on-disk layout and allocation order, without root."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from pycni.errors import Invalid
from pycni.ipam.host_local import DuplicateAllocation, Exhausted, HostLocalStore, Range, parse_ranges


def rng(subnet: str, **kw: str) -> Range:
    return Range.from_json({"subnet": subnet, **kw})


def test_layout_matches_the_reference(tmp_path: Path) -> None:
    st = HostLocalStore(tmp_path, "net")
    a = st.allocate([rng("10.250.1.0/24")], "abc", "eth0")
    assert [str(x.address) for x in a] == ["10.250.1.2/24"] and str(a[0].gateway) == "10.250.1.1"
    d = tmp_path / "net"
    assert (d / "10.250.1.2").read_bytes() == b"abc\r\neth0"
    assert (d / "last_reserved_ip.0").read_bytes() == b"10.250.1.2"
    assert (d / "lock").exists()


def test_round_robin_skips_gateway_and_wraps(tmp_path: Path) -> None:
    st = HostLocalStore(tmp_path, "net")
    r = [rng("10.0.0.0/29")]  # usable .1-.6, gateway .1
    got = [str(st.allocate(r, f"c{i}", "eth0")[0].address.ip) for i in range(3)]
    assert got == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    st.release("c0", "eth0")
    # round robin: the freed .2 is not reused until the end of the range is reached
    got = [str(st.allocate(r, f"d{i}", "eth0")[0].address.ip) for i in range(3)]
    assert got == ["10.0.0.5", "10.0.0.6", "10.0.0.2"]
    with pytest.raises(Exhausted):
        st.allocate(r, "x", "eth0")
    assert st.free_count(r) == 0


def test_resumes_after_reference_last_reserved(tmp_path: Path) -> None:
    d = tmp_path / "net"
    d.mkdir()
    (d / "last_reserved_ip.0").write_text("10.0.0.9")  # what the Go plugin left behind
    (d / "10.0.0.10").write_bytes(b"go-container\r\neth0")
    st = HostLocalStore(tmp_path, "net")
    assert str(st.allocate([rng("10.0.0.0/24")], "c", "eth0")[0].address.ip) == "10.0.0.11"
    assert st.allocations()["10.0.0.10"] == ("go-container", "eth0")


def test_release_by_id_and_ifname_and_legacy(tmp_path: Path) -> None:
    st = HostLocalStore(tmp_path, "net")
    r = [rng("10.0.0.0/24")]
    st.allocate(r, "c", "eth0")
    st.allocate(r, "c", "net1")
    (tmp_path / "net" / "10.0.0.100").write_bytes(b"c")  # legacy file: id only
    assert sorted(st.release("c", "eth0")) == ["10.0.0.100", "10.0.0.2"]
    assert st.lookup("c", "net1") == ["10.0.0.3"]
    assert st.release("c", "eth0") == []  # idempotent
    assert HostLocalStore(tmp_path, "other").release("c", "eth0") == []  # no directory at all


def test_duplicate_allocation_refused(tmp_path: Path) -> None:
    st = HostLocalStore(tmp_path, "net")
    r = [rng("10.0.0.0/24")]
    st.allocate(r, "c", "eth0")
    with pytest.raises(DuplicateAllocation):
        st.allocate(r, "c", "eth0")


def test_multiple_ranges_all_or_nothing(tmp_path: Path) -> None:
    st = HostLocalStore(tmp_path, "net")
    full = rng("10.1.0.0/30")  # only .2 usable
    st.allocate([full], "first", "eth0")
    with pytest.raises(Exhausted):
        st.allocate([rng("10.0.0.0/24"), full], "c", "eth0")
    assert st.lookup("c", "eth0") == []


def test_release_except(tmp_path: Path) -> None:
    st = HostLocalStore(tmp_path, "net")
    r = [rng("10.0.0.0/24")]
    for c in ("a", "b", "c"):
        st.allocate(r, c, "eth0")
    freed = st.release_except([("b", "eth0")])
    assert len(freed) == 2 and list(st.allocations().values()) == [("b", "eth0")]


def test_range_validation() -> None:
    with pytest.raises(Invalid, match="too small"):
        rng("10.0.0.0/31")
    with pytest.raises(Invalid):
        rng("10.0.0.0/24", rangeStart="10.0.1.5")
    with pytest.raises(Invalid):
        parse_ranges({})
    r = parse_ranges(
        {
            "ranges": [
                [
                    {
                        "subnet": "10.0.0.0/24",
                        "rangeStart": "10.0.0.10",
                        "rangeEnd": "10.0.0.20",
                        "gateway": "10.0.0.254",
                    }
                ]
            ]
        }
    )[0]
    assert r.range_start == ipaddress.ip_address("10.0.0.10") and str(r.gateway) == "10.0.0.254"
    assert parse_ranges({"subnet": "10.9.0.0/16"})[0].subnet == ipaddress.ip_network("10.9.0.0/16")


def test_concurrent_processes_never_share_an_address(tmp_path: Path) -> None:
    r = [rng("10.0.0.0/24")]
    pids = []
    for i in range(4):
        pid = os.fork()
        if pid == 0:  # child: allocate 10 addresses
            try:
                st = HostLocalStore(tmp_path, "net")
                for j in range(10):
                    st.allocate(r, f"p{i}-{j}", "eth0")
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    allocs = HostLocalStore(tmp_path, "net").allocations()
    assert len(allocs) == 40 and len(set(allocs.values())) == 40


REF = "/usr/lib/cni/host-local"


def _ref(cmd: str, cid: str, data_dir: Path) -> dict[str, object]:
    import json
    import subprocess

    conf = {
        "cniVersion": "1.0.0",
        "name": "net",
        "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.0.0.0/24"}]]},
    }
    env = {
        "CNI_COMMAND": cmd,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": "/x",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/x",
    }
    p = subprocess.run([REF], input=json.dumps(conf).encode(), env=env, capture_output=True, check=True)
    return json.loads(p.stdout) if p.stdout.strip() else {}


@pytest.mark.skipif(not os.access(REF, os.X_OK), reason="needs the reference host-local")
def test_interoperates_with_the_reference_plugin(tmp_path: Path) -> None:
    """Same directory, both plugins: no address handed out twice, and each releases the other's."""
    first = _ref("ADD", "go-1", tmp_path)
    assert first["ips"][0]["address"] == "10.0.0.2/24"  # type: ignore[index]
    st = HostLocalStore(tmp_path, "net")
    mine = st.allocate([rng("10.0.0.0/24")], "py-1", "eth0")
    assert str(mine[0].address) == "10.0.0.3/24"  # resumed after the Go plugin's last_reserved_ip
    second = _ref("ADD", "go-2", tmp_path)
    assert second["ips"][0]["address"] == "10.0.0.4/24"  # type: ignore[index]
    _ref("DEL", "py-1", tmp_path)  # the Go plugin releases our file
    assert st.lookup("py-1", "eth0") == []
    assert st.release("go-2", "eth0") == ["10.0.0.4"]  # and we release its
    assert sorted(st.allocations()) == ["10.0.0.2"]
