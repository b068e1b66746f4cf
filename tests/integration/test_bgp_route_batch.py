"""bgpd's bulk route writes (`pycni.bgp.route_batch`) and the learned-route driver on them, in a
throwaway namespace (root); effects read back with `ip -j`."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pycni.bgp.drivers import LearnedRoutes
from pycni.bgp.route_batch import CHUNK, RouteWrite, write_routes
from pycni.calc.bgp import BgpSpec
from pycni.cni.rtnl import Rtnl, socket_in_netns
from pycni.constants import RTPROT_BGPD
from pycni.dataplane.netlink import Route
from pycni.dataplane.pyroute2_netlink import Pyroute2Netlink

pytestmark = pytest.mark.privileged


def ipj(ns: str, *args: str) -> Any:
    out = subprocess.run(["ip", "-n", ns, "-j", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout or "[]")


@pytest.fixture
def ns() -> Iterator[tuple[str, Rtnl]]:
    name = f"pyt-rb-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    rt = None
    try:
        for cmd in (
            ["link", "set", "lo", "up"],
            ["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
            ["link", "set", "eth0p", "up"],
            ["link", "set", "eth0", "up"],
            ["addr", "add", "10.99.0.1/24", "dev", "eth0"],
        ):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            rt = socket_in_netns(fd)
        finally:
            os.close(fd)
        yield name, rt
    finally:
        if rt is not None:
            rt.close()
        subprocess.run(["ip", "netns", "del", name], check=False)


def blocks(n: int) -> list[Any]:
    return list(ipaddress.ip_network("10.240.0.0/12").subnets(new_prefix=26))[:n]


def test_bulk_writes_cross_chunks_and_report_each_error(ns: tuple[str, Rtnl]) -> None:
    name, rt = ns
    oif = next(li.index for li in rt.links() if li.name == "eth0")
    nets = blocks(1200)  # > CHUNK bytes of requests: several sends, acks matched across them
    assert 1200 * 40 > CHUNK
    gw = ipaddress.ip_address("10.99.0.12")
    writes = [RouteWrite(dst=n, proto=RTPROT_BGPD, oif=oif, gateway=gw) for n in nets]
    writes.insert(600, RouteWrite(dst=ipaddress.ip_network("10.250.0.0/26"), proto=RTPROT_BGPD, oif=9999))
    errs = write_routes(rt, writes)
    assert errs[600] == errno.ENODEV and errs[:600] == [0] * 600 and errs[601:] == [0] * 600
    got = {r["dst"]: r for r in ipj(name, "route", "show", "proto", str(RTPROT_BGPD))}
    assert set(got) == {str(n) for n in nets}
    assert got["10.240.0.0/26"]["gateway"] == "10.99.0.12" and got["10.240.0.0/26"]["dev"] == "eth0"
    # replace is idempotent; deletes of present and absent routes each get their own verdict
    assert write_routes(rt, writes[:10]) == [0] * 10
    dels = [RouteWrite(dst=n, proto=RTPROT_BGPD, delete=True) for n in nets[:700]]
    dels.append(RouteWrite(dst=ipaddress.ip_network("10.251.0.0/26"), proto=RTPROT_BGPD, delete=True))
    errs = write_routes(rt, dels)
    assert errs[:700] == [0] * 700 and errs[700] == errno.ESRCH
    left = {r["dst"] for r in ipj(name, "route", "show", "proto", str(RTPROT_BGPD))}
    assert left == {str(n) for n in nets[700:]}


def test_learned_routes_driver_bulk_and_fallback(ns: tuple[str, Rtnl]) -> None:
    name, rt = ns
    nl = Pyroute2Netlink(name)
    try:
        drv = LearnedRoutes(nl, proto=RTPROT_BGPD, fast=rt)
        gw = ipaddress.ip_address("10.99.0.12")
        routes = {n: Route(dst=n, gateway=gw, oif="eth0", proto=RTPROT_BGPD) for n in blocks(800)}
        missing = ipaddress.ip_network("10.252.0.0/26")
        routes[missing] = Route(dst=missing, gateway=gw, oif="nosuchdev", proto=RTPROT_BGPD)
        drv.set_spec(BgpSpec(ready=True, routes=routes, hold_deletions=False))
        assert drv.apply() is False  # the route on a missing device stays pending (and is logged)
        shown = {r["dst"] for r in ipj(name, "route", "show", "proto", str(RTPROT_BGPD))}
        assert shown == {str(n) for n in blocks(800)}
        keep = dict(list(routes.items())[:100])
        drv.set_spec(BgpSpec(ready=True, routes=keep, hold_deletions=False))
        assert drv.apply() is True
        shown = {r["dst"] for r in ipj(name, "route", "show", "proto", str(RTPROT_BGPD))}
        assert shown == {str(n) for n in blocks(100)}
    finally:
        nl.close()
