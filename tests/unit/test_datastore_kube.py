"""KubeDatastore against FakeKubeApi (a stdlib HTTP server on loopback): the datastore contract, the
key <-> object mapping, and the Kubernetes-specific paths (410 relist, leases, restarts).

No root and no real API server: the fake keeps the API server's observable semantics (one global
resourceVersion, 409s, preconditions, chunked watches, 410 after compaction). TTL time runs on a
FakeClock shared by every client of a test, so nothing sleeps for a lease.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator

import pytest
from contract.datastore_contract import DatastoreContract, Recorder, eventually, syncing

from pycni.datastore import Datastore, SyncStatus, Update
from pycni.datastore import kube as K
from pycni.datastore.kube import KubeDatastore, kv_name, locate
from pycni.errors import AlreadyExists, CasConflict, Invalid, LeaseExpired, Unavailable
from pycni.testing.clock import FakeClock
from pycni.testing.kube_api import CALICO_GROUP, FakeKubeApi

_ids = itertools.count()


class KubeHarness:
    ttl = 10.0
    slack = 2.0  # the syncer checks leases every `poll` (0.1 s) and the reap comes back on the watch
    can_restart = True

    def __init__(self, api: FakeKubeApi) -> None:
        self.api = api
        self.clock = FakeClock(start=1_800_000_000.0)
        self.ds = self._new()
        self.prefix = f"/kt{next(_ids)}/"
        self._clients: list[KubeDatastore] = [self.ds]

    def _new(self) -> KubeDatastore:
        return KubeDatastore(self.api.url, clock=self.clock, timeout=2)

    def key(self, name: str) -> str:
        return self.prefix + name

    def client(self) -> Datastore:
        c = self._new()
        self._clients.append(c)
        return c

    def let_time_pass(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def compact(self) -> None:
        self.api.compact()

    def restart(self) -> None:
        self.api.restart(down_for=0.3)

    def close(self) -> None:
        for c in self._clients:
            c.close()


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi(bookmark_interval=0.2) as a:
        yield a


@pytest.fixture
def harness(api: FakeKubeApi) -> Iterator[KubeHarness]:
    h = KubeHarness(api)
    try:
        yield h
    finally:
        h.close()


class TestKubeDatastoreContract(DatastoreContract):
    pass


@pytest.fixture
def ds(api: FakeKubeApi) -> Iterator[KubeDatastore]:
    d = KubeDatastore(api.url, clock=FakeClock(start=1_800_000_000.0), timeout=2)
    try:
        yield d
    finally:
        d.close()


# -- key <-> object mapping ---------------------------------------------------------------------------
BLOCK_JSON = (
    '{"cidr":"10.244.0.0/26","affinity":"host:node-1","allocations":[0,null,1],"unallocated":[1,3],'
    '"attributes":[{"handle_id":"k8s-pod-network.abc","secondary":{"namespace":"default","node":"node-1",'
    '"pod":"p","timestamp":"2026-12-02 00:00:00"}},{"handle_id":"ipip-tunnel-addr-node-1","secondary":null}],'
    '"sequenceNumber":4,"sequenceNumberForAllocation":{"0":1,"2":3},"deleted":false}'
)
IPPOOL_JSON = (
    '{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"default-ipv4-ippool",'
    '"uid":"7f3c","creationTimestamp":"2026-12-01T00:00:00Z","labels":{"tier":"gold"}},'
    '"spec":{"cidr":"10.244.0.0/16","blockSize":26,"ipipMode":"Always","natOutgoing":true,'
    '"nodeSelector":"all()"}}'
)
WEP_JSON = (
    '{"kind":"WorkloadEndpoint","apiVersion":"projectcalico.org/v3","metadata":{"name":"node--1-k8s-p-eth0",'
    '"namespace":"default"},"spec":{"node":"node-1","ipNetworks":["10.244.0.1/32"],"interfaceName":"cali0"}}'
)


def test_locate_derives_calico_names() -> None:
    assert locate("/calico/ipam/v2/assignment/ipv4/block/10.244.0.0-26") == K.Location(
        K.BLOCKS, None, "10-244-0-0-26"
    )
    assert locate("/calico/ipam/v2/host/node-1/ipv4/block/10.244.0.64-26") == K.Location(
        K.AFFINITIES, None, "node-1-10-244-0-64-26"
    )
    assert locate("/calico/ipam/v2/assignment/ipv6/block/fd00::-122").name == "fd00---122"
    assert locate("/calico/ipam/v2/handle/k8s-pod-network.ABC123") == K.Location(
        K.HANDLES, None, "k8s-pod-network.abc123"
    )
    ippool = locate("/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool")
    assert ippool == K.Location(K.CALICO_KINDS["ippools"], None, "default-ipv4-ippool")
    wep = locate("/calico/resources/v3/projectcalico.org/workloadendpoints/kube-system/n1-k8s-p-eth0")
    assert wep == K.Location(K.CALICO_KINDS["workloadendpoints"], "kube-system", "n1-k8s-p-eth0")
    assert ippool.kind.path(None, "x") == "/apis/crd.projectcalico.org/v1/ippools/x"
    assert wep.kind.path("ns", "x") == "/apis/crd.projectcalico.org/v1/namespaces/ns/workloadendpoints/x"
    # everything else, and Calico-looking keys that are not object names, are generic KeyValues
    for key in (
        "/coreos.com/network/subnets/10.244.1.0-24",
        "/calico/ipam/v2/config",
        "/calico/v1/Ready",
        "/calico/resources/v3/projectcalico.org/ippools/Not_A_Name",
        "/calico/resources/v3/x/y",
    ):
        loc = locate(key)
        assert loc.kind is K.KEYVALUES and K.valid_name(loc.name), key
    assert kv_name("/coreos.com/network/subnets/10.244.1.0-24").startswith(
        "coreos-com-network-subnets-10-244-1-0-24-"
    )
    assert kv_name("/a/B") != kv_name("/a/b")
    assert K.valid_name(kv_name("/" + "x" * 400)) and K.valid_name(kv_name("///"))
    with pytest.raises(Invalid):
        locate("")


def test_key_spaces_match_the_codecs() -> None:
    from pycni.datastore import calico
    from pycni.ipam import keys

    assert K.RESOURCE_PREFIX == calico.RESOURCE_PREFIX
    assert (K.BLOCK_PREFIX, K.HOST_PREFIX, K.HANDLE_PREFIX) == (
        keys.BLOCK_PREFIX,
        keys.HOST_PREFIX,
        keys.HANDLE_PREFIX,
    )
    assert set(calico.PLURALS) <= set(K.CALICO_KINDS)


def test_kinds_for_prefixes() -> None:
    from pycni.calc.felix import SYNC_PREFIXES

    plurals = {k.plural for k in K.kinds_for(SYNC_PREFIXES)}
    assert plurals == {"ippools", "nodes", "workloadendpoints", "felixconfigurations", "bgpconfigurations",
                       "blockaffinities", "keyvalues"}  # fmt: skip
    assert {k.plural for k in K.kinds_for(["/coreos.com/network/subnets/"])} == {"keyvalues"}
    assert {k.plural for k in K.kinds_for(["/calico/ipam/v2/"])} == {"ipamblocks", "blockaffinities",
                                                                     "ipamhandles", "keyvalues"}  # fmt: skip


def test_block_round_trips_losslessly_as_an_ipamblock(api: FakeKubeApi, ds: KubeDatastore) -> None:
    key = "/calico/ipam/v2/assignment/ipv4/block/10.244.0.0-26"
    v = ds.create(key, BLOCK_JSON)
    assert v.value == BLOCK_JSON
    got = ds.get(key)
    assert got is not None and got.value == BLOCK_JSON and got.revision == v.revision
    (obj,) = api.objects(CALICO_GROUP, "ipamblocks")
    assert obj["kind"] == "IPAMBlock" and obj["apiVersion"] == "crd.projectcalico.org/v1"
    assert obj["metadata"]["name"] == "10-244-0-0-26"
    assert obj["spec"] == json.loads(BLOCK_JSON)  # kubectl sees the block itself
    assert obj["metadata"]["resourceVersion"] == str(v.revision)
    assert [x.value for x in ds.list("/calico/ipam/v2/assignment/")] == [BLOCK_JSON]


def test_affinity_and_handle_carry_calicos_spec_fields(api: FakeKubeApi, ds: KubeDatastore) -> None:
    aff = "/calico/ipam/v2/host/node-1/ipv4/block/10.244.0.64-26"
    ds.create(aff, '{"state":"confirmed","deleted":false}')
    (obj,) = api.objects(CALICO_GROUP, "blockaffinities")
    assert obj["metadata"]["name"] == "node-1-10-244-0-64-26"
    assert obj["spec"] == {"state": "confirmed", "deleted": False, "node": "node-1", "cidr": "10.244.0.64/26"}
    got = ds.get(aff)
    assert got is not None and got.value == '{"state":"confirmed","deleted":false}'
    handle = "/calico/ipam/v2/handle/k8s-pod-network.c0ffee"
    ds.create(handle, '{"block":{"10.244.0.64/26":1},"deleted":false}')
    (h,) = api.objects(CALICO_GROUP, "ipamhandles")
    assert (
        h["metadata"]["name"] == "k8s-pod-network.c0ffee"
        and h["spec"]["handleID"] == "k8s-pod-network.c0ffee"
    )
    got = ds.get(handle)
    assert got is not None and got.value == '{"block":{"10.244.0.64/26":1},"deleted":false}'


def test_calico_resources_round_trip_with_spec_in_the_crd(api: FakeKubeApi, ds: KubeDatastore) -> None:
    pool = "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"
    wep = "/calico/resources/v3/projectcalico.org/workloadendpoints/default/node--1-k8s-p-eth0"
    ds.put(pool, IPPOOL_JSON)
    ds.put(wep, WEP_JSON)
    (obj,) = api.objects(CALICO_GROUP, "ippools")
    assert obj["kind"] == "IPPool" and obj["spec"] == json.loads(IPPOOL_JSON)["spec"]
    assert obj["metadata"]["labels"] == {"tier": "gold"}
    (w,) = api.objects(CALICO_GROUP, "workloadendpoints", "default")
    assert w["metadata"]["namespace"] == "default"
    assert [v.value for v in ds.list("/calico/resources/v3/projectcalico.org/")] == [IPPOOL_JSON, WEP_JSON]
    with pytest.raises(Invalid):
        ds.put(pool, "not json")
    with pytest.raises(Invalid):
        ds.put(pool, IPPOOL_JSON.replace('"default-ipv4-ippool"', '"other"'))
    # a pool somebody created with kubectl (no pycni annotations) reads as a v3 resource
    api.create(api.resources[(CALICO_GROUP, "v1", "ippools")], None, {
        "metadata": {"name": "extra", "labels": {"a": "b"}}, "spec": {"cidr": "10.9.0.0/16"}})  # fmt: skip
    got = ds.get("/calico/resources/v3/projectcalico.org/ippools/extra")
    assert got is not None
    doc = json.loads(got.value)
    assert doc["kind"] == "IPPool" and doc["apiVersion"] == "projectcalico.org/v3"
    assert doc["metadata"]["name"] == "extra" and doc["metadata"]["labels"] == {"a": "b"}
    assert doc["spec"] == {"cidr": "10.9.0.0/16"}


def test_calico_codec_decodes_what_we_store(ds: KubeDatastore) -> None:
    from pycni.datastore import calico

    ds.put("/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool", IPPOOL_JSON)
    got = ds.get("/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool")
    assert got is not None
    res = calico.decode_json(got.value)
    assert res.meta.name == "default-ipv4-ippool"


def test_generic_values_are_kept_byte_for_byte(api: FakeKubeApi, ds: KubeDatastore) -> None:
    key = "/coreos.com/network/subnets/10.244.1.0-24"
    value = '{"PublicIP":"10.99.0.1",  "BackendType":"vxlan","BackendData":{"VNI":1}}\n'
    ds.create(key, value)
    (obj,) = api.objects("pycni.dev", "keyvalues")
    assert obj["spec"] == {"key": key, "value": value}
    got = ds.get(key)
    assert got is not None and got.value == value


def test_an_object_in_the_wrong_place_is_ignored(api: FakeKubeApi, ds: KubeDatastore) -> None:
    """Two objects can never claim one key: only the object `locate(key)` names counts."""
    api.create(api.resources[("pycni.dev", "v1", "keyvalues")], None,
               {"metadata": {"name": "impostor"}, "spec": {"key": "/x/a", "value": "evil"}})  # fmt: skip
    assert ds.get("/x/a") is None and ds.list("/x/") == []
    ds.put("/x/a", "good")
    assert [v.value for v in ds.list("/x/")] == ["good"]


def test_leases_are_coordination_leases(api: FakeKubeApi, ds: KubeDatastore) -> None:
    v = ds.create("/coreos.com/network/subnets/10.244.1.0-24", "{}", ttl=86400)
    (lease,) = api.objects("coordination.k8s.io", "leases", "kube-system")
    assert lease["metadata"]["name"] == K.lease_name(v.lease)
    assert lease["spec"]["leaseDurationSeconds"] == 86400
    assert lease["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "pycni"}
    (obj,) = api.objects("pycni.dev", "keyvalues")
    assert obj["metadata"]["annotations"][K.ANN_LEASE] == lease["metadata"]["name"]
    assert ds.refresh(v.lease) == 86400
    got = ds.get("/coreos.com/network/subnets/10.244.1.0-24")
    assert got == v  # renewing a lease does not touch the key's revision
    ds.delete("/coreos.com/network/subnets/10.244.1.0-24")
    assert api.objects("coordination.k8s.io", "leases") == []
    with pytest.raises(LeaseExpired):
        ds.refresh(v.lease)


def test_a_lost_guarded_write_leaves_no_lease(api: FakeKubeApi, ds: KubeDatastore) -> None:
    ds.create("/x/a", "1")
    with pytest.raises(AlreadyExists):
        ds.create("/x/a", "2", ttl=30)
    with pytest.raises(CasConflict):
        ds.update("/x/a", "2", revision=1, ttl=30)
    assert api.objects("coordination.k8s.io", "leases") == []


def test_put_on_an_object_another_client_changes(api: FakeKubeApi, ds: KubeDatastore) -> None:
    other = KubeDatastore(api.url)
    try:
        for i in range(20):
            ds.put("/x/p", f"a{i}")
            other.put("/x/p", f"b{i}")
        got = ds.get("/x/p")
        assert got is not None and got.value == "b19"
        assert api.connections == 2  # one keep-alive connection per client (and thread)
    finally:
        other.close()


# -- the fake is honest where the datastore relies on it ---------------------------------------------
def test_fake_api_semantics(api: FakeKubeApi) -> None:
    from pycni.datastore.kube import _ApiError, _Config, _Http

    http = _Http(_Config("127.0.0.1", api.port, None), timeout=2)
    base = "/apis/pycni.dev/v1/keyvalues"
    a = http.request(
        "POST", base, {"metadata": {"name": "a"}, "spec": {"key": "k", "value": "v"}}, write=True
    )
    rv = a["metadata"]["resourceVersion"]
    with pytest.raises(_ApiError) as e:
        http.request("POST", base, {"metadata": {"name": "a"}}, write=True)
    assert (e.value.code, e.value.reason) == (409, "AlreadyExists")
    with pytest.raises(_ApiError) as e:
        http.request("PUT", f"{base}/a", {"metadata": {"name": "a"}, "spec": {}}, write=True)
    assert e.value.code == 422  # custom resources: no unconditional update
    with pytest.raises(_ApiError) as e:
        http.request("PUT", f"{base}/a", {"metadata": {"name": "a", "resourceVersion": "1"}}, write=True)
    assert (e.value.code, e.value.reason) == (409, "Conflict")
    same = http.request("PUT", f"{base}/a", a, write=True)
    assert same["metadata"]["resourceVersion"] == rv  # a no-op write keeps the resourceVersion
    with pytest.raises(_ApiError) as e:
        http.request("DELETE", f"{base}/a", {"preconditions": {"resourceVersion": "1"}}, write=True)
    assert e.value.code == 409
    with pytest.raises(_ApiError) as e:
        http.request("POST", base, {"metadata": {"name": "Bad_Name"}}, write=True)
    assert e.value.code == 422
    with pytest.raises(_ApiError) as e:
        http.request("GET", "/apis/nothing.example/v1/things")
    assert e.value.code == 404
    nodes = http.request("GET", "/api/v1/nodes")
    assert nodes["kind"] == "NodeList" and int(nodes["metadata"]["resourceVersion"]) >= int(rv)
    http.request("POST", "/api/v1/nodes", {"metadata": {"name": "n1", "labels": {"r": "x"}}}, write=True)
    assert [
        n["metadata"]["name"] for n in http.request("GET", "/api/v1/nodes?labelSelector=r%3Dx")["items"]
    ] == ["n1"]
    assert http.request("GET", "/api/v1/nodes?labelSelector=r%21%3Dx")["items"] == []


def _watch_lines(api: FakeKubeApi, query: str, n: int) -> list[dict[str, object]]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        conn.request("GET", f"/apis/pycni.dev/v1/keyvalues?watch=1&{query}")
        resp = conn.getresponse()
        assert resp.status == 200
        out = []
        while len(out) < n:
            line = resp.readline()
            if not line:
                break
            out.append(json.loads(line))
        return out
    finally:
        conn.close()


def test_fake_watch_from_a_compacted_revision_is_410(api: FakeKubeApi, ds: KubeDatastore) -> None:
    v = ds.put("/x/a", "1")
    ds.put("/x/a", "2")
    evs = _watch_lines(api, f"resourceVersion={v.revision}&timeoutSeconds=1", 1)
    assert evs[0]["type"] == "MODIFIED"
    api.compact()
    evs = _watch_lines(api, f"resourceVersion={v.revision}", 1)
    assert evs[0]["type"] == "ERROR" and evs[0]["object"]["code"] == 410  # type: ignore[index]
    evs = _watch_lines(api, f"resourceVersion={api.revision()}&allowWatchBookmarks=true", 1)
    assert evs[0]["type"] == "BOOKMARK"


# -- relist and restarts --------------------------------------------------------------------------------
@pytest.mark.parametrize("as_http", [False, True], ids=["error-event", "http-410"])
def test_410_relists_either_way(api: FakeKubeApi, as_http: bool) -> None:
    """The watch starts behind a compaction; 410 as a watch ERROR event or as the HTTP status."""
    api.watch_gone_as_http = as_http
    ds = KubeDatastore(api.url, timeout=2)
    try:
        ds.put("/r/keep", "k")
        ds.put("/r/gone", "g")
        rec = Recorder(hold_first_in_sync=True)
        with syncing(ds, ["/r/"], rec):
            assert rec.held.wait(5)
            ds.delete("/r/gone")
            new = ds.put("/r/new", "n")
            api.compact()
            rec.release.set()
            eventually(lambda: rec.in_sync_count() == 2, 5, "IN_SYNC after the relist")
            late = ds.put("/r/late", "l")
            eventually(lambda: rec.has("/r/late", "l"), 5)
        assert rec.statuses()[:4] == [SyncStatus.WAIT_FOR_DATASTORE, SyncStatus.IN_SYNC, SyncStatus.RESYNC,
                                      SyncStatus.IN_SYNC]  # fmt: skip
        assert Update("/r/new", "n", new.revision) in rec.updates()
        assert Update("/r/late", "l", late.revision) in rec.updates()
        assert rec.view() == {"/r/keep": "k", "/r/new": "n", "/r/late": "l"}
        assert [u.key for u in rec.updates()].count("/r/keep") == 1
    finally:
        ds.close()


def test_a_watch_the_server_ends_is_resumed_without_relist(api: FakeKubeApi) -> None:
    ds = KubeDatastore(api.url, timeout=2, watch_timeout=1)
    try:
        rec = Recorder()
        with syncing(ds, ["/w/"], rec):
            eventually(lambda: rec.in_sync_count() == 1, 5)
            time.sleep(1.3)  # one server-side timeout
            ds.put("/w/a", "a")
            eventually(lambda: rec.has("/w/a", "a"), 5)
        assert SyncStatus.RESYNC not in rec.statuses()
        lists_and_watches = [r for r in api.requests if r == ("GET", "/apis/pycni.dev/v1/keyvalues")]
        assert len(lists_and_watches) >= 3  # one list, the first watch, the resumed one
    finally:
        ds.close()


def test_sync_waits_for_an_api_server_that_is_down() -> None:
    api = FakeKubeApi()
    api.start()
    api.stop()
    ds = KubeDatastore(api.url, timeout=1)
    rec = Recorder()
    try:
        with syncing(ds, ["/late/"], rec):
            time.sleep(0.4)
            assert rec.statuses() == [SyncStatus.WAIT_FOR_DATASTORE]
            api.start()
            eventually(lambda: rec.in_sync_count() == 1, 10, "IN_SYNC once the API is up")
            ds.put("/late/k", "v")
            eventually(lambda: rec.has("/late/k", "v"), 5)
        assert SyncStatus.RESYNC not in rec.statuses()
    finally:
        ds.close()
        api.stop()


def test_unavailable_while_down() -> None:
    api = FakeKubeApi().start()
    ds = KubeDatastore(api.url, timeout=1)
    try:
        ds.put("/d/k", "v")
        api.stop()
        with pytest.raises(Unavailable):
            ds.get("/d/k")
        with pytest.raises(Unavailable):
            ds.create("/d/k2", "v")
        api.start()
        got = ds.get("/d/k")
        assert got is not None and got.value == "v"
    finally:
        ds.close()
        api.stop()


def test_sync_reaps_expired_keys_listed_at_start(api: FakeKubeApi) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    ds = KubeDatastore(api.url, clock=clock, timeout=2)
    try:
        ds.create("/e/old", "x", ttl=5)
        ds.put("/e/live", "y")
        clock.advance(6)
        rec = Recorder()
        with syncing(ds, ["/e/"], rec):
            eventually(lambda: rec.in_sync_count() == 1, 5)
            assert rec.view() == {"/e/live": "y"}
        assert [o["spec"]["key"] for o in api.objects("pycni.dev", "keyvalues")] == ["/e/live"]
    finally:
        ds.close()


def test_watch_threads_end_with_sync(api: FakeKubeApi) -> None:
    ds = KubeDatastore(api.url, timeout=2)
    try:
        rec = Recorder()
        with syncing(ds, ["/calico/ipam/v2/", "/coreos.com/"], rec):
            eventually(lambda: rec.in_sync_count() == 1, 5)
            # ipamblocks, blockaffinities, ipamhandles, keyvalues and the Leases
            eventually(lambda: sum(t.name.startswith("kube-watch-") for t in threading.enumerate()) == 5, 3)
        eventually(lambda: not any(t.name.startswith("kube-watch-") for t in threading.enumerate()), 3)
    finally:
        ds.close()


# -- configuration ------------------------------------------------------------------------------------
def test_bad_server_urls_are_invalid() -> None:
    for bad in ("", "ftp://x", "http://", "http://h:port"):
        with pytest.raises(Invalid):
            KubeDatastore(bad)


def test_kubeconfig_json(tmp_path: object, api: FakeKubeApi) -> None:
    from pathlib import Path

    p = api.write_kubeconfig(str(Path(str(tmp_path)) / "kubeconfig"), token="t0ken")
    ds = KubeDatastore.from_kubeconfig(p, namespace="pycni")
    try:
        assert ds._http.headers(False)["Authorization"] == "Bearer t0ken"
        ds.put("/cfg/k", "v", ttl=60)
        assert [o["metadata"]["namespace"] for o in api.objects("coordination.k8s.io", "leases")] == ["pycni"]
    finally:
        ds.close()
    bad = Path(str(tmp_path)) / "bad"
    bad.write_text(json.dumps({"current-context": "x", "contexts": []}))
    with pytest.raises(Invalid):
        KubeDatastore.from_kubeconfig(str(bad))


def test_in_cluster_needs_the_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(Invalid):
        KubeDatastore.in_cluster()


def test_labels_mirrored_only_when_the_api_accepts_them() -> None:
    assert K.valid_label("projectcalico.org/namespace", "kube-system")
    assert K.valid_label("app", "")
    assert not K.valid_label("bad key", "x") and not K.valid_label("a", "x" * 64)
    doc = json.loads(IPPOOL_JSON)
    doc["metadata"]["labels"] = {"ok": "yes", "not ok": "v", "long": "x" * 64}
    key = "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool"
    obj = K.encode(key, json.dumps(doc, separators=(",", ":")), locate(key))
    assert obj["metadata"]["labels"] == {"ok": "yes"}
    d = K.decode(K.CALICO_KINDS["ippools"], {**obj, "metadata": {**obj["metadata"], "resourceVersion": "7"}})
    assert d is not None and json.loads(d.value) == doc and d.revision == 7


def test_deploy_crds_cover_every_kind() -> None:
    from pathlib import Path

    from test_deploy_manifests import load_all

    docs = load_all(Path(__file__).resolve().parents[2] / "deploy" / "crds.yaml")
    crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert set(crds) == {f"{k.plural}.{k.group}" for k in K.KEY_KINDS}
    for k in K.KEY_KINDS:
        spec = crds[f"{k.plural}.{k.group}"]["spec"]
        assert (spec["names"]["kind"], spec["scope"]) == (k.kind, "Namespaced" if k.namespaced else "Cluster")
        (version,) = spec["versions"]
        assert version["name"] == k.version
        props = version["schema"]["openAPIV3Schema"]["properties"]
        assert props["spec"]["x-kubernetes-preserve-unknown-fields"] is True  # nothing pruned
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    grants = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
              for v in rule["verbs"]}  # fmt: skip
    for k in K.KEY_KINDS:
        for verb in ("get", "list", "watch", "create", "update", "delete"):
            assert (k.group, k.plural, verb) in grants
    (lease_role,) = [d for d in docs if d["kind"] == "Role"]
    assert lease_role["metadata"]["namespace"] == "kube-system"
    assert lease_role["rules"][0]["resources"] == ["leases"]
    bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": "pycni", "namespace": "kube-system"}]
               for b in bindings) and len(bindings) == 2  # fmt: skip


def test_syncers_sweep_orphaned_leases(api: FakeKubeApi) -> None:
    """flannel renews with `update(ttl=)`: each renewal leaves the previous Lease behind until it expires."""
    clock = FakeClock(start=1_800_000_000.0)
    ds = KubeDatastore(api.url, clock=clock, timeout=2, sweep_interval=0.1)
    try:
        v1 = ds.create("/s/lease", "a", ttl=10)
        v2 = ds.update("/s/lease", "b", revision=v1.revision, ttl=30)
        assert len(api.objects("coordination.k8s.io", "leases")) == 2
        rec = Recorder()
        with syncing(ds, ["/s/"], rec):
            eventually(lambda: rec.in_sync_count() == 1, 5)
            clock.advance(11)  # the first lease expires; the key lives on under the second
            eventually(lambda: len(api.objects("coordination.k8s.io", "leases")) == 1, 5, "the sweep")
            (left,) = api.objects("coordination.k8s.io", "leases")
            assert left["metadata"]["name"] == K.lease_name(v2.lease)
            assert ds.get("/s/lease") == v2
            clock.advance(20)
            eventually(lambda: rec.has("/s/lease", None), 5, "the key's expiry")
            eventually(lambda: api.objects("coordination.k8s.io", "leases") == [], 5, "its lease gone too")
    finally:
        ds.close()


# -- the real consumers on the Kubernetes datastore ---------------------------------------------------
def test_calico_ipam_races_on_two_nodes_and_writes_calico_crds(api: FakeKubeApi) -> None:
    import ipaddress

    from pycni.datastore import calico
    from pycni.ipam import keys
    from pycni.ipam.allocator import BlockAllocator
    from pycni.ipam.block import AllocationBlock

    clients = [KubeDatastore(api.url, timeout=5) for _ in range(2)]
    try:
        pool = {"kind": "IPPool", "apiVersion": "projectcalico.org/v3",
                "metadata": {"name": "default-ipv4-ippool"},
                "spec": {"cidr": "10.244.0.0/24", "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Never",
                         "natOutgoing": True, "disabled": False, "nodeSelector": "all()"}}  # fmt: skip
        clients[0].put(calico.resource_key(calico.IPPool, "default-ipv4-ippool"), json.dumps(pool))
        got: dict[str, list[str]] = {}
        errors: list[BaseException] = []

        def node(i: int) -> None:
            a = BlockAllocator(clients[i], node=f"node-{i}", sleep=lambda s: None)
            try:
                for p in range(12):
                    (ip,) = a.auto_assign(f"k8s-pod-network.n{i}p{p}", {"node": f"node-{i}", "pod": f"p{p}"})
                    got[f"n{i}p{p}"] = [str(ip.ip)]
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=node, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        ips = [ip for v in got.values() for ip in v]
        assert len(ips) == 24 and len(set(ips)) == 24
        blocks = api.objects(CALICO_GROUP, "ipamblocks")
        affinities = api.objects(CALICO_GROUP, "blockaffinities")
        handles = api.objects(CALICO_GROUP, "ipamhandles")
        assert len(handles) == 24 and all(h["spec"]["handleID"] == h["metadata"]["name"] for h in handles)
        assert {b["spec"]["affinity"] for b in blocks} == {"host:node-0", "host:node-1"}
        for aff in affinities:
            assert aff["spec"]["state"] == "confirmed"
            cidr = ipaddress.ip_network(aff["spec"]["cidr"])
            assert (
                aff["metadata"]["name"]
                == f"{aff['spec']['node']}-{K.cidr_to_name(f'{cidr.network_address}-26')}"
            )
        for b in blocks:  # what is stored decodes with pycni's own block codec
            v = clients[1].get(keys.block_key(ipaddress.ip_network(b["spec"]["cidr"])))
            assert v is not None
            AllocationBlock.from_json(v.value)
        assert BlockAllocator(clients[1], node="node-0").release_by_handle("k8s-pod-network.n0p0") == [
            ipaddress.ip_address(got["n0p0"][0])
        ]
        assert not any(
            h["metadata"]["name"] == "k8s-pod-network.n0p0" for h in api.objects(CALICO_GROUP, "ipamhandles")
        )
    finally:
        for c in clients:
            c.close()


def test_flannel_lease_manager_on_the_kube_datastore(api: FakeKubeApi) -> None:
    import random

    from pycni.datastore.flannel import LeaseAttrs, parse_config, subnet_key
    from pycni.flannel.lease import LeaseManager

    cfg = parse_config('{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}')
    clock = FakeClock(start=1_800_000_000.0)
    ds = KubeDatastore(api.url, clock=clock, timeout=5)
    try:
        import ipaddress

        mgrs = [LeaseManager(ds, cfg, LeaseAttrs(ipaddress.IPv4Address(f"10.99.0.{i}"), "host-gw"),
                             clock=clock, ttl=3600, renew_margin=600, rng=random.Random(i))
                for i in (1, 2)]  # fmt: skip
        leases = [m.acquire() for m in mgrs]
        assert leases[0].subnet != leases[1].subnet
        v = ds.get(subnet_key(leases[0].subnet))
        assert v is not None and v.lease != 0 and json.loads(v.value)["PublicIP"] == "10.99.0.1"
        assert {o["spec"]["key"] for o in api.objects("pycni.dev", "keyvalues")} == {
            subnet_key(le.subnet) for le in leases
        }
        clock.advance(3000)
        assert mgrs[0].tick() and mgrs[0].renewals == 1
        clock.advance(1000)  # past the first lease's original TTL: only the renewed one lives
        assert ds.get(subnet_key(leases[0].subnet)) is not None
        assert ds.get(subnet_key(leases[1].subnet)) is None  # never renewed: expired
        again = LeaseManager(
            ds, cfg, LeaseAttrs(ipaddress.IPv4Address("10.99.0.1"), "host-gw"), clock=clock
        ).acquire()
        assert again.subnet == leases[0].subnet  # a restarted flanneld takes its own lease back
    finally:
        ds.close()


def test_the_official_client_agrees_with_the_fake(api: FakeKubeApi, ds: KubeDatastore) -> None:
    """The `kubernetes` package (the `kube` extra) against FakeKubeApi: paths, bodies, status codes,
    typed Lease and Node models, and its watch's handling of our chunked stream and of 410."""
    kubernetes = pytest.importorskip("kubernetes")
    from kubernetes.client.rest import ApiException

    cfg = kubernetes.client.Configuration()
    cfg.host = api.url
    with kubernetes.client.ApiClient(cfg) as ac:
        co = kubernetes.client.CustomObjectsApi(ac)
        g, v = CALICO_GROUP, "v1"
        body = {"apiVersion": f"{g}/{v}", "kind": "IPPool", "metadata": {"name": "p1"},
                "spec": {"cidr": "10.7.0.0/16"}}  # fmt: skip
        made = co.create_cluster_custom_object(g, v, "ippools", body)
        got = ds.get("/calico/resources/v3/projectcalico.org/ippools/p1")
        assert got is not None and got.revision == int(made["metadata"]["resourceVersion"])
        with pytest.raises(ApiException) as e:
            co.create_cluster_custom_object(g, v, "ippools", body)
        assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"
        stale = {**made, "metadata": {**made["metadata"], "resourceVersion": "1"}}
        with pytest.raises(ApiException) as e:
            co.replace_cluster_custom_object(g, v, "ippools", "p1", stale)
        assert e.value.status == 409
        listed = co.list_cluster_custom_object(g, v, "ippools")
        rv = listed["metadata"]["resourceVersion"]
        assert [i["metadata"]["name"] for i in listed["items"]] == ["p1"]

        ds.put(
            "/calico/resources/v3/projectcalico.org/ippools/p1",
            IPPOOL_JSON.replace("default-ipv4-ippool", "p1"),
        )
        w = kubernetes.watch.Watch()
        events = [(ev["type"], ev["object"]["metadata"]["name"])
                  for ev in w.stream(co.list_cluster_custom_object, g, v, "ippools", resource_version=rv,
                                     timeout_seconds=1)]  # fmt: skip
        assert events == [("MODIFIED", "p1")]
        api.compact()
        with pytest.raises(ApiException) as e:
            for _ in kubernetes.watch.Watch().stream(co.list_cluster_custom_object, g, v, "ippools",
                                                     resource_version=rv, timeout_seconds=1):  # fmt: skip
                pass
        assert e.value.status == 410

        lease_v = ds.create("/coreos.com/network/subnets/10.244.9.0-24", "{}", ttl=90)
        coord = kubernetes.client.CoordinationV1Api(ac)
        (lease,) = coord.list_namespaced_lease("kube-system").items
        assert lease.metadata.name == K.lease_name(lease_v.lease) and lease.spec.lease_duration_seconds == 90
        assert lease.spec.renew_time.timestamp() == pytest.approx(1_800_000_000.0, abs=1e-3)
        core = kubernetes.client.CoreV1Api(ac)
        core.create_node(kubernetes.client.V1Node(metadata=kubernetes.client.V1ObjectMeta(name="node-1")))
        assert [n.metadata.name for n in core.list_node().items] == ["node-1"]
        core.delete_node("node-1")
        with pytest.raises(ApiException) as e:
            core.read_node("node-1")
        assert e.value.status == 404


# -- https and credentials ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed server certificate for 127.0.0.1 (openssl), as a cluster CA would issue."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    crt, key = d / "server.crt", d / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=kube-apiserver", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(crt)], check=True, capture_output=True)  # fmt: skip
    return {"crt": str(crt), "key": str(key)}


@pytest.fixture
def tls_api(pki: dict[str, str]) -> Iterator[FakeKubeApi]:
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["crt"], pki["key"])
    with FakeKubeApi(tls=ctx, token="sa-token-1", bookmark_interval=0.2) as a:
        yield a


def test_in_cluster_uses_the_service_account(
    tls_api: FakeKubeApi, pki: dict[str, str], tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    sa = Path(str(tmp_path)) / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("sa-token-1\n")
    (sa / "namespace").write_text("pycni-system")
    (sa / "ca.crt").write_text(Path(pki["crt"]).read_text())
    monkeypatch.setattr(K, "SA_DIR", str(sa))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(tls_api.port))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    ds = KubeDatastore.connect()
    try:
        assert ds.server == tls_api.url and ds.namespace == "pycni-system"
        ds.create("/tls/a", "v", ttl=30)  # the Lease lands in the pod's namespace
        assert [o["metadata"]["namespace"] for o in tls_api.objects("coordination.k8s.io", "leases")] == [
            "pycni-system"
        ]
        rec = Recorder()
        with syncing(ds, ["/tls/"], rec):
            eventually(lambda: rec.in_sync_count() == 1, 5)
            ds.put("/tls/b", "w")
            eventually(lambda: rec.view() == {"/tls/a": "v", "/tls/b": "w"}, 5, "events over https")
        # the token rotates: a stale one is refused (Unavailable), the file is re-read
        tls_api.token = "sa-token-2"
        with pytest.raises(Unavailable):
            ds.get("/tls/a")
        (sa / "token").write_text("sa-token-2\n")
        ds._http.token_reread = 0
        got = ds.get("/tls/a")
        assert got is not None and got.value == "v"
    finally:
        ds.close()


def test_https_needs_the_right_ca(tls_api: FakeKubeApi) -> None:
    ds = KubeDatastore(tls_api.url, token="sa-token-1", timeout=2)  # the system CAs do not know ours
    try:
        with pytest.raises(Unavailable):
            ds.get("/x")
    finally:
        ds.close()


def test_kubeconfig_yaml_with_inline_ca(
    tls_api: FakeKubeApi, pki: dict[str, str], tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64
    import tempfile
    from pathlib import Path

    spool = Path(str(tmp_path)) / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where inline credentials are written

    pytest.importorskip("yaml")
    ca = base64.b64encode(Path(pki["crt"]).read_bytes()).decode()
    p = Path(str(tmp_path)) / "config"
    p.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: lab\n"
        "contexts:\n- name: lab\n  context:\n    cluster: c\n    user: u\n"
        f"clusters:\n- name: c\n  cluster:\n    server: {tls_api.url}\n    certificate-authority-data: {ca}\n"
        "users:\n- name: u\n  user:\n    token: sa-token-1\n"
    )
    ds = KubeDatastore.connect(str(p))
    try:
        ds.put("/kc/a", "1")
        got = ds.get("/kc/a")
        assert got is not None and got.value == "1"
    finally:
        ds.close()
    assert list(spool.iterdir()) == [], "inline credentials left on disk"


def test_a_wiped_api_server_makes_the_relist_re_emit_everything() -> None:
    """A new store behind the same address reuses resourceVersions: equal numbers mean nothing."""
    old = FakeKubeApi().start()
    port = old.port
    ds = KubeDatastore(old.url, timeout=1)
    try:
        assert ds.put("/wipe/a", "old").revision == 2
        for i in range(4):
            ds.put("/elsewhere/z", str(i))  # the store is at resourceVersion 6
        rec = Recorder()
        with syncing(ds, ["/wipe/"], rec):
            eventually(lambda: rec.in_sync_count() == 1, 5)
            old.stop()
            new = FakeKubeApi(port=port).start()
            try:
                assert ds.put("/wipe/a", "new").revision == 2  # the same number as "old" had
                ds.put("/wipe/b", "b")
                eventually(
                    lambda: rec.view() == {"/wipe/a": "new", "/wipe/b": "b"}, 10, "the new store's state"
                )
            finally:
                new.stop()
        assert SyncStatus.RESYNC in rec.statuses()
    finally:
        ds.close()
        old.stop()


def test_sync_over_every_kind_stops_promptly_and_close_ends_it(api: FakeKubeApi) -> None:
    ds = KubeDatastore(api.url, timeout=2)
    try:
        ds.put("/calico/ipam/v2/handle/h1", '{"block":{},"deleted":false}')
        rec = Recorder()
        stop = threading.Event()
        t = threading.Thread(target=ds.sync, args=([""], rec, stop), daemon=True)
        t.start()
        eventually(lambda: rec.in_sync_count() == 1, 10, "IN_SYNC over every kind")
        assert rec.view() == {"/calico/ipam/v2/handle/h1": '{"block":{},"deleted":false}'}
        eventually(lambda: sum(th.name.startswith("kube-watch-") for th in threading.enumerate())
                   == len(K.KEY_KINDS) + 1, 5)  # fmt: skip
        t0 = time.monotonic()
        stop.set()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - t0 < 1.0
        stop.clear()
        t = threading.Thread(target=ds.sync, args=([""], Recorder(), stop), daemon=True)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        ds.close()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - t0 < 1.0
    finally:
        ds.close()


def test_a_missing_crd_is_reported_not_fatal() -> None:
    """Without `ipamhandles.crd.projectcalico.org`: sync still lists the rest and says IN_SYNC; writes
    to that kind are `Invalid` (the operator must apply deploy/crds.yaml)."""
    from pycni.testing.kube_api import DEFAULT_RESOURCES

    resources = [r for r in DEFAULT_RESOURCES if r.plural != "ipamhandles"]
    with FakeKubeApi(resources) as api:
        ds = KubeDatastore(api.url, timeout=2)
        try:
            ds.put("/calico/ipam/v2/assignment/ipv4/block/10.244.0.0-26", BLOCK_JSON)
            rec = Recorder()
            with syncing(ds, ["/calico/ipam/v2/"], rec):
                eventually(lambda: rec.in_sync_count() == 1, 5)
                assert list(rec.view()) == ["/calico/ipam/v2/assignment/ipv4/block/10.244.0.0-26"]
            with pytest.raises(Invalid):
                ds.create("/calico/ipam/v2/handle/h1", '{"block":{},"deleted":false}')
            assert ds.get("/calico/ipam/v2/handle/h1") is None
        finally:
            ds.close()
