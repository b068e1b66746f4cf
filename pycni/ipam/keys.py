"""Calico's IPAM key layout under `/calico/ipam/v2/`, and the small records that live there.

Keys and JSON are libcalico-go's (`lib/backend/model/{block,block_affinity,ipam_handle,ipam_config}.go`)
so `calicoctl ipam show` reads what we write and we read what Calico writes:

    /calico/ipam/v2/assignment/ipv4/block/10.244.0.0-26      AllocationBlock (see `block.py`)
    /calico/ipam/v2/host/<node>/ipv4/block/10.244.0.0-26     {"state": "confirmed", "deleted": false}
    /calico/ipam/v2/handle/<handleID>                        {"block": {"10.244.0.0/26": 1}, "deleted": false}
    /calico/ipam/v2/config            {"strict_affinity": true, "auto_allocate_blocks": true}  (omitempty)

Handles: Calico's `IPAMHandle` marks `HandleID` as `json:"-"`, so the id lives only in the key; we
write exactly Calico's two fields and ignore any others on read.

IPPools (`/calico/resources/v3/projectcalico.org/ippools/<name>`) are Calico v3 resources and belong
to `pycni.datastore.calico`; IPAM reads them through that codec.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from pycni.errors import Invalid
from pycni.model import IPNetwork

IPAM_PREFIX = "/calico/ipam/v2/"
BLOCK_PREFIX = "/calico/ipam/v2/assignment/"
HOST_PREFIX = "/calico/ipam/v2/host/"
HANDLE_PREFIX = "/calico/ipam/v2/handle/"
IPAM_CONFIG_KEY = "/calico/ipam/v2/config"

STATE_PENDING = "pending"
STATE_CONFIRMED = "confirmed"
STATE_PENDING_DELETION = "pendingDeletion"

#: Calico's handles for tunnel addresses (node/pkg/allocateip/allocateip.go).
IPIP_TUNNEL_HANDLE = "ipip-tunnel-addr-{node}"
VXLAN_TUNNEL_HANDLE = "vxlan-tunnel-addr-{node}"
VXLAN_V6_TUNNEL_HANDLE = "vxlan-v6-tunnel-addr-{node}"
WIREGUARD_TUNNEL_HANDLE = "wireguard-tunnel-addr-{node}"


def tunnel_handle(kind: str, node: str) -> str:
    """`tunnel_handle("ipip", "n1") == "ipip-tunnel-addr-n1"` (kinds: ipip, vxlan, vxlan-v6, wireguard)."""
    return f"{kind}-tunnel-addr-{node}"


def _cidr_part(cidr: IPNetwork) -> str:
    return f"{cidr.network_address}-{cidr.prefixlen}"


def block_key(cidr: IPNetwork) -> str:
    return f"{BLOCK_PREFIX}ipv{cidr.version}/block/{_cidr_part(cidr)}"


def block_prefix(version: int | None = None) -> str:
    return BLOCK_PREFIX if version is None else f"{BLOCK_PREFIX}ipv{version}/block/"


def affinity_key(node: str, cidr: IPNetwork) -> str:
    return f"{HOST_PREFIX}{node}/ipv{cidr.version}/block/{_cidr_part(cidr)}"


def affinity_prefix(node: str | None = None, version: int | None = None) -> str:
    if node is None:
        return HOST_PREFIX
    if version is None:
        return f"{HOST_PREFIX}{node}/"
    return f"{HOST_PREFIX}{node}/ipv{version}/block/"


def handle_key(handle_id: str) -> str:
    return f"{HANDLE_PREFIX}{handle_id}"


def _parse_cidr_part(part: str) -> IPNetwork | None:
    addr, sep, plen = part.rpartition("-")
    if not sep:
        return None
    try:
        return ipaddress.ip_network(f"{addr}/{plen}")
    except ValueError:
        return None


def parse_block_key(key: str) -> IPNetwork | None:
    """The block CIDR from a block key, or None when the key is not one."""
    if not key.startswith(BLOCK_PREFIX):
        return None
    parts = key[len(BLOCK_PREFIX) :].split("/")
    if len(parts) != 3 or parts[1] != "block" or parts[0] not in ("ipv4", "ipv6"):
        return None
    return _parse_cidr_part(parts[2])


def parse_affinity_key(key: str) -> tuple[str, IPNetwork] | None:
    """(node, block CIDR) from a host affinity key, or None."""
    if not key.startswith(HOST_PREFIX):
        return None
    parts = key[len(HOST_PREFIX) :].split("/")
    if len(parts) != 4 or parts[2] != "block" or parts[1] not in ("ipv4", "ipv6") or not parts[0]:
        return None
    cidr = _parse_cidr_part(parts[3])
    return None if cidr is None else (parts[0], cidr)


def _load_object(value: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(value)
    except ValueError as e:
        raise Invalid(f"{what}: not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise Invalid(f"{what}: expected a JSON object")
    return obj


# -- block affinity ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BlockAffinity:
    state: str = STATE_PENDING
    deleted: bool = False

    def to_json(self) -> str:
        return json.dumps({"state": self.state, "deleted": self.deleted}, separators=(",", ":"))

    @classmethod
    def from_json(cls, value: str) -> BlockAffinity:
        obj = _load_object(value, "block affinity")
        return cls(state=str(obj.get("state") or STATE_PENDING), deleted=bool(obj.get("deleted", False)))


# -- handle -----------------------------------------------------------------------------------
@dataclass(slots=True)
class IPAMHandle:
    """How many addresses a handle holds in each block (keys are block CIDR strings)."""

    block: dict[str, int] = field(default_factory=dict)
    deleted: bool = False

    def to_json(self) -> str:
        obj = {"block": dict(sorted(self.block.items())), "deleted": self.deleted}
        return json.dumps(obj, separators=(",", ":"))

    @classmethod
    def from_json(cls, value: str) -> IPAMHandle:
        obj = _load_object(value, "ipam handle")
        blocks = obj.get("block") or {}
        if not isinstance(blocks, dict):
            raise Invalid("ipam handle: 'block' must be an object")
        try:
            counts = {str(k): int(v) for k, v in blocks.items()}
        except (TypeError, ValueError):
            raise Invalid("ipam handle: block counts must be integers") from None
        return cls(block=counts, deleted=bool(obj.get("deleted", False)))

    def empty(self) -> bool:
        return not any(n > 0 for n in self.block.values())


# -- IPAM config ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class IPAMConfig:
    """Calico's defaults when the key is absent: no strict affinity, blocks auto-allocated.

    When the key exists, an absent field is Go's zero value (false / 0), as Calico reads it.
    `max_blocks_per_host` 0 means "no limit" here (Calico's own default for v3 IPAMConfiguration is
    20, but the etcd model's zero value is what libcalico-go passes on: unlimited).
    """

    strict_affinity: bool = False
    auto_allocate_blocks: bool = True
    max_blocks_per_host: int = 0

    def to_json(self) -> str:
        """Every field is `omitempty` in libcalico-go's model, so false and 0 are left out."""
        obj: dict[str, Any] = {}
        if self.strict_affinity:
            obj["strict_affinity"] = True
        if self.auto_allocate_blocks:
            obj["auto_allocate_blocks"] = True
        if self.max_blocks_per_host:
            obj["maxBlocksPerHost"] = self.max_blocks_per_host
        return json.dumps(obj, separators=(",", ":"))

    @classmethod
    def from_json(cls, value: str) -> IPAMConfig:
        obj = _load_object(value, "ipam config")
        try:
            mbph = int(obj.get("maxBlocksPerHost") or 0)
        except (TypeError, ValueError):
            raise Invalid("ipam config: bad maxBlocksPerHost", field="maxBlocksPerHost") from None
        return cls(
            strict_affinity=bool(obj.get("strict_affinity", False)),
            auto_allocate_blocks=bool(obj.get("auto_allocate_blocks", False)),
            max_blocks_per_host=mbph,
        )
