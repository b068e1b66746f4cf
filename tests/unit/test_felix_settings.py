"""FELIX_* environment parsing and the MTU file driver."""

from __future__ import annotations

import ipaddress
import os

import pytest

from pycni.calico.felix import MtuFileDriver, felix_config
from pycni.errors import Invalid


def test_felix_env() -> None:
    cfg = felix_config(
        {
            "FELIX_IPINIPENABLED": "false",
            "FELIX_VXLANMTU": "1400",
            "FELIX_VXLANVNI": "4097",
            "FELIX_NATOUTGOINGADDRESS": "10.99.0.11",
            "FELIX_INTERFACEPREFIX": "cali,tap",
        },
        "n1",
        "eth0",
        9000,
    )
    assert cfg.ipip_enabled is False and cfg.vxlan_enabled is None
    assert (cfg.vxlan_mtu, cfg.vxlan_vni, cfg.underlay_mtu, cfg.interface_prefix) == (
        1400,
        4097,
        9000,
        "cali",
    )
    assert cfg.nat_outgoing_address == ipaddress.IPv4Address("10.99.0.11")


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"FELIX_IPINIPENABLED": "maybe"}, "FELIX_IPINIPENABLED"),
        ({"FELIX_VXLANMTU": "big"}, "FELIX_VXLANMTU"),
        ({"FELIX_VXLANPORT": "70000"}, "FELIX_VXLANPORT"),
        ({"FELIX_NATOUTGOINGADDRESS": "x"}, "FELIX_NATOUTGOINGADDRESS"),
    ],
)
def test_felix_env_errors_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(Invalid) as ei:
        felix_config(env, "n1", "eth0", 1500)
    assert ei.value.field == name and name in str(ei.value)


def test_mtu_file(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(str(tmp_path), "calico", "mtu")
    d = MtuFileDriver(path)
    d.set_desired(1450)
    assert d.apply()
    assert open(path).read() == "1450\n"
    d.set_desired(1480)
    assert d.apply() and open(path).read() == "1480\n"
