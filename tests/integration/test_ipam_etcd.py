"""BlockAllocator against a real etcd 3.4: concurrent nodes racing on CAS, Calico JSON on the wire.

Every node has its own EtcdDatastore client (as separate hosts would) and several worker threads
(concurrent CNI ADDs on one host, without Calico's host-wide lock), so the CAS loops really race.
What is in etcd is read back with `etcdctl`, not with our client, and checked as Calico JSON.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from pycni.datastore import calico
from pycni.datastore.etcd import EtcdDatastore
from pycni.ipam import keys
from pycni.ipam.allocator import BlockAllocator
from pycni.testing.etcd import EtcdServer, etcd_fixture

pytestmark = [pytest.mark.etcd]

etcd = pytest.fixture(etcd_fixture, name="etcd")

POOL = ipaddress.ip_network("10.244.0.0/16")
NODES = ("node-a", "node-b", "node-c")


def dump(server: EtcdServer, prefix: str) -> dict[str, str]:
    """Every key under `prefix`, read by etcdctl (independent of the client under test)."""
    out = json.loads(server.etcdctl("get", "--prefix", prefix, "-w", "json"))
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
        for kv in out.get("kvs") or []
    }


@pytest.fixture
def clients(etcd: EtcdServer) -> Iterator[dict[str, EtcdDatastore]]:
    made = {n: EtcdDatastore(etcd.endpoint) for n in NODES}
    pool = calico.IPPool(meta=calico.new_meta("default-ipv4-ippool"), cidr=POOL, nat_outgoing=True)
    calico.create_resource(made[NODES[0]], pool)
    try:
        yield made
    finally:
        for c in made.values():
            c.close()


def run_concurrently(
    clients: dict[str, EtcdDatastore], total: int, workers_per_node: int
) -> tuple[list[tuple[str, str, ipaddress.IPv4Interface | ipaddress.IPv6Interface]], float]:
    jobs = [(NODES[i % len(NODES)], f"k8s-pod-network.c{i:04d}") for i in range(total)]
    results: list[tuple[str, str, ipaddress.IPv4Interface | ipaddress.IPv6Interface]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(len(NODES) * workers_per_node)

    def worker(node: str, mine: list[str]) -> None:
        a = BlockAllocator(clients[node], node=node)
        start.wait()
        try:
            for h in mine:
                ip = a.auto_assign(h, {"namespace": "default", "node": node, "pod": h.split(".")[1]})[0]
                with lock:
                    results.append((node, h, ip))
        except BaseException as e:  # reported by the test
            errors.append(e)

    threads = []
    for node in NODES:
        node_jobs = [h for n, h in jobs if n == node]
        for w in range(workers_per_node):
            t = threading.Thread(target=worker, args=(node, node_jobs[w::workers_per_node]))
            threads.append(t)
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    elapsed = time.monotonic() - t0
    assert not errors, errors
    return results, elapsed


def test_200_concurrent_allocations_from_3_nodes(etcd: EtcdServer, clients: dict[str, EtcdDatastore]) -> None:
    results, elapsed = run_concurrently(clients, 200, workers_per_node=4)
    print(f"\n200 concurrent allocations, 3 nodes x 4 threads: {elapsed:.2f}s "
          f"({elapsed / 200 * 1000:.1f} ms per allocation wall clock)")
    assert len(results) == 200
    ips = [ip.ip for _, _, ip in results]
    assert len(set(ips)) == 200, "duplicate addresses handed out"
    assert all(ip in POOL for ip in ips)
    assert all(ip.network.prefixlen == 26 for _, _, ip in results)  # block-masked

    ipam = dump(etcd, "/calico/ipam/v2/")
    blocks = {k: json.loads(v) for k, v in ipam.items() if k.startswith(keys.BLOCK_PREFIX)}
    affs = {k: json.loads(v) for k, v in ipam.items() if k.startswith(keys.HOST_PREFIX)}
    handles = {k: json.loads(v) for k, v in ipam.items() if k.startswith(keys.HANDLE_PREFIX)}

    # Calico's exact shapes.
    for k, b in blocks.items():
        assert set(b) >= {"cidr", "affinity", "allocations", "unallocated", "attributes", "sequenceNumber",
                          "sequenceNumberForAllocation", "deleted"}
        assert k == keys.block_key(ipaddress.ip_network(b["cidr"]))
        assert len(b["allocations"]) == 64
        assert len(b["unallocated"]) + sum(a is not None for a in b["allocations"]) == 64
        for a in b["attributes"]:
            assert set(a) == {"handle_id", "secondary"}
            assert set(a["secondary"]) == {"namespace", "node", "pod"}
    for a in affs.values():
        assert a == {"state": "confirmed", "deleted": False}
    assert len(handles) == 200
    for h in handles.values():
        assert set(h) == {"block", "deleted"} and sum(h["block"].values()) == 1

    # Each node's addresses came from its own blocks (plenty of room: no borrowing needed).
    owner = {}
    for k in affs:
        parsed = keys.parse_affinity_key(k)
        assert parsed is not None
        owner[parsed[1]] = parsed[0]
    for node, h, ip in results:
        assert owner[ip.network] == node
        blk = blocks[keys.block_key(ip.network)]
        ordinal = int(ip.ip) - int(ip.network.network_address)
        attr = blk["attributes"][blk["allocations"][ordinal]]
        assert attr["handle_id"] == h and attr["secondary"]["node"] == node
        assert handles[keys.handle_key(h)]["block"] == {str(ip.network): 1}
    assert sum(sum(a is not None for a in b["allocations"]) for b in blocks.values()) == 200


# One "node" per OS process (its own interpreter, GIL and etcd client), 4 threads inside each.
_NODE_PROCESS = r"""
import json, sys, threading
from pycni.datastore.etcd import EtcdDatastore
from pycni.ipam.allocator import BlockAllocator
from pycni.log import configure
configure(level="warning", stream=sys.stderr)  # stdout is our report channel
endpoint, node, handles = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
ds = EtcdDatastore(endpoint)
a = BlockAllocator(ds, node=node)
out, errors = [], []
def work(mine):
    try:
        for h in mine:
            out.append((h, str(a.auto_assign(h, {"namespace": "default", "node": node, "pod": h})[0])))
    except BaseException as e:
        errors.append(repr(e))
ds.list("/calico/ipam/v2/config")  # connect before the start signal
print("ready", flush=True)
sys.stdin.readline()
ts = [threading.Thread(target=work, args=(handles[i::4],)) for i in range(4)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps({"ips": out, "errors": errors}), flush=True)
"""


def test_200_concurrent_allocations_from_3_node_processes(
    etcd: EtcdServer, clients: dict[str, EtcdDatastore]
) -> None:
    jobs = {n: [f"k8s-pod-network.p{i:04d}" for i in range(200) if i % 3 == k] for k, n in enumerate(NODES)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _NODE_PROCESS, etcd.endpoint, n, ",".join(hs)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for n, hs in jobs.items()
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        reports = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
    print(f"\n200 concurrent allocations, 3 node processes x 4 threads: {elapsed:.2f}s")
    assert [r["errors"] for r in reports] == [[], [], []]
    got = [ipaddress.ip_interface(ip) for r in reports for _h, ip in r["ips"]]
    assert len(got) == 200 and len({i.ip for i in got}) == 200
    handles = set(dump(etcd, keys.HANDLE_PREFIX))
    assert handles == {keys.handle_key(h) for hs in jobs.values() for h in hs}


def test_concurrent_release_leaves_no_handles(etcd: EtcdServer, clients: dict[str, EtcdDatastore]) -> None:
    results, _ = run_concurrently(clients, 60, workers_per_node=3)
    by_node: dict[str, list[str]] = {}
    for node, h, _ip in results:
        by_node.setdefault(node, []).append(h)
    errors: list[BaseException] = []

    def release(node: str, handles: list[str]) -> None:
        a = BlockAllocator(clients[node], node=node)
        try:
            for h in handles:
                assert len(a.release_by_handle(h)) == 1
                assert a.release_by_handle(h) == []  # idempotent
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=release, args=(n, hs[i::2])) for n, hs in by_node.items() for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    ipam = dump(etcd, "/calico/ipam/v2/")
    assert not [k for k in ipam if k.startswith(keys.HANDLE_PREFIX)]
    for k, v in ipam.items():
        if k.startswith(keys.BLOCK_PREFIX):
            b = json.loads(v)
            assert all(a is None for a in b["allocations"]) and b["attributes"] == []
            assert b["affinity"] in {f"host:{n}" for n in NODES}  # affine blocks stay, empty
