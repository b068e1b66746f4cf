"""LeaseManager on a real etcd: flannel's key layout and TTLs, concurrent nodes racing, renewal
before expiry, reservations, and a lease written by etcdctl exactly as flanneld writes it."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Iterator

import pytest

from pycni.datastore.etcd import EtcdDatastore
from pycni.datastore.flannel import LeaseAttrs, parse_config, subnet_key
from pycni.flannel.lease import LeaseManager
from pycni.testing.etcd import EtcdServer, etcd_fixture

pytestmark = [pytest.mark.etcd, pytest.mark.privileged]

etcd = pytest.fixture(etcd_fixture, scope="module", name="etcd")
CFG = parse_config('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')


@pytest.fixture
def ds(etcd: EtcdServer) -> Iterator[EtcdDatastore]:
    d = EtcdDatastore(etcd.endpoint)
    for v in d.list("/coreos.com/network/"):
        d.delete(v.key)
    try:
        yield d
    finally:
        d.close()


def attrs(i: int) -> LeaseAttrs:
    mac = f"0e:00:00:00:00:{i:02x}"
    return LeaseAttrs(ipaddress.IPv4Address(f"10.99.0.{i}"), "vxlan", {"VNI": 1, "VtepMAC": mac})


def test_twelve_nodes_racing_get_distinct_subnets(etcd: EtcdServer, ds: EtcdDatastore) -> None:
    # 12 nodes on a /20 (15 usable /24s): random picks among few candidates collide often
    cfg = parse_config('{"Network":"10.244.0.0/20"}')
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def node(i: int) -> None:
        c = EtcdDatastore(etcd.endpoint)
        try:
            results[i] = str(LeaseManager(c, cfg, attrs(i)).acquire().subnet)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=node, args=(i,)) for i in range(1, 13)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 12
    assert len(set(results.values())) == 12, results
    keys = {v.key for v in ds.list("/coreos.com/network/subnets/")}
    assert keys == {subnet_key(ipaddress.IPv4Network(s)) for s in results.values()}


def test_ttl_renewal_and_expiry_in_etcd(etcd: EtcdServer, ds: EtcdDatastore) -> None:
    m = LeaseManager(ds, CFG, attrs(1), ttl=3.0, renew_margin=1.5)
    lease = m.acquire()
    v = ds.get(lease.key)
    assert v is not None and v.lease != 0
    assert json.loads(etcd.etcdctl("get", lease.key, "--print-value-only")) == {
        "PublicIP": "10.99.0.1", "PublicIPv6": None, "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"}}
    deadline = time.monotonic() + 5.0  # well past the 3 s TTL, renewing as due
    while time.monotonic() < deadline:
        m.tick()
        time.sleep(0.1)
    assert m.renewals >= 2 and ds.get(lease.key) is not None
    other = LeaseManager(ds, CFG, attrs(2), ttl=1.0)
    gone = other.acquire()
    time.sleep(2.5)  # nobody renews it: etcd expires the key
    assert ds.get(gone.key) is None


def test_reservation_and_foreign_lease(etcd: EtcdServer, ds: EtcdDatastore) -> None:
    # what an operator writes with etcdctl (flannel's reservations.md): no lease, honoured and kept so
    etcd.etcdctl("put", "/coreos.com/network/subnets/10.244.33.0-24", '{"PublicIP":"10.99.0.3"}')
    m = LeaseManager(ds, CFG, attrs(3))
    lease = m.acquire()
    assert lease.subnet == ipaddress.IPv4Network("10.244.33.0/24")
    v = ds.get(lease.key)
    assert v is not None and v.lease == 0 and "VtepMAC" in v.value
    # a TTL lease written by another flanneld is never taken
    etcd.etcdctl("put", "/coreos.com/network/subnets/10.244.34.0-24",
                 '{"PublicIP":"10.99.0.4","PublicIPv6":null,"BackendType":"vxlan",'
                 '"BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:04"}}')
    mine = LeaseManager(ds, CFG, attrs(5), prev_subnet=ipaddress.IPv4Network("10.244.34.0/24")).acquire()
    assert mine.subnet != ipaddress.IPv4Network("10.244.34.0/24")


def test_daemon_refuses_bad_config_naming_the_field(etcd: EtcdServer, ds: EtcdDatastore) -> None:
    import subprocess
    import sys

    ds.put("/coreos.com/network/config", '{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}')
    cp = subprocess.run([sys.executable, "-m", "pycni_daemons.flanneld", "--etcd-endpoints", etcd.endpoint],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1
    assert "Backend.Type" in cp.stderr and "Traceback" not in cp.stderr
    ds.put("/coreos.com/network/config", '{"Network":"10.244.0.0/16","SubnetLen":33}')
    cp = subprocess.run([sys.executable, "-m", "pycni_daemons.flanneld"], capture_output=True, text=True,
                        timeout=60, env={"FLANNELD_ETCD_ENDPOINTS": etcd.endpoint, "PATH": "/usr/bin:/bin"})
    assert cp.returncode == 1 and "SubnetLen" in cp.stderr and "Traceback" not in cp.stderr
