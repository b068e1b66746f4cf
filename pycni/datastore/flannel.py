"""flannel's etcd formats: key layout, `LeaseAttrs` JSON and net-conf.json (parse, defaults, checks).

Everything here is byte-compatible with flannel v0.28 (pkg/subnet/config.go, pkg/subnet/subnet.go,
pkg/lease/lease.go), so a real flanneld and pycni-flanneld can share one etcd: our leases are
written as Go's `json.Marshal` would write them (struct field order, no spaces, `"PublicIPv6":null`,
omitempty for the backend fields), and theirs are read with Go's case-insensitive field matching
(the seeds write `"Directrouting": true`, which flannel accepts).

Config errors are `Invalid(field=...)` naming the offending field, so the daemon can print one clear
line and exit non-zero. One deliberate difference: flannel's code defaults a missing `Backend` to
`udp` (its docs say vxlan); we do not implement udp, so a missing backend means vxlan, as the docs
say. Only IPv4 is implemented; `EnableIPv6: true` is refused by name.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pycni.errors import Invalid

DEFAULT_PREFIX = "/coreos.com/network"
SUBNET_TTL = 24 * 3600.0  # flannel local_manager.go subnetTTL
RACE_RETRIES = 10  # flannel registry raceRetries
BACKENDS = ("host-gw", "vxlan")
KNOWN_FLANNEL_BACKENDS = (
    "udp", "wireguard", "ipip", "ipsec", "alivpc", "alloc", "gce", "awsvpc", "tencentvpc",
)

_KEY_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")


def config_key(prefix: str = DEFAULT_PREFIX) -> str:
    return prefix.rstrip("/") + "/config"


def subnets_prefix(prefix: str = DEFAULT_PREFIX) -> str:
    return prefix.rstrip("/") + "/subnets/"


def subnet_key_name(subnet: ipaddress.IPv4Network) -> str:
    """flannel's MakeSubnetKey: `10.244.1.0-24`."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def subnet_key(subnet: ipaddress.IPv4Network, prefix: str = DEFAULT_PREFIX) -> str:
    return subnets_prefix(prefix) + subnet_key_name(subnet)


def parse_subnet_key(key: str) -> ipaddress.IPv4Network | None:
    """The IPv4 subnet a lease key names (the last path element), or None if it is not a lease key."""
    m = _KEY_RE.fullmatch(key.rsplit("/", 1)[-1])
    if not m:
        return None
    try:
        return ipaddress.IPv4Network(f"{m.group(1)}/{m.group(2)}", strict=True)
    except ValueError:
        return None


def _ci(obj: dict[str, Any], name: str) -> Any:
    """Go's encoding/json field matching: exact name first, then case-insensitive."""
    if name in obj:
        return obj[name]
    low = name.lower()
    for k, v in obj.items():
        if k.lower() == low:
            return v
    return None


@dataclass(frozen=True)
class LeaseAttrs:
    """flannel's lease.LeaseAttrs (IPv4 part). `backend_data` is the raw decoded JSON object."""

    public_ip: ipaddress.IPv4Address
    backend_type: str = ""
    backend_data: dict[str, Any] | None = field(default=None, compare=True, hash=False)

    def to_json(self) -> str:
        out: dict[str, Any] = {"PublicIP": str(self.public_ip), "PublicIPv6": None}
        if self.backend_type:
            out["BackendType"] = self.backend_type
        if self.backend_data:
            out["BackendData"] = self.backend_data
        return json.dumps(out, separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> LeaseAttrs:
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise Invalid(f"lease value is not JSON: {e}", field="LeaseAttrs") from None
        if not isinstance(obj, dict):
            raise Invalid("lease value is not a JSON object", field="LeaseAttrs")
        pip = _ci(obj, "PublicIP")
        try:
            public_ip = ipaddress.IPv4Address(pip)
        except ValueError:
            raise Invalid(f"lease PublicIP {pip!r} is not an IPv4 address", field="PublicIP") from None
        btype = _ci(obj, "BackendType") or ""
        if not isinstance(btype, str):
            raise Invalid("lease BackendType is not a string", field="BackendType")
        bdata = _ci(obj, "BackendData")
        if bdata is not None and not isinstance(bdata, dict):
            raise Invalid("lease BackendData is not an object", field="BackendData")
        return LeaseAttrs(public_ip, btype, bdata)

    @property
    def vtep_mac(self) -> str | None:
        """VtepMAC from vxlan BackendData, lower-case, or None when missing or malformed."""
        if not self.backend_data:
            return None
        mac = _ci(self.backend_data, "VtepMAC")
        if not isinstance(mac, str) or not re.fullmatch(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", mac):
            return None
        return mac.lower()


@dataclass(frozen=True)
class Lease:
    subnet: ipaddress.IPv4Network
    attrs: LeaseAttrs
    key: str = ""
    revision: int = 0
    etcd_lease: int = 0  # 0 = no TTL: a reservation
    expiration: float | None = None  # on the manager's clock; None for reservations


def decode_lease(key: str, value: str) -> Lease:
    """One lease record; raises Invalid for a bad key or value (callers log it and skip it)."""
    subnet = parse_subnet_key(key)
    if subnet is None:
        raise Invalid(f"not a subnet lease key: {key}", field="key")
    return Lease(subnet, LeaseAttrs.from_json(value), key=key)


# -- net-conf.json ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendConfig:
    type: str = "vxlan"
    vni: int = 1
    port: int = 0  # 0 = the kernel default, 8472
    direct_routing: bool = False
    mtu: int = 0  # 0 = the external interface's MTU
    gbp: bool = False
    learning: bool = False

    @property
    def dstport(self) -> int:
        return self.port or 8472

    @property
    def device(self) -> str:
        return f"flannel.{self.vni}"


@dataclass(frozen=True)
class NetConfig:
    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend: BackendConfig
    raw: str = field(default="", compare=False)

    def subnet_at(self, addr: ipaddress.IPv4Address) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{addr}/{self.subnet_len}")

    def compatible(self, subnet: ipaddress.IPv4Network) -> bool:
        """flannel's isSubnetConfigCompat: inside SubnetMin..SubnetMax with the configured length."""
        return (subnet.prefixlen == self.subnet_len
                and self.subnet_min <= subnet.network_address <= self.subnet_max)

    def candidate_subnets(self) -> list[ipaddress.IPv4Network]:
        size = 1 << (32 - self.subnet_len)
        lo, hi = int(self.subnet_min), int(self.subnet_max)
        return [ipaddress.IPv4Network((a, self.subnet_len)) for a in range(lo, hi + 1, size)]


def _bool(v: Any, fld: str) -> bool:
    if isinstance(v, bool):
        return v
    raise Invalid(f"{fld} must be true or false, got {v!r}", field=fld)


def _int(v: Any, fld: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise Invalid(f"{fld} must be an integer in {lo}..{hi}, got {v!r}", field=fld)
    return v


def parse_backend(raw: Any) -> BackendConfig:
    if raw is None:
        return BackendConfig()
    if not isinstance(raw, dict):
        raise Invalid("Backend must be a JSON object", field="Backend")
    btype = _ci(raw, "Type")
    if btype is None:
        btype = "vxlan"
    if not isinstance(btype, str):
        raise Invalid("Backend.Type must be a string", field="Backend.Type")
    btype = btype.lower()
    if btype not in BACKENDS:
        extra = " (a flannel backend pycni does not implement)" if btype in KNOWN_FLANNEL_BACKENDS else ""
        raise Invalid(f"unknown backend type {btype!r}{extra}; supported: host-gw, vxlan",
                      field="Backend.Type")
    if btype == "host-gw":
        return BackendConfig(type="host-gw")
    kw: dict[str, Any] = {"type": "vxlan"}
    if (v := _ci(raw, "VNI")) is not None:
        kw["vni"] = _int(v, "Backend.VNI", 0, (1 << 24) - 1)
    if (v := _ci(raw, "Port")) is not None:
        kw["port"] = _int(v, "Backend.Port", 0, 65535)
    if (v := _ci(raw, "DirectRouting")) is not None:
        kw["direct_routing"] = _bool(v, "Backend.DirectRouting")
    if (v := _ci(raw, "MTU")) is not None:
        kw["mtu"] = _int(v, "Backend.MTU", 0, 65535)
        if 0 < kw["mtu"] < 68 + 50:
            raise Invalid(f"Backend.MTU {kw['mtu']} leaves no room for vxlan's 50 bytes", field="Backend.MTU")
    if (v := _ci(raw, "GBP")) is not None:
        kw["gbp"] = _bool(v, "Backend.GBP")
    if (v := _ci(raw, "Learning")) is not None:
        kw["learning"] = _bool(v, "Backend.Learning")
    return BackendConfig(**kw)


def _addr(v: Any, fld: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(v)
    except ValueError:
        raise Invalid(f"{fld} {v!r} is not an IPv4 address", field=fld) from None


def parse_config(text: str) -> NetConfig:
    """Parse and validate net-conf.json with flannel's defaults (config.go CheckNetworkConfig)."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise Invalid(f"net-conf.json is not valid JSON: {e}", field="config") from None
    if not isinstance(obj, dict):
        raise Invalid("net-conf.json must be a JSON object", field="config")
    if _ci(obj, "EnableIPv6") is True:
        raise Invalid("EnableIPv6 is not supported by pycni-flanneld (IPv4 only)", field="EnableIPv6")
    if _ci(obj, "EnableIPv4") is False:
        raise Invalid("EnableIPv4 false leaves nothing to do (pycni-flanneld is IPv4 only)",
                      field="EnableIPv4")
    net_s = _ci(obj, "Network")
    if not net_s:
        raise Invalid("please define a correct Network parameter in the flannel config", field="Network")
    try:
        network = ipaddress.IPv4Network(net_s, strict=True)
    except ValueError as e:
        raise Invalid(f"Network {net_s!r} is not an IPv4 network: {e}", field="Network") from None
    sl = _ci(obj, "SubnetLen")
    if sl:  # 0 / absent: default
        subnet_len = _int(sl, "SubnetLen", 1, 32)
        if subnet_len > 30:
            raise Invalid(f"SubnetLen /{subnet_len} must be less than /31", field="SubnetLen")
        if subnet_len < network.prefixlen + 2:
            raise Invalid(f"SubnetLen /{subnet_len}: Network {network} must be able to accommodate at "
                          f"least four subnets (SubnetLen >= /{network.prefixlen + 2})", field="SubnetLen")
    else:
        if network.prefixlen > 28:
            raise Invalid(f"Network {network} is too small. Minimum useful network prefix is /28",
                          field="Network")
        subnet_len = 24 if network.prefixlen <= 22 else network.prefixlen + 2
    size = 1 << (32 - subnet_len)
    smin_raw, smax_raw = _ci(obj, "SubnetMin"), _ci(obj, "SubnetMax")
    subnet_min = network.network_address + size if not smin_raw else _addr(smin_raw, "SubnetMin")
    subnet_max = network.broadcast_address + 1 - size if not smax_raw else _addr(smax_raw, "SubnetMax")
    for fld, a in (("SubnetMin", subnet_min), ("SubnetMax", subnet_max)):
        if a not in network:
            raise Invalid(f"{fld} {a} is not in the range of the Network {network}", field=fld)
        if int(a) % size:
            raise Invalid(f"{fld} is not on a SubnetLen boundary: {a}", field=fld)
    if subnet_min > subnet_max:
        raise Invalid(f"SubnetMin {subnet_min} is above SubnetMax {subnet_max}", field="SubnetMin")
    backend = parse_backend(_ci(obj, "Backend"))
    return NetConfig(network, subnet_len, subnet_min, subnet_max, backend, raw=text)


def check_against_underlay(cfg: NetConfig, underlay: list[ipaddress.IPv4Network]) -> None:
    """The pod Network must not overlap the node's own networks (it would steal their routes)."""
    for net in underlay:
        if cfg.network.overlaps(net):
            raise Invalid(f"Network {cfg.network} overlaps the node's underlay network {net}",
                          field="Network")


def vxlan_backend_data(vni: int, mac: str) -> dict[str, Any]:
    """flannel's vxlanLeaseAttrs, in its field order."""
    return {"VNI": vni, "VtepMAC": mac}
