"""Flanneld wired on MemoryDatastore + FakeNetlink + FakeClock: kernel end state per backend, repair,
restart without disruption, lease loss, config errors."""

from __future__ import annotations

import ipaddress
import os
import random

import pytest

from pycni.constants import RTPROT_FLANNELD
from pycni.dataplane.netlink import Link
from pycni.datastore import SyncStatus, Update
from pycni.datastore.flannel import config_key, subnet_key
from pycni.datastore.memory import MemoryDatastore
from pycni.errors import Invalid
from pycni.flannel.daemon import Flanneld, Options
from pycni.testing.clock import FakeClock
from pycni.testing.fake_netlink import FakeNetlink

N = ipaddress.IPv4Network
IP = ipaddress.IPv4Address


def node_nl(ip: str = "10.99.0.11") -> FakeNetlink:
    nl = FakeNetlink()
    nl.link_set("lo", up=True)
    nl.link_add(Link(name="eth0", kind="dummy", mtu=1500))
    nl.addr_add("eth0", ipaddress.IPv4Interface(f"{ip}/24"))
    nl.link_set("eth0", up=True)
    return nl


def make(ds: MemoryDatastore, clock: FakeClock, tmp: str, nl: FakeNetlink | None = None,
         **kw: object) -> Flanneld:
    opts = Options(iface=["eth0"], subnet_file=os.path.join(tmp, "subnet.env"), iptables_forward_rules=False,
                   config_wait=1.0, **kw)  # type: ignore[arg-type]
    d = Flanneld(opts, ds, nl or node_nl(), clock=clock, rng=random.Random(7))
    d.setup()
    return d


def sync(d: Flanneld, ds: MemoryDatastore) -> None:
    """List the datastore into the agent (what the watch thread does) and step it."""
    assert d.agent is not None
    emit = d.emitter()
    for v in ds.list("/coreos.com/network/subnets/"):
        emit(Update(v.key, v.value, v.revision))
    emit(SyncStatus.IN_SYNC)
    d.agent.step()


def vx_lease(ip: str, mac: str) -> str:
    return (f'{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan",'
            f'"BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}')


def test_vxlan_node_programs_device_neigh_fdb_route(tmp_path: os.PathLike[str]) -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    ds.put(config_key(), '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
    ds.put(subnet_key(N("10.244.9.0/24")), vx_lease("10.99.0.12", "aa:bb:cc:00:00:09"), ttl=100)
    d = make(ds, clock, str(tmp_path))
    assert d.lease is not None
    own = d.lease.subnet
    with open(os.path.join(str(tmp_path), "subnet.env")) as f:
        assert f.read() == (f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={own.network_address + 1}/24\n"
                            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    nl = d.nl
    assert nl.link("flannel.1") is None  # nothing before in-sync
    sync(d, ds)
    dev = nl.link("flannel.1")
    assert dev is not None and dev.up and dev.mtu == 1450 and dev.vxlan is not None
    assert (dev.vxlan.vni, dev.vxlan.port, dev.vxlan.learning) == (1, 8472, False)
    assert nl.addrs("flannel.1") == [ipaddress.IPv4Interface(f"{own.network_address}/32")]
    # the lease advertises the device's MAC
    v = ds.get(d.lease.key)
    assert v is not None and dev.address in v.value
    assert [(n.dst, n.lladdr) for n in nl.neighs("flannel.1")] == [(IP("10.244.9.0"), "aa:bb:cc:00:00:09")]
    assert [(f.lladdr, f.dst) for f in nl.fdbs("flannel.1")] == [("aa:bb:cc:00:00:09", IP("10.99.0.12"))]
    [r] = nl.routes(proto=RTPROT_FLANNELD)
    assert (r.dst, r.gateway, r.oif, r.onlink) == (N("10.244.9.0/24"), IP("10.244.9.0"), "flannel.1", True)
    # the peer leaves: everything of it goes
    ds.delete(subnet_key(N("10.244.9.0/24")))
    d.emitter()(Update(subnet_key(N("10.244.9.0/24")), None, 99))
    d.agent.step()  # type: ignore[union-attr]
    assert nl.routes(proto=RTPROT_FLANNELD) == []
    assert nl.neighs("flannel.1") == [] and nl.fdbs("flannel.1") == []


def test_host_gw_repair_and_restart_keep_routes(tmp_path: os.PathLike[str]) -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    ds.put(config_key(), '{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}')
    ds.put(subnet_key(N("10.244.9.0/24")), '{"PublicIP":"10.99.0.12","BackendType":"host-gw"}')
    d = make(ds, clock, str(tmp_path))
    sync(d, ds)
    nl = d.nl
    want = [(N("10.244.9.0/24"), IP("10.99.0.12"), "eth0")]
    assert [(r.dst, r.gateway, r.oif) for r in nl.routes(proto=RTPROT_FLANNELD)] == want
    # deleted by hand: repaired on the next resync
    nl.route_delete(nl.routes(proto=RTPROT_FLANNELD)[0])
    d.agent.queue_resync()  # type: ignore[union-attr]
    d.agent.step()  # type: ignore[union-attr]
    assert [(r.dst, r.gateway, r.oif) for r in nl.routes(proto=RTPROT_FLANNELD)] == want
    # restart: same subnet, and the routes are not touched before in-sync nor after
    writes = nl.writes()
    d2 = make(ds, clock, str(tmp_path), nl=nl)  # type: ignore[arg-type]
    assert d2.lease is not None and d.lease is not None and d2.lease.subnet == d.lease.subnet
    sync(d2, ds)
    assert nl.writes() == writes
    assert [(r.dst, r.gateway, r.oif) for r in nl.routes(proto=RTPROT_FLANNELD)] == want


def test_vxlan_device_deleted_by_hand_comes_back_with_same_mac(tmp_path: os.PathLike[str]) -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    ds.put(config_key(), '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
    ds.put(subnet_key(N("10.244.9.0/24")), vx_lease("10.99.0.12", "aa:bb:cc:00:00:09"))
    d = make(ds, clock, str(tmp_path))
    sync(d, ds)
    nl = d.nl
    mac = nl.link("flannel.1").address  # type: ignore[union-attr]
    nl.link_delete("flannel.1")
    d.agent.step()  # type: ignore[union-attr]  # the agent's periodic resync, forced here
    clock.advance(11)
    d.agent.step()  # type: ignore[union-attr]
    dev = nl.link("flannel.1")
    assert dev is not None and dev.address == mac and dev.up
    assert len(nl.neighs("flannel.1")) == 1 and len(nl.fdbs("flannel.1")) == 1
    assert len(nl.routes(proto=RTPROT_FLANNELD)) == 1


def test_lost_lease_stops_the_daemon(tmp_path: os.PathLike[str]) -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    ds.put(config_key(), '{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}')
    d = make(ds, clock, str(tmp_path))
    sync(d, ds)
    assert d.lease is not None
    d.emitter()(Update(d.lease.key, None, 50))
    assert d.stop.is_set() and d.exit_code == 1


def test_bad_config_names_the_field(tmp_path: os.PathLike[str]) -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    ds.put(config_key(), '{"Network":"10.244.0.0/16","SubnetLen":12}')
    with pytest.raises(Invalid) as ei:
        make(ds, clock, str(tmp_path))
    assert ei.value.field == "SubnetLen"
    ds.put(config_key(), '{"Network":"10.99.0.0/16"}')  # overlaps the underlay
    with pytest.raises(Invalid) as ei:
        make(ds, clock, str(tmp_path))
    assert ei.value.field == "Network"


def test_healthz_answers_once_lease_held_and_applied(tmp_path: os.PathLike[str]) -> None:
    import json
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    ds.put(config_key(), '{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}')
    d = make(ds, clock, str(tmp_path), healthz_ip="127.0.0.1", healthz_port=port)
    srv = d.serve_healthz()
    assert srv is not None
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(url, timeout=5)
        assert ei.value.code == 503  # not applied yet
        sync(d, ds)
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert r.status == 200 and body["lease"] == str(d.lease.subnet)  # type: ignore[union-attr]
    finally:
        srv.shutdown()
        srv.server_close()


def test_vtep_mac_survives_a_lost_device_across_restarts(tmp_path: os.PathLike[str]) -> None:
    clock = FakeClock()
    ds = MemoryDatastore(clock=clock)
    ds.put(config_key(), '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
    d = make(ds, clock, str(tmp_path))
    sync(d, ds)
    mac = d.nl.link("flannel.1").address  # type: ignore[union-attr]
    d.nl.link_delete("flannel.1")  # gone while the daemon was down (e.g. a reboot of the netns)
    d2 = make(ds, clock, str(tmp_path), nl=d.nl)  # type: ignore[arg-type]
    assert d2.vtep_mac == mac  # taken from our previous lease's VtepMAC
    sync(d2, ds)
    assert d2.nl.link("flannel.1").address == mac  # type: ignore[union-attr]
    assert d2.lease is not None and d.lease is not None and d2.lease.subnet == d.lease.subnet


def test_sd_notify(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from pycni.flannel.daemon import sd_notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    path = os.path.join(str(tmp_path), "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sd_notify("READY=1") is True
        assert s.recv(64) == b"READY=1"


def test_iface_selection_by_regex_and_reachability(tmp_path: os.PathLike[str]) -> None:
    nl = node_nl()
    nl.link_add(Link(name="ens4", kind="dummy", mtu=9000))
    nl.addr_add("ens4", ipaddress.IPv4Interface("192.168.7.5/24"))
    nl.link_set("ens4", up=True)
    ds = MemoryDatastore()
    d = Flanneld(Options(iface_regex="^ens"), ds, nl)
    assert d.find_iface()[0] == "ens4" and d.find_iface()[2] == 9000
    d = Flanneld(Options(iface_can_reach="192.168.7.77"), ds, nl)
    assert d.find_iface()[:2] == ("ens4", ipaddress.IPv4Interface("192.168.7.5/24"))
    d = Flanneld(Options(iface=["10.99.0.11"]), ds, nl)
    assert d.find_iface()[0] == "eth0"
    with pytest.raises(Invalid):
        Flanneld(Options(iface_regex="("), ds, nl).find_iface()
