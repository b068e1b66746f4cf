"""pycnictl lease / flannel-config on a MemoryDatastore: flannel's layout in, tables and JSON out."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from pycni_daemons.ctl import main

from pycni.cli import ipam as cli_ipam
from pycni.datastore.memory import MemoryDatastore


@pytest.fixture
def ds() -> Iterator[MemoryDatastore]:
    m = MemoryDatastore()
    cli_ipam.set_datastore_factory(lambda args: m)
    try:
        yield m
    finally:
        cli_ipam.set_datastore_factory(None)


def test_lease_list_reserve_delete(ds: MemoryDatastore, capsys: pytest.CaptureFixture[str]) -> None:
    ds.put("/coreos.com/network/subnets/10.244.1.0-24",
           '{"PublicIP":"10.99.0.11","PublicIPv6":null,"BackendType":"vxlan",'
           '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}', ttl=100)
    assert main(["lease", "reserve", "10.244.7.0/24", "--public-ip", "10.99.0.17"]) == 0
    assert ds.get("/coreos.com/network/subnets/10.244.7.0-24").value == (  # type: ignore[union-attr]
        '{"PublicIP":"10.99.0.17","PublicIPv6":null}')
    capsys.readouterr()
    assert main(["lease", "list", "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["subnet"], r["public_ip"], r["kind"], r["vtep_mac"]) for r in rows] == [
        ("10.244.1.0/24", "10.99.0.11", "lease", "aa:bb:cc:dd:ee:01"),
        ("10.244.7.0/24", "10.99.0.17", "reservation", "")]
    assert main(["lease", "list"]) == 0
    assert "10.244.1.0/24" in capsys.readouterr().out
    assert main(["lease", "reserve", "10.244.7.0/24", "--public-ip", "10.99.0.18"]) == 2
    assert main(["lease", "delete", "10.244.7.0/24"]) == 0
    assert main(["lease", "delete", "10.244.7.0/24"]) == 1


def test_config_set_validates(ds: MemoryDatastore, tmp_path: object,
                              capsys: pytest.CaptureFixture[str]) -> None:

    p = os.path.join(str(tmp_path), "net-conf.json")
    with open(p, "w") as f:
        f.write('{"Network":"10.244.0.0/16","SubnetLen":40}')
    assert main(["flannel-config", "set", p]) == 2
    assert "SubnetLen" in capsys.readouterr().err
    with open(p, "w") as f:
        f.write('{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}')
    assert main(["flannel-config", "set", p]) == 0
    capsys.readouterr()
    assert main(["flannel-config", "show"]) == 0
    assert json.loads(capsys.readouterr().out)["Backend"]["Type"] == "host-gw"
