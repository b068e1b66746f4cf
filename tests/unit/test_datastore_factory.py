"""`pycni.datastore.open_datastore`: Calico's names select the datastore, and the consumers use it.

The kubernetes cases run against FakeKubeApi (a stdlib HTTP server on loopback) through a JSON
kubeconfig, as a node would with `KUBECONFIG` or the CNI netconf's `kubernetes.kubeconfig`.
"""

from __future__ import annotations

import argparse
import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from pycni_daemons.ctl import main as ctl_main

from pycni.calico.startup import StartupConfig, run_startup
from pycni.cni.ipam import BlockIpam, Owner
from pycni.cni.plugin import CniPlugin, parse_conf
from pycni.cni.spec import CniError
from pycni.datastore import calico, factory, open_datastore
from pycni.datastore.etcd import EtcdDatastore
from pycni.datastore.kube import KubeDatastore
from pycni.errors import Invalid
from pycni.testing.kube_api import CALICO_GROUP, FakeKubeApi


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi(bookmark_interval=0.2) as a:
        yield a


@pytest.fixture
def kubeconfig(tmp_path: Path, api: FakeKubeApi) -> str:
    return api.write_kubeconfig(str(tmp_path / "kubeconfig"))


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    saved = structlog.get_config()  # pycnictl configures logging, as entry points do
    try:
        yield
    finally:
        structlog.configure(**saved)


# -- the factory ----------------------------------------------------------------------------------
def test_unknown_type_is_invalid_naming_the_field() -> None:
    with pytest.raises(Invalid, match="unknown datastore type 'etcdv2'") as e:
        open_datastore("etcdv2")
    assert e.value.field == "datastore_type"
    assert "etcdv3 or kubernetes" in str(e.value)
    with pytest.raises(Invalid) as e:
        open_datastore("", field="DATASTORE_TYPE")
    assert e.value.field == "DATASTORE_TYPE" and str(e.value).startswith("DATASTORE_TYPE:")


def test_etcdv3_is_the_default_and_checks_its_endpoints() -> None:
    ds = open_datastore(etcd_endpoints="http://127.0.0.1:2399,http://127.0.0.1:2400", timeout=1.5)
    try:
        assert isinstance(ds, EtcdDatastore)
        assert ds.endpoints == [("127.0.0.1", 2399), ("127.0.0.1", 2400)] and ds.timeout == 1.5
    finally:
        ds.close()
    with pytest.raises(Invalid) as e:
        open_datastore("etcdv3", etcd_endpoints="")
    assert e.value.field == "etcd_endpoints"


def test_kubernetes_from_kubeconfig_or_env(
    api: FakeKubeApi, kubeconfig: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = open_datastore("kubernetes", kubeconfig=kubeconfig, timeout=2)
    try:
        assert isinstance(ds, KubeDatastore) and ds.server == api.url
        ds.put("/factory/k", "v")
        got = ds.get("/factory/k")
        assert got is not None and got.value == "v"
    finally:
        ds.close()
    monkeypatch.setenv("KUBECONFIG", kubeconfig)  # none given: $KUBECONFIG, as kubectl
    ds = open_datastore("kubernetes")
    try:
        got = ds.get("/factory/k")
        assert got is not None and got.value == "v"
    finally:
        ds.close()
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(Invalid, match="not in a cluster") as e:
        open_datastore("kubernetes")
    assert e.value.field == "kubeconfig"


def test_clients_are_imported_lazily(kubeconfig: str) -> None:
    code = (
        "import sys\n"
        "from pycni.datastore import open_datastore\n"
        "assert 'pycni.datastore.etcd' not in sys.modules and 'pycni.datastore.kube' not in sys.modules\n"
        f"open_datastore('kubernetes', kubeconfig={kubeconfig!r}).close()\n"
        "assert 'pycni.datastore.etcd' not in sys.modules and 'grpc' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_flags_default_to_the_environment() -> None:
    p = argparse.ArgumentParser()
    factory.add_arguments(p, env={})
    args = p.parse_args([])
    assert (args.datastore_type, args.kubeconfig) == ("etcdv3", None)
    p = argparse.ArgumentParser()
    factory.add_arguments(p, env={"DATASTORE_TYPE": "kubernetes", "KUBECONFIG": "/k"})
    assert (p.parse_args([]).datastore_type, p.parse_args([]).kubeconfig) == ("kubernetes", "/k")
    args = p.parse_args(["--datastore-type", "etcdv3", "--kubeconfig", "/other"])
    assert (args.datastore_type, args.kubeconfig) == ("etcdv3", "/other")
    p = argparse.ArgumentParser()
    factory.add_arguments(p, env={"DATASTORE_TYPE": "etcd"})
    with pytest.raises(Invalid) as e:  # a bad value from the environment is caught when opened
        factory.open_from_args(p.parse_args([]))
    assert e.value.field == "--datastore-type"


# -- consumers on the Kubernetes API --------------------------------------------------------------
def _netconf(**extra: object) -> dict[str, object]:
    return {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "pycni", "mode": "calico",
            "nodename": "n1", "mtu": 1450, "ipam": {"type": "calico-ipam"}, **extra}  # fmt: skip


def test_cni_calico_ipam_on_kubernetes(api: FakeKubeApi, kubeconfig: str) -> None:
    """Calico's netconf keys: `datastore_type: kubernetes` and `kubernetes.kubeconfig`."""
    nc = parse_conf(_netconf(datastore_type="kubernetes", kubernetes={"kubeconfig": kubeconfig}))
    assert (nc.datastore_type, nc.kubeconfig) == ("kubernetes", kubeconfig)
    plugin = CniPlugin()
    try:
        ds = plugin._datastore(nc)
        assert isinstance(ds, KubeDatastore) and plugin._datastore(nc) is ds  # one client per config
        calico.create_resource(ds, calico.IPPool(meta=calico.new_meta("default-ipv4-ippool"),
                                                 cidr=ipaddress.ip_network("10.244.0.0/16")))
        ipam = plugin._ipam(nc, None)
        assert isinstance(ipam, BlockIpam)
        owner = Owner(nc.name, "c0ffee", "eth0", "default", "web", "n1")
        [got] = ipam.assign(owner)
        assert got.address.ip in ipaddress.ip_network("10.244.0.0/16") and got.address.network.prefixlen == 32
        # The allocation is Calico's KDD objects on the API server: block, affinity, handle.
        blocks = api.objects(CALICO_GROUP, "ipamblocks")
        block = ipaddress.ip_network(f"{got.address.ip}/26", strict=False)
        assert [b["spec"]["cidr"] for b in blocks] == [str(block)]
        assert [a["spec"]["node"] for a in api.objects(CALICO_GROUP, "blockaffinities")] == ["n1"]
        assert [h["spec"]["handleID"] for h in api.objects(CALICO_GROUP, "ipamhandles")] == [owner.handle]
        assert ipam.lookup(owner) == [got.address.ip]
        ipam.release(owner)
        assert ipam.lookup(owner) == []
    finally:
        plugin.close()


def test_cni_netconf_datastore_errors(tmp_path: Path) -> None:
    with pytest.raises(CniError) as e:
        parse_conf(_netconf(datastore_type="etcd"))
    assert e.value.code == 7 and "datastore_type" in (e.value.details or "")
    with pytest.raises(CniError):
        parse_conf(_netconf(datastore_type="kubernetes", kubernetes="yes"))
    nc = parse_conf(_netconf(datastore_type="kubernetes", kubernetes={"kubeconfig": str(tmp_path / "none")}))
    plugin = CniPlugin()
    try:
        with pytest.raises(CniError) as e:
            plugin._datastore(nc)
        assert e.value.code == 7 and "kubeconfig" in (e.value.details or "")
    finally:
        plugin.close()


def test_felix_startup_on_kubernetes(api: FakeKubeApi, kubeconfig: str) -> None:
    ds = open_datastore("kubernetes", kubeconfig=kubeconfig, timeout=2)
    try:
        cfg = StartupConfig.from_env({"NODENAME": "n1", "IP": "10.99.0.11/24",
                                      "CALICO_IPV4POOL_CIDR": "10.244.0.0/16",
                                      "CALICO_IPV4POOL_VXLAN": "Always"})  # fmt: skip
        node = run_startup(ds, cfg)
        assert node.vxlan_tunnel_addr is not None
        assert [o["metadata"]["name"] for o in api.objects(CALICO_GROUP, "nodes")] == ["n1"]
        [pool] = api.objects(CALICO_GROUP, "ippools")
        assert pool["metadata"]["name"] == "default-ipv4-ippool" and pool["spec"]["vxlanMode"] == "Always"
    finally:
        ds.close()


def test_pycnictl_pool_on_kubernetes(
    api: FakeKubeApi, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    k = ["--datastore-type", "kubernetes", "--kubeconfig", kubeconfig]
    assert ctl_main(["pool", "add", "p1", "--cidr", "10.250.0.0/16", *k]) == 0
    assert [o["spec"]["cidr"] for o in api.objects(CALICO_GROUP, "ippools")] == ["10.250.0.0/16"]
    capsys.readouterr()
    assert ctl_main(["pool", "list", *k]) == 0
    assert "10.250.0.0/16" in capsys.readouterr().out
    assert ctl_main(["lease", "list", *k]) == 0
    assert ctl_main(["pool", "list", "--datastore-type", "consul"]) == 2
    err = capsys.readouterr().err
    assert "--datastore-type" in err and "unknown datastore type 'consul'" in err
