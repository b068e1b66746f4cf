"""`/run/flannel/subnet.env`: the file the CNI plugin reads, in flannel's exact format and order.

flannel's WriteSubnetFile writes NETWORK, SUBNET (the lease's first usable address with the lease's
prefix length, `10.244.1.1/24`), [IPV6_*], MTU, IPMASQ, through renameio so a reader never sees a
half-written file. We do the same (`pycni.atomic.write_atomic`: temp file, fsync, `os.replace`).
The file is rewritten only when its content changes (the CNI plugin may be reading it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pycni.atomic import write_atomic
from pycni.errors import Invalid


@dataclass(frozen=True)
class SubnetEnv:
    network: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Network  # the lease
    mtu: int
    ipmasq: bool

    def render(self) -> str:
        first = self.subnet.network_address + 1
        return (f"FLANNEL_NETWORK={self.network}\n"
                f"FLANNEL_SUBNET={first}/{self.subnet.prefixlen}\n"
                f"FLANNEL_MTU={self.mtu}\n"
                f"FLANNEL_IPMASQ={'true' if self.ipmasq else 'false'}\n")


def write(path: str, env: SubnetEnv) -> bool:
    """Write atomically; returns False when the file already held exactly this content."""
    return write_atomic(path, env.render(), mode=0o644)


def read(path: str) -> dict[str, str]:
    """KEY=value pairs of an existing subnet.env ({} when absent)."""
    out: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    k, v = line.split("=", 1)
                    out[k.strip()] = v.strip()
    except OSError:
        return {}
    return out


def previous_subnet(path: str) -> ipaddress.IPv4Network | None:
    """The lease recorded by a previous run (FLANNEL_SUBNET is `<first ip>/<len>`), or None."""
    v = read(path).get("FLANNEL_SUBNET")
    if not v:
        return None
    try:
        return ipaddress.IPv4Interface(v).network
    except ValueError:
        return None


def parse(path: str) -> SubnetEnv:
    """Read a complete subnet.env (what the CNI plugin needs); Invalid naming the missing key."""
    kv = read(path)
    for k in ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"):
        if k not in kv:
            raise Invalid(f"{path}: {k} is missing", field=k)
    try:
        return SubnetEnv(ipaddress.IPv4Network(kv["FLANNEL_NETWORK"].split(",")[0]),
                         ipaddress.IPv4Interface(kv["FLANNEL_SUBNET"]).network,
                         int(kv["FLANNEL_MTU"]), kv["FLANNEL_IPMASQ"] == "true")
    except ValueError as e:
        raise Invalid(f"{path}: {e}", field="subnet.env") from None
