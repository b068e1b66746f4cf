"""TunnelDriver: felix's tunnel devices, tunl0 and vxlan.calico, reconciled like any driver.

The spec (`calc.felix.TunnelSpec`) says which devices should exist with which VNI, port, local
address, underlay device, MAC, MTU and /32 tunnel address. `apply()` reads each device back and
changes only what differs; a vxlan device whose immutable parameters differ (VNI, port, local
address, underlay) is deleted and recreated, as felix's vxlan manager does.

Quirks handled here:
- `tunl0` is the ipip module's fallback device: with the module loaded the kernel creates it in
  every namespace, so "add" may meet EEXIST (the netlink adapter tolerates that) and we never
  delete it; when IPIP is switched off we only take our address away.
- `vxlan.calico` is created with learning off: remote VTEPs come only from our static neighbour
  and FDB entries (felix's vxlanfdb), so nothing floods and nothing is learnt from spoofed frames.
- Device order matters (the Agent applies drivers in list order): this driver comes before the
  neighbour, FDB and route drivers, since those name the device.
"""

from __future__ import annotations

import ipaddress

import structlog

from pycni.calc.felix import TunnelSpec
from pycni.constants import CALI_VXLAN_DEV, IPIP_DEV
from pycni.dataplane.netlink import Link, Netlink, NetlinkError, VxlanInfo

log = structlog.get_logger(__name__)

OWNED = (IPIP_DEV, CALI_VXLAN_DEV)


class TunnelDriver:
    name = "tunnels"

    def __init__(self, netlink: Netlink) -> None:
        self._nl = netlink
        self._desired: dict[str, TunnelSpec] = {}
        self._dirty = True

    def set_desired(self, tunnels: tuple[TunnelSpec, ...]) -> None:
        new = {t.name: t for t in tunnels}
        if new != self._desired:
            self._desired = new
            self._dirty = True

    def queue_resync(self) -> None:
        self._dirty = True

    def apply(self) -> bool:
        if not self._dirty:
            return True
        ok = True
        for name in OWNED:
            try:
                t = self._desired.get(name)
                if t is None:
                    self._remove(name)
                elif t.kind == "vxlan":
                    self._ensure_vxlan(t)
                else:
                    self._ensure_ipip(t)
            except NetlinkError as e:
                ok = False
                log.warning("tunnel device not ready", dev=name, error=str(e), errno=e.errno)
        self._dirty = not ok
        return ok

    # -- helpers ---------------------------------------------------------------------------
    def _remove(self, name: str) -> None:
        link = self._nl.link(name)
        if link is None:
            return
        if name == CALI_VXLAN_DEV:
            self._nl.link_delete(name)
            log.info("tunnel device deleted", dev=name)
            return
        for a in self._nl.addrs(name):
            if isinstance(a, ipaddress.IPv4Interface):
                self._nl.addr_delete(name, a)
                log.info("tunnel address removed", dev=name, addr=str(a))

    def _addresses(self, t: TunnelSpec) -> None:
        want = ipaddress.IPv4Interface(f"{t.address}/32") if t.address is not None else None
        have = [a for a in self._nl.addrs(t.name) if isinstance(a, ipaddress.IPv4Interface)]
        for a in have:
            if a != want:
                self._nl.addr_delete(t.name, a)
                log.info("tunnel address removed", dev=t.name, addr=str(a))
        if want is not None and want not in have:
            self._nl.addr_add(t.name, want)
            log.info("tunnel address added", dev=t.name, addr=str(want))

    def _ensure_ipip(self, t: TunnelSpec) -> None:
        link = self._nl.link(t.name)
        if link is None:
            link = self._nl.link_add(Link(name=t.name, kind="ipip", mtu=t.mtu, up=True))
            log.info("tunnel device created", dev=t.name, kind="ipip", mtu=t.mtu)
        self._tune(link, t)
        self._addresses(t)

    def _ensure_vxlan(self, t: TunnelSpec) -> None:
        want = VxlanInfo(vni=t.vni, port=t.port, local=t.local, underlay=t.underlay, learning=False)
        link = self._nl.link(t.name)
        if link is not None and (link.kind != "vxlan" or link.vxlan is None or _differs(link.vxlan, want)):
            log.info("tunnel device replaced", dev=t.name, have=str(link.vxlan), want=str(want))
            self._nl.link_delete(t.name)
            link = None
        if link is None:
            link = self._nl.link_add(
                Link(name=t.name, kind="vxlan", mtu=t.mtu, address=t.mac, up=True, vxlan=want)
            )
            log.info(
                "tunnel device created",
                dev=t.name,
                kind="vxlan",
                vni=t.vni,
                port=t.port,
                local=str(t.local),
                mac=t.mac,
                mtu=t.mtu,
            )
        self._tune(link, t)
        self._addresses(t)

    def _tune(self, link: Link, t: TunnelSpec) -> None:
        if link.mtu != t.mtu:
            self._nl.link_set(t.name, mtu=t.mtu)
            log.info("tunnel mtu set", dev=t.name, mtu=t.mtu, was=link.mtu)
        if t.mac and link.address != t.mac:
            self._nl.link_set(t.name, address=t.mac)
            log.info("tunnel mac set", dev=t.name, mac=t.mac, was=link.address)
        if not link.up:
            self._nl.link_set(t.name, up=True)
            log.info("tunnel device up", dev=t.name)


def _differs(have: VxlanInfo, want: VxlanInfo) -> bool:
    return (
        have.vni != want.vni
        or have.port != want.port
        or (want.local is not None and have.local != want.local)
        or (want.underlay is not None and have.underlay != want.underlay)
        or have.learning
    )
