"""The vxlan device `flannel.<VNI>` as a `pycni.dataplane.links.Device`, and what follows a (re)creation.

flannel's device.go semantics come from `LinkDriver`/`ensure_vxlan` (kept when compatible, else
recreated; MTU, up, exactly one IPv4 address `<own subnet>.0/32`). What is flannel's own:
- The MAC is pinned to the one our lease advertises as VtepMAC. A device deleted by hand comes
  back with the same MAC, so no peer holds a stale neighbour entry and the lease need not change.
- After a (re)creation: IPv6 router advertisements are ignored on it (`accept_ra=0`, as flannel),
  the tables behind it resync (the kernel flushed its neighbours, FDB entries and routes), and,
  only if asked, TX checksum offload is turned off. It stays on by default: flannel's old
  workaround (`ethtool -K flannel.1 tx off`) costs ~70% of vxlan throughput on this kernel
  (lab-notes e); `--vxlan-tx-csum-off` exists for kernels with the 2020 vxlan/NAT checksum bug.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import structlog

from pycni.calc.flannel import FlannelSpec, VxlanDevice
from pycni.dataplane.links import Device
from pycni.dataplane.netlink import Netlink, VxlanInfo

log = structlog.get_logger(__name__)


def set_tx_csum(dev: str, on: bool) -> None:
    """ethtool's tx checksum offload switch (an ioctl pyroute2 has no stable API for)."""
    exe = shutil.which("ethtool")
    if exe is None:
        log.warning("ethtool not found: tx checksum offload left as is", dev=dev)
        return
    r = subprocess.run([exe, "-K", dev, "tx", "on" if on else "off"], capture_output=True, text=True)
    if r.returncode != 0:
        log.warning("ethtool failed", dev=dev, error=r.stderr.strip())
    else:
        log.info("tx checksum offload set", dev=dev, on=on)


def device_of(v: VxlanDevice, mac: str) -> Device:
    return Device(name=v.name, kind="vxlan", mtu=v.mtu, addrs=(v.address,), mac=mac,
                  vxlan=VxlanInfo(vni=v.vni, port=v.port, local=v.local, underlay=v.underlay,
                                  learning=v.learning))


def devices(spec: FlannelSpec, mac: str) -> list[Device]:
    return [device_of(spec.vxlan, mac)] if spec.vxlan is not None else []


def after_create(
    nl: Netlink,
    *,
    resync: Callable[[], None],
    tx_csum_off: bool = False,
    set_csum: Callable[[str, bool], None] = set_tx_csum,
) -> Callable[[str], None]:
    """The `on_recreate` hook for LinkDriver."""

    def hook(name: str) -> None:
        try:
            nl.sysctl_set(f"net/ipv6/conf/{name}/accept_ra", "0")
        except Exception as e:  # no IPv6 in this namespace: nothing to ignore
            log.debug("accept_ra not set", dev=name, error=str(e))
        if tx_csum_off:
            set_csum(name, False)
        resync()

    return hook
