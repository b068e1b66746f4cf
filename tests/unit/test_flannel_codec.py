"""flannel formats: lease keys, LeaseAttrs JSON as Go writes it, net-conf.json defaults/errors, subnet.env."""

from __future__ import annotations

import ipaddress
import os

import pytest

from pycni.datastore.flannel import (
    LeaseAttrs,
    check_against_underlay,
    decode_lease,
    parse_config,
    parse_subnet_key,
    subnet_key,
    vxlan_backend_data,
)
from pycni.errors import Invalid
from pycni.flannel import subnet_env

N = ipaddress.IPv4Network


def test_subnet_keys_round_trip() -> None:
    assert subnet_key(N("10.244.1.0/24")) == "/coreos.com/network/subnets/10.244.1.0-24"
    assert subnet_key(N("10.5.52.0/24"), "/x/net/") == "/x/net/subnets/10.5.52.0-24"
    assert parse_subnet_key("/coreos.com/network/subnets/10.244.1.0-24") == N("10.244.1.0/24")
    assert parse_subnet_key("/coreos.com/network/subnets/10.5.52.0-24&fc00::-64") == N("10.5.52.0/24")
    assert parse_subnet_key("/coreos.com/network/subnets/garbage") is None
    assert parse_subnet_key("/coreos.com/network/subnets/10.244.1.5-24") is None  # host bits


def test_lease_attrs_json_is_what_flannel_writes() -> None:
    doc = ('{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
           '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}')
    a = LeaseAttrs(ipaddress.IPv4Address("192.168.64.3"), "vxlan", vxlan_backend_data(1, "c6:d2:32:6f:8f:44"))
    assert a.to_json() == doc
    assert LeaseAttrs.from_json(doc) == a
    hg = LeaseAttrs(ipaddress.IPv4Address("10.99.0.11"), "host-gw")
    assert hg.to_json() == '{"PublicIP":"10.99.0.11","PublicIPv6":null,"BackendType":"host-gw"}'


def test_lease_attrs_case_insensitive_and_bad() -> None:
    a = LeaseAttrs.from_json('{"publicip":"10.0.0.1","backendtype":"vxlan",'
                             '"backenddata":{"vtepmac":"AA:BB:CC:DD:EE:FF"}}')
    assert a.public_ip == ipaddress.IPv4Address("10.0.0.1") and a.vtep_mac == "aa:bb:cc:dd:ee:ff"
    for bad in ("nope", "[]", '{"PublicIP":"x"}', '{"PublicIP":"1.2.3.4","BackendData":3}'):
        with pytest.raises(Invalid):
            LeaseAttrs.from_json(bad)
    with pytest.raises(Invalid):
        decode_lease("/coreos.com/network/subnets/bad", '{"PublicIP":"1.2.3.4"}')


def test_config_defaults() -> None:
    c = parse_config('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
    assert c.subnet_len == 24
    assert str(c.subnet_min) == "10.244.1.0" and str(c.subnet_max) == "10.244.255.0"
    assert c.backend.vni == 1 and c.backend.dstport == 8472 and c.backend.device == "flannel.1"
    assert not c.backend.direct_routing
    c = parse_config('{"Network":"10.20.0.0/24","Backend":{"Type":"host-gw"}}')
    assert c.subnet_len == 26 and str(c.subnet_min) == "10.20.0.64" and str(c.subnet_max) == "10.20.0.192"
    assert len(c.candidate_subnets()) == 3
    # the seed's spelling ("Directrouting") works, as Go's JSON decoding is case-insensitive
    c = parse_config('{"Network":"10.20.0.0/16",'
                     '"Backend":{"Type":"vxlan","Directrouting":true,"VNI":7,"Port":4789}}')
    assert c.backend.direct_routing and c.backend.vni == 7 and c.backend.dstport == 4789
    assert c.backend.device == "flannel.7"
    assert parse_config('{"Network":"10.1.0.0/16"}').backend.type == "vxlan"


@pytest.mark.parametrize("doc,fld", [
    ("{", "config"),
    ('{"Backend":{"Type":"vxlan"}}', "Network"),
    ('{"Network":"10.244.1.0/16"}', "Network"),  # host bits set
    ('{"Network":"10.0.0.0/29"}', "Network"),  # too small
    ('{"Network":"10.0.0.0/16","SubnetLen":31}', "SubnetLen"),
    ('{"Network":"10.0.0.0/16","SubnetLen":17}', "SubnetLen"),
    ('{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}', "SubnetMin"),
    ('{"Network":"10.0.0.0/16","SubnetMax":"10.0.3.7"}', "SubnetMax"),
    ('{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.3.0"}', "SubnetMin"),
    ('{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}', "Backend.Type"),
    ('{"Network":"10.0.0.0/16","Backend":{"Type":"carrier-pigeon"}}', "Backend.Type"),
    ('{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":"one"}}', "Backend.VNI"),
    ('{"Network":"10.0.0.0/16","EnableIPv6":true}', "EnableIPv6"),
])
def test_config_errors_name_the_field(doc: str, fld: str) -> None:
    with pytest.raises(Invalid) as ei:
        parse_config(doc)
    assert ei.value.field == fld, str(ei.value)


def test_network_overlapping_underlay_is_refused() -> None:
    c = parse_config('{"Network":"10.99.0.0/16"}')
    with pytest.raises(Invalid) as ei:
        check_against_underlay(c, [N("10.99.0.0/24")])
    assert ei.value.field == "Network"
    check_against_underlay(parse_config('{"Network":"10.244.0.0/16"}'), [N("10.99.0.0/24")])


def test_subnet_env_exact_format_and_atomic(tmp_path: os.PathLike[str]) -> None:
    p = os.path.join(str(tmp_path), "flannel", "subnet.env")
    env = subnet_env.SubnetEnv(N("10.244.0.0/16"), N("10.244.1.0/24"), 1450, True)
    assert subnet_env.write(p, env) is True
    with open(p) as f:
        assert f.read() == ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    assert subnet_env.write(p, env) is False  # unchanged: not rewritten
    assert subnet_env.previous_subnet(p) == N("10.244.1.0/24")
    assert subnet_env.parse(p) == env
    assert os.listdir(os.path.dirname(p)) == ["subnet.env"]  # no temp files left
    assert subnet_env.previous_subnet(p + ".missing") is None
    with open(p, "w") as f:
        f.write("FLANNEL_NETWORK=10.244.0.0/16\n")
    with pytest.raises(Invalid) as ei:
        subnet_env.parse(p)
    assert ei.value.field == "FLANNEL_SUBNET"

