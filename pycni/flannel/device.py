"""VxlanDevice driver: `flannel.<VNI>` as the spec says, recreated when it drifts or vanishes.

flannel's device.go semantics, level-triggered: the device is a vxlan with our VNI, dstport, local
address (the PublicIP) and underlay device, learning off (every peer is programmed statically, so
the kernel must not learn or flood); its MTU is the underlay's minus 50; it holds exactly
`<own subnet>.0/32` (other addresses are removed); IPv6 router advertisements are ignored
(`accept_ra=0`). An existing device with another VNI, port, local address or underlay cannot be
modified in place, so it is deleted and recreated, as flannel's ensureLink does.

Two deliberate choices:
- The MAC is pinned: the one our lease advertises as VtepMAC. A device deleted by hand comes back
  with the same MAC, so no peer has stale neighbour entries and the lease need not change.
- TX checksum offload stays on. flannel's old workaround (`ethtool -K flannel.1 tx off`) costs
  about 70% of vxlan throughput on this kernel (lab-notes e); `tx_csum_off=True` applies it for
  kernels with the checksum bug, right after each (re)creation.

Deleting the device flushes the kernel's neighbours, FDB entries and routes on it. The driver
calls `on_recreated` so the tables behind it resync in the same apply pass (the device driver is
applied first).
"""

from __future__ import annotations

import errno
import ipaddress
import shutil
import subprocess
from collections.abc import Callable

import structlog

from pycni.calc.flannel import FlannelSpec, VxlanDevice
from pycni.dataplane.netlink import Link, Netlink, NetlinkError, VxlanInfo

log = structlog.get_logger(__name__)


def set_tx_csum(dev: str, on: bool) -> None:
    """ethtool's tx checksum offload switch (ethtool ioctl; pyroute2 has no stable API for it)."""
    exe = shutil.which("ethtool")
    if exe is None:
        log.warning("ethtool not found: tx checksum offload left as is", dev=dev)
        return
    r = subprocess.run([exe, "-K", dev, "tx", "on" if on else "off"], capture_output=True, text=True)
    if r.returncode != 0:
        log.warning("ethtool failed", dev=dev, error=r.stderr.strip())
    else:
        log.info("tx checksum offload set", dev=dev, on=on)


class VxlanDeviceDriver:
    name = "vxlan-device"

    def __init__(
        self,
        nl: Netlink,
        *,
        mac: str,
        tx_csum_off: bool = False,
        on_recreated: Callable[[], None] | None = None,
        set_csum: Callable[[str, bool], None] = set_tx_csum,
    ) -> None:
        self._nl = nl
        self.mac = mac.lower()
        self._tx_csum_off = tx_csum_off
        self._on_recreated = on_recreated
        self._set_csum = set_csum
        self._desired: VxlanDevice | None = None
        self.creations = 0

    def set_desired(self, spec: FlannelSpec) -> None:
        self._desired = spec.vxlan

    def queue_resync(self) -> None:
        pass  # apply() always reads the device: one cheap netlink get

    def _compatible(self, link: Link, want: VxlanDevice) -> bool:
        vx = link.vxlan
        return (link.kind == "vxlan" and vx is not None and vx.vni == want.vni and vx.port == want.port
                and (vx.local is None or vx.local == want.local)
                and (vx.underlay is None or vx.underlay == want.underlay)
                and vx.learning == want.learning)

    def apply(self) -> bool:
        want = self._desired
        if want is None:
            return True
        nl = self._nl
        link = nl.link(want.name)
        if link is not None and not self._compatible(link, want):
            log.info("vxlan device incompatible, recreating", dev=want.name, have=str(link.vxlan))
            nl.link_delete(want.name)
            link = None
        created = False
        if link is None:
            try:
                link = nl.link_add(Link(
                    name=want.name, kind="vxlan", mtu=want.mtu, address=self.mac,
                    vxlan=VxlanInfo(vni=want.vni, port=want.port, local=want.local, underlay=want.underlay,
                                    learning=want.learning)))
            except NetlinkError as e:
                if e.errno != errno.EEXIST:
                    raise
                link = nl.link(want.name)
                if link is None:
                    return False
            created = True
            self.creations += 1
            log.info("vxlan device created", dev=want.name, vni=want.vni, port=want.port,
                     local=str(want.local), mac=self.mac, mtu=want.mtu)
        if link.address and link.address != self.mac:
            nl.link_set(want.name, address=self.mac)
            log.info("vxlan device mac restored", dev=want.name, mac=self.mac)
        if link.mtu != want.mtu:
            nl.link_set(want.name, mtu=want.mtu)
            log.info("vxlan device mtu set", dev=want.name, mtu=want.mtu)
        have = nl.addrs(want.name)
        for a in have:
            if a != want.address and isinstance(a, ipaddress.IPv4Interface):
                nl.addr_delete(want.name, a)
                log.info("address removed", dev=want.name, addr=str(a))
        if want.address not in have:
            nl.addr_add(want.name, want.address)
            log.info("address added", dev=want.name, addr=str(want.address))
        if not link.up:
            nl.link_set(want.name, up=True)
            log.info("link up", dev=want.name)
        if created:
            try:
                nl.sysctl_set(f"net/ipv6/conf/{want.name}/accept_ra", "0")
            except Exception as e:  # no IPv6 in this namespace: nothing to ignore
                log.debug("accept_ra not set", dev=want.name, error=str(e))
            if self._tx_csum_off:
                self._set_csum(want.name, False)
            if self._on_recreated is not None:
                self._on_recreated()
        return True
