"""Devices we own: ensure functions (bridge, vxlan, ipip) and LinkDriver, which keeps them so.

`ensure_*` are idempotent one-shots, usable from the CNI plugin and from daemons at start:
- `ensure_bridge`: create if missing, fix MTU, bring up, add the gateway address (other addresses
  are left: a CNI bridge may carry several ranges);
- `ensure_vxlan`: flannel's `ensureLink`. An existing device is kept when it is compatible (same
  kind, VNI, port, local address and underlay device, learning), otherwise deleted and created
  again, since those attributes cannot be changed in place. Then MTU, MAC, up, and exactly one
  address of each family we give (flannel's `ensureV4AddressOnLink`: the old /32 of a previous
  lease must go, or the kernel would pick it as source);
- `ensure_ipip`: `tunl0` is the ipip module's fallback device, present in every namespace once the
  module is loaded; the adapter treats EEXIST as success, and we only set MTU, address and up.

We never turn off tx checksum offload. flannel does (`ethtool -K flannel.1 tx-checksum-ip-generic
off`) to dodge a kernel bug of 2020 with vxlan and NAT; doing it by default costs throughput on
every kernel where the bug is fixed, so here it is not done at all.

`LinkDriver` holds the desired devices and checks each one on every `apply()`, which is a single
netlink get per device: a vxlan device deleted by hand is back at the next apply. When it creates
or recreates a device, everything that lived on it (neighbours, FDB entries, routes) is gone, so it
calls `on_recreate(name)`; daemons wire that to the other drivers' `queue_resync`.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from pycni.constants import IPIP_DEV
from pycni.dataplane.netlink import IPInterface, Link, Netlink, NetlinkError, VxlanInfo

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Device:
    """A device we own: kind "bridge", "vxlan" or "ipip"; `addrs` are the only ones it keeps
    (per family given; for bridges, the ones it must have)."""

    name: str
    kind: str
    mtu: int = 0  # 0: leave the kernel's
    addrs: tuple[IPInterface, ...] = ()
    vxlan: VxlanInfo | None = None
    mac: str = ""  # "" : the kernel's (random) one
    up: bool = True


def vxlan_compatible(have: Link, want: VxlanInfo) -> str | None:
    """None when `have` can be kept for `want`; else why not (flannel's vxlanLinksIncompat)."""
    if have.kind != "vxlan" or have.vxlan is None:
        return f"kind {have.kind or 'unknown'}"
    h = have.vxlan
    if h.vni != want.vni:
        return f"vni {h.vni} != {want.vni}"
    if want.port and h.port != want.port:
        return f"port {h.port} != {want.port}"
    if want.local is not None and h.local != want.local:
        return f"local {h.local} != {want.local}"
    if want.underlay and h.underlay != want.underlay:
        return f"underlay {h.underlay} != {want.underlay}"
    if h.learning != want.learning:
        return "learning differs"
    return None


def _settle(nl: Netlink, link: Link, *, mtu: int, mac: str, up: bool) -> bool:
    changed = False
    if mtu and link.mtu != mtu:
        nl.link_set(link.name, mtu=mtu)
        changed = True
    if mac and link.address != mac.lower():
        nl.link_set(link.name, address=mac.lower())
        changed = True
    if up and not link.up:
        nl.link_set(link.name, up=True)
        changed = True
    return changed


def _ensure_addrs(nl: Netlink, name: str, addrs: Iterable[IPInterface], *, exclusive: bool) -> bool:
    """Add `addrs`; with `exclusive`, remove other addresses of the families given (not link-local)."""
    want = list(addrs)
    if not want:
        return False
    have = nl.addrs(name)
    changed = False
    for a in want:
        if a not in have:
            nl.addr_add(name, a)
            changed = True
    if exclusive:
        families = {a.version for a in want}
        for a in have:
            if a.version in families and a not in want and not a.ip.is_link_local:
                nl.addr_delete(name, a)
                changed = True
    return changed


def ensure_bridge(nl: Netlink, name: str, addr: IPInterface | None = None, mtu: int = 0) -> Link:
    return _ensure_bridge(nl, name, (addr,) if addr else (), mtu)[0]


def ensure_vxlan(
    nl: Netlink, name: str, info: VxlanInfo, mtu: int = 0, addr: IPInterface | None = None, *, mac: str = ""
) -> Link:
    return _ensure_vxlan(nl, name, info, mtu, (addr,) if addr else (), mac=mac)[0]


def ensure_ipip(nl: Netlink, name: str = IPIP_DEV, addr: IPInterface | None = None, mtu: int = 0) -> Link:
    return _ensure_ipip(nl, name, (addr,) if addr else (), mtu)[0]


# Each returns (the device, created, changed): created means whatever lived on it is gone.
Ensured = tuple[Link, bool, bool]


def _ensure_bridge(nl: Netlink, name: str, addrs: tuple[IPInterface, ...], mtu: int) -> Ensured:
    link = nl.link(name)
    created = False
    if link is None:
        try:
            link = nl.link_add(Link(name=name, kind="bridge", mtu=mtu or 1500))
            created = True
            log.info("bridge created", dev=name, mtu=link.mtu)
        except NetlinkError as e:
            link = nl.link(name) if e.errno == errno.EEXIST else None
            if link is None:
                raise
    if link.kind != "bridge":
        raise NetlinkError(f"{name} exists and is a {link.kind or 'non-bridge'} device", errno=errno.EEXIST)
    changed = _settle(nl, link, mtu=mtu, mac="", up=True)
    changed |= _ensure_addrs(nl, name, addrs, exclusive=False)
    return (nl.link(name) or link) if changed else link, created, changed or created


def _ensure_vxlan(
    nl: Netlink, name: str, info: VxlanInfo, mtu: int, addrs: tuple[IPInterface, ...], *, mac: str = ""
) -> Ensured:
    link = nl.link(name)
    created = False
    if link is not None:
        why = vxlan_compatible(link, info)
        if why:
            log.info("vxlan device incompatible, recreating", dev=name, reason=why)
            nl.link_delete(name)
            link = None
    if link is None:
        link = nl.link_add(Link(name=name, kind="vxlan", mtu=mtu or 1500, address=mac.lower(), vxlan=info))
        log.info("vxlan device created", dev=name, vni=info.vni, port=info.port, mtu=link.mtu)
        created = True
    changed = _settle(nl, link, mtu=mtu, mac=mac, up=True)
    changed |= _ensure_addrs(nl, name, addrs, exclusive=True)
    return (nl.link(name) or link) if changed else link, created, changed or created


def _ensure_ipip(nl: Netlink, name: str, addrs: tuple[IPInterface, ...], mtu: int) -> Ensured:
    link = nl.link(name)
    created = False
    if link is None:
        link = nl.link_add(Link(name=name, kind="ipip", mtu=mtu or 1480))
        created = True
        log.info("ipip device ready", dev=name, mtu=link.mtu)
    changed = _settle(nl, link, mtu=mtu, mac="", up=True)
    changed |= _ensure_addrs(nl, name, addrs, exclusive=True)
    return (nl.link(name) or link) if changed else link, created, changed or created


class LinkDriver:
    """Keeps the desired devices present and right; deletes those no longer desired (ipip's
    fallback device cannot be deleted: it is set down and stripped of its addresses instead)."""

    def __init__(
        self, nl: Netlink, *, name: str = "links", on_recreate: Callable[[str], None] | None = None
    ) -> None:
        self.nl = nl
        self.name = name
        self.on_recreate = on_recreate
        self._desired: dict[str, Device] = {}
        self._owned: set[str] = set()  # names we have programmed in this process
        self._last_errno: dict[str, int] = {}  # warn once per device and errno, then DEBUG
        self._log = log.bind(driver=name)

    def set_desired(self, devices: Iterable[Device]) -> None:
        self._desired = {d.name: d for d in devices}

    def desired(self) -> list[Device]:
        return list(self._desired.values())

    def queue_resync(self) -> None:
        """Nothing to forget: every apply reads each device afresh."""

    def apply(self) -> bool:
        ok = True
        changed: list[str] = []
        for dev in self._desired.values():
            try:
                if self._ensure(dev):
                    changed.append(dev.name)
                self._owned.add(dev.name)
            except NetlinkError as e:
                ok = False
                self._log.warning(
                    "device not ready", dev=dev.name, kind=dev.kind, error=str(e), errno=e.errno
                )
        for gone in sorted(self._owned - set(self._desired)):
            try:
                self._remove(gone)
                self._owned.discard(gone)
                changed.append(gone)
            except NetlinkError as e:
                ok = False
                self._log.warning("device removal failed", dev=gone, error=str(e), errno=e.errno)
        if changed:
            self._log.info("links applied", changed=changed, ok=ok)
        else:
            self._log.debug("links applied", devices=len(self._desired), ok=ok)
        return ok

    def _ensure(self, d: Device) -> bool:
        if d.kind == "vxlan":
            if d.vxlan is None:
                raise NetlinkError(f"vxlan {d.name} needs VxlanInfo", errno=errno.EINVAL)
            _, created, changed = _ensure_vxlan(self.nl, d.name, d.vxlan, d.mtu, d.addrs, mac=d.mac)
        elif d.kind == "bridge":
            _, created, changed = _ensure_bridge(self.nl, d.name, d.addrs, d.mtu)
        elif d.kind == "ipip":
            _, created, changed = _ensure_ipip(self.nl, d.name, d.addrs, d.mtu)
        else:
            raise NetlinkError(f"{d.name}: unsupported kind {d.kind!r}", errno=errno.EOPNOTSUPP)
        if created and self.on_recreate is not None:
            self.on_recreate(d.name)
        return changed

    def _remove(self, name: str) -> None:
        link = self.nl.link(name)
        if link is None:
            return
        if link.kind == "ipip" and name == IPIP_DEV:
            for a in self.nl.addrs(name):
                self.nl.addr_delete(name, a)
            self.nl.link_set(name, up=False)
            return
        self.nl.link_delete(name)
        self._log.info("device deleted", dev=name)
