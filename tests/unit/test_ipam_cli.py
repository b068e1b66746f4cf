"""`pycnictl ipam` / `pycnictl pool` through the real dispatcher, on a MemoryDatastore."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator

import pytest
import structlog
from pycni_daemons.ctl import main

from pycni.cli import ipam as cli
from pycni.datastore import calico
from pycni.datastore.memory import MemoryDatastore
from pycni.ipam import keys
from pycni.ipam.allocator import BlockAllocator


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    saved = structlog.get_config()  # the commands configure logging, as entry points do
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.fixture
def ds() -> Iterator[MemoryDatastore]:
    d = MemoryDatastore()
    cli.set_datastore_factory(lambda args: d)
    try:
        yield d
    finally:
        cli.set_datastore_factory(None)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_pool_add_list_delete(ds: MemoryDatastore, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "pool", "add", "default-ipv4-ippool", "--cidr", "10.244.0.0/16",
                     "--ipip-mode", "Always", "--nat-outgoing")
    assert rc == 0 and "Successfully created" in out
    v = ds.get(calico.resource_key(calico.IPPool, "default-ipv4-ippool"))
    assert v is not None
    doc = json.loads(v.value)
    assert doc["kind"] == "IPPool" and doc["apiVersion"] == "projectcalico.org/v3"
    assert doc["metadata"]["name"] == "default-ipv4-ippool" and doc["metadata"]["uid"]
    assert {k: doc["spec"][k] for k in ("cidr", "blockSize", "ipipMode", "vxlanMode", "natOutgoing",
                                        "nodeSelector")} == {
        "cidr": "10.244.0.0/16", "blockSize": 26, "ipipMode": "Always", "vxlanMode": "Never",
        "natOutgoing": True, "nodeSelector": "all()"}

    rc, out, _ = run(capsys, "pool", "list", "-o", "wide")
    assert rc == 0 and "default-ipv4-ippool" in out and "10.244.0.0/16" in out and "Always" in out
    rc, out, _ = run(capsys, "pool", "list", "-o", "json")
    assert json.loads(out)[0]["spec"]["cidr"] == "10.244.0.0/16"

    rc, _, err = run(capsys, "pool", "add", "other", "--cidr", "10.244.128.0/17")
    assert rc == 2 and "overlaps" in err
    rc, _, err = run(capsys, "pool", "add", "default-ipv4-ippool", "--cidr", "10.99.0.0/16")
    assert rc == 2 and "already exists" in err
    rc, _, err = run(capsys, "pool", "add", "bad", "--cidr", "10.1.0.0/16", "--block-size", "8")
    assert rc == 2 and "blockSize" in err
    rc, _, err = run(capsys, "pool", "add", "bad", "--cidr", "10.1.0.1/16")
    assert rc == 2 and "host bits" in err
    rc, _, err = run(capsys, "pool", "add", "bad", "--cidr", "10.2.0.0/16", "--ipip-mode", "Always",
                     "--vxlan-mode", "Always")
    assert rc == 2 and "both" in err

    a = BlockAllocator(ds, node="n1")
    held = a.auto_assign("h", num=2)
    a.auto_assign("tmp")
    a.release_by_handle("tmp")
    empty = ipaddress.ip_network("10.244.250.0/26")
    a.claim_affinity(empty)
    rc, out, _ = run(capsys, "pool", "delete", "default-ipv4-ippool")
    assert rc == 0 and "Successfully deleted" in out
    assert ds.get(calico.resource_key(calico.IPPool, "default-ipv4-ippool")) is None
    assert a.blocks_for_node() == []  # affinities released
    assert ds.get(keys.block_key(empty)) is None  # the empty block went with its affinity
    held_block = ds.get(keys.block_key(held[0].network))
    assert held_block is not None and json.loads(held_block.value)["affinity"] is None  # addresses stay
    rc, _, err = run(capsys, "pool", "delete", "default-ipv4-ippool")
    assert rc == 2 and "does not exist" in err


def test_ipam_show_and_release(ds: MemoryDatastore, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "pool", "add", "p1", "--cidr", "10.244.0.0/16")[0] == 0
    a = BlockAllocator(ds, node="node-1")
    ips = a.auto_assign("k8s-pod-network.c1", {"namespace": "default", "node": "node-1", "pod": "web"}, num=5)
    rc, out, _ = run(capsys, "ipam", "show")
    assert rc == 0
    header = next(line for line in out.splitlines() if "GROUPING" in line)
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"]
    row = next(line for line in out.splitlines() if "IP Pool" in line)
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "IP Pool", "10.244.0.0/16", "65536", "5 (0%)", "65531 (100%)"]

    rc, out, _ = run(capsys, "ipam", "show", "--show-blocks")
    brow = next(line for line in out.splitlines() if "Block" in line and "GROUPING" not in line)
    assert [c.strip() for c in brow.strip("|").split("|")] == [
        "Block", str(ips[0].network), "64", "5 (8%)", "59 (92%)", "host:node-1"]

    rc, out, _ = run(capsys, "ipam", "show", "--ip", str(ips[0].ip))
    assert "in use" in out and "k8s-pod-network.c1" in out and "pod: web" in out

    rc, out, _ = run(capsys, "ipam", "release", "--ip", str(ips[0].ip), "--ip", str(ips[1].ip))
    assert rc == 0 and out.count("Successfully released") == 2
    assert keys.IPAMHandle.from_json(ds.get(keys.handle_key("k8s-pod-network.c1")).value).block == {  # type: ignore[union-attr]
        str(ips[0].network): 3}
    rc, out, _ = run(capsys, "ipam", "release", "--ip", str(ips[0].ip))
    assert rc == 1 and "is not assigned" in out
    rc, _, err = run(capsys, "ipam", "release", "--ip", "not-an-ip")
    assert rc == 2 and "not-an-ip" in err
    rc, out, _ = run(capsys, "ipam", "show", "--ip", str(ips[0].ip))
    assert "not currently assigned" in out


def test_ipam_configure(ds: MemoryDatastore, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "ipam", "configure")
    assert rc == 0 and "StrictAffinity: false" in out and ds.get(keys.IPAM_CONFIG_KEY) is None
    rc, out, _ = run(capsys, "ipam", "configure", "--strictaffinity", "true")
    assert rc == 0 and "StrictAffinity: true" in out
    assert json.loads(ds.get(keys.IPAM_CONFIG_KEY).value) == {  # type: ignore[union-attr]
        "strict_affinity": True, "auto_allocate_blocks": True}
    rc, _, err = run(capsys, "ipam", "configure", "--strict-affinity", "false",
                     "--auto-allocate-blocks", "false")
    assert rc == 2 and "strict_affinity" in err


def test_no_pools(ds: MemoryDatastore, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "ipam", "show")
    assert rc == 0 and "No IP pools" in out


def test_unreachable_etcd_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens on port 1: a clear error and exit 2, no traceback.
    rc, out, err = run(capsys, "pool", "list", "--etcd-endpoints", "http://127.0.0.1:1")
    assert rc == 2 and "Traceback" not in err and err.strip()
