"""AllocationBlock: the pure maths of one Calico IPAM block, and its exact JSON.

A block is a fixed-size slice of an IPPool (a /26 by default: 64 addresses) that one node usually
owns ("affinity"). Each address is an *ordinal* (its offset in the block). The stored record is
libcalico-go's `model.AllocationBlock`, field for field, so Calico's tools read ours:

    cidr                         "10.244.0.0/26"
    affinity                     "host:<node>" | "virtual:<name>" | null
    affinity_claim_time          RFC 3339, omitted when there is no affinity
    allocations                  [attr index | null] * size (ordinal -> index into attributes)
    unallocated                  free ordinals, FIFO: allocation takes from the front, release
                                 appends at the back, so a freed address is the last to be reused
    attributes                   [{"handle_id": ..., "secondary": {"namespace","node","pod",...}}]
    sequenceNumber               bumped on every write (by the allocator, as Calico's updateBlock)
    sequenceNumberForAllocation  {"<ordinal>": sequenceNumber at allocation time}
    deleted                      false (a Kubernetes-backend workaround, kept for fidelity)

Nothing here does I/O. The allocator reads a block, calls these methods on the copy, and writes it
back with a compare-and-swap; on a lost CAS it drops the copy, re-reads and recomputes (the protocol
libcalico's Python `block.py` spelled out, and libcalico-go's `ipam_block.go` still follows).
Unknown fields are kept and written back, so a newer Calico's additions survive our writes.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pycni.errors import AlreadyExists, Invalid
from pycni.model import IPAddress, IPInterface, IPNetwork

AFFINITY_HOST = "host"

_KNOWN_FIELDS = {
    "cidr", "affinity", "affinity_claim_time", "allocations", "unallocated", "attributes",
    "sequenceNumber", "sequenceNumberForAllocation", "deleted",
}


def host_affinity(node: str) -> str:
    return f"{AFFINITY_HOST}:{node}"


@dataclass(slots=True)
class AllocationAttribute:
    handle_id: str | None
    secondary: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. Calico's "alternate"

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"handle_id": self.handle_id, "secondary": self.secondary}
        obj.update(self.extra)
        return obj

    @classmethod
    def from_obj(cls, obj: Any) -> AllocationAttribute:
        if not isinstance(obj, dict):
            raise Invalid("block: attribute must be an object")
        sec = obj.get("secondary")
        if sec is not None and not isinstance(sec, dict):
            raise Invalid("block: attribute 'secondary' must be an object")
        h = obj.get("handle_id")
        extra = {k: v for k, v in obj.items() if k not in ("handle_id", "secondary")}
        return cls(
            handle_id=None if h is None else str(h),
            secondary=None if sec is None else {str(k): str(v) for k, v in sec.items()},
            extra=extra,
        )


def _sanitize_handle(handle: str) -> str:
    # Calico strips a trailing "\r..." that an old host-local migration wrote into handles.
    return handle.split("\r", 1)[0]


@dataclass(slots=True)
class AllocationBlock:
    cidr: IPNetwork
    affinity: str | None = None
    affinity_claim_time: str | None = None
    allocations: list[int | None] = field(default_factory=list)
    unallocated: list[int] = field(default_factory=list)
    attributes: list[AllocationAttribute] = field(default_factory=list)
    sequence_number: int = 0
    sequence_number_for_allocation: dict[str, int] = field(default_factory=dict)
    deleted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def new(
        cls, cidr: IPNetwork, *, affinity: str | None = None, claim_time: str | None = None,
        sequence_number: int = 0,
    ) -> AllocationBlock:
        """A fresh block, every ordinal free in ascending order.

        Calico seeds `sequence_number` with the wall clock in nanoseconds, so a deleted and
        re-created block never repeats a (ordinal, sequence) pair; the allocator does the same.
        """
        n = cidr.num_addresses
        return cls(
            cidr=cidr,
            affinity=affinity,
            affinity_claim_time=claim_time if affinity else None,
            allocations=[None] * n,
            unallocated=list(range(n)),
            sequence_number=sequence_number,
        )

    def copy(self) -> AllocationBlock:
        return copy.deepcopy(self)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.cidr.num_addresses

    def ordinal(self, ip: IPAddress) -> int:
        if ip not in self.cidr:
            raise Invalid(f"{ip} is not in block {self.cidr}")
        return int(ip) - int(self.cidr.network_address)

    def ip(self, ordinal: int) -> IPAddress:
        return self.cidr.network_address + ordinal

    def interface(self, ordinal: int) -> IPInterface:
        """The address with the block's mask, as Calico's IPAM returns it (callers narrow to /32)."""
        return ipaddress.ip_interface(f"{self.ip(ordinal)}/{self.cidr.prefixlen}")

    @property
    def host(self) -> str | None:
        if self.affinity and self.affinity.startswith(AFFINITY_HOST + ":"):
            return self.affinity[len(AFFINITY_HOST) + 1 :]
        return None

    # -- queries -------------------------------------------------------------------------------
    def num_free(self) -> int:
        return len(self.unallocated)

    def in_use(self) -> int:
        return sum(1 for a in self.allocations if a is not None)

    def empty(self) -> bool:
        return all(a is None for a in self.allocations)

    def allocated_ips(self) -> list[IPAddress]:
        return [self.ip(o) for o, a in enumerate(self.allocations) if a is not None]

    def attribute_for(self, ip: IPAddress) -> AllocationAttribute | None:
        idx = self.allocations[self.ordinal(ip)]
        if idx is None or idx >= len(self.attributes):
            return None
        return self.attributes[idx]

    def ips_by_handle(self, handle_id: str) -> list[IPAddress]:
        idxs = set(self._attr_indexes_by_handle(handle_id))
        return [self.ip(o) for o, a in enumerate(self.allocations) if a is not None and a in idxs]

    def handles(self) -> dict[str, int]:
        """Handle id -> number of addresses it holds here (allocations without a handle are skipped)."""
        out: dict[str, int] = {}
        for a in self.allocations:
            if a is None or a >= len(self.attributes):
                continue
            h = self.attributes[a].handle_id
            if h is not None:
                h = _sanitize_handle(h)
                out[h] = out.get(h, 0) + 1
        return out

    # -- mutations (on a copy the allocator will CAS back) --------------------------------------
    def _find_or_add_attribute(self, handle_id: str | None, attrs: Mapping[str, str] | None) -> int:
        sec = dict(attrs) if attrs is not None else None
        for i, a in enumerate(self.attributes):
            if a.handle_id == handle_id and a.secondary == sec and not a.extra:
                return i
        self.attributes.append(AllocationAttribute(handle_id, sec))
        return len(self.attributes) - 1

    def _stamp(self, ordinal: int) -> None:
        self.sequence_number_for_allocation[str(ordinal)] = self.sequence_number

    def auto_assign(
        self, num: int, handle_id: str | None, attrs: Mapping[str, str] | None
    ) -> list[IPInterface]:
        """Take up to `num` addresses from the front of the free list; returns them block-masked."""
        take = self.unallocated[:num]
        if not take:
            return []
        del self.unallocated[: len(take)]
        idx = self._find_or_add_attribute(handle_id, attrs)
        for o in take:
            self.allocations[o] = idx
            self._stamp(o)
        return [self.interface(o) for o in take]

    def assign(self, ip: IPAddress, handle_id: str | None, attrs: Mapping[str, str] | None) -> IPInterface:
        """Allocate one specific address; raises `AlreadyExists` if it is taken."""
        o = self.ordinal(ip)
        if self.allocations[o] is not None:
            raise AlreadyExists(f"{ip} is already assigned in block {self.cidr}")
        self.allocations[o] = self._find_or_add_attribute(handle_id, attrs)
        try:
            self.unallocated.remove(o)
        except ValueError:
            pass
        self._stamp(o)
        return self.interface(o)

    def release(self, ips: Iterable[IPAddress]) -> tuple[list[IPAddress], dict[str, int]]:
        """Free `ips`. Returns (those that were not allocated, released count per handle)."""
        not_allocated: list[IPAddress] = []
        ordinals: list[int] = []
        by_handle: dict[str, int] = {}
        for ip in dict.fromkeys(ips):  # de-duplicate, keep order
            o = self.ordinal(ip)
            a = self.allocations[o]
            if a is None:
                not_allocated.append(ip)
                continue
            ordinals.append(o)
            h = self.attributes[a].handle_id if a < len(self.attributes) else None
            if h is not None:
                h = _sanitize_handle(h)
                by_handle[h] = by_handle.get(h, 0) + 1
        self._free(ordinals)
        return not_allocated, by_handle

    def release_by_handle(self, handle_id: str) -> list[IPAddress]:
        """Free every address held by `handle_id`; returns them (empty when it holds none)."""
        idxs = set(self._attr_indexes_by_handle(handle_id))
        if not idxs:
            return []
        ordinals = [o for o, a in enumerate(self.allocations) if a is not None and a in idxs]
        self._free(ordinals)
        return [self.ip(o) for o in ordinals]

    def _attr_indexes_by_handle(self, handle_id: str) -> list[int]:
        return [
            i for i, a in enumerate(self.attributes)
            if a.handle_id is not None and _sanitize_handle(a.handle_id) == handle_id
        ]

    def _free(self, ordinals: list[int]) -> None:
        if not ordinals:
            return
        for o in ordinals:
            self.allocations[o] = None
            self.unallocated.append(o)
            self.sequence_number_for_allocation.pop(str(o), None)
        self._compact_attributes()

    def _compact_attributes(self) -> None:
        """Drop attributes no allocation refers to and renumber the rest (Calico's deleteAttributes)."""
        used = sorted({a for a in self.allocations if a is not None})
        if used == list(range(len(self.attributes))):
            return
        remap = {old: new for new, old in enumerate(used)}
        self.attributes = [self.attributes[i] for i in used if i < len(self.attributes)]
        self.allocations = [None if a is None else remap[a] for a in self.allocations]

    # -- JSON ----------------------------------------------------------------------------------
    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "cidr": str(self.cidr),
            "affinity": self.affinity,
        }
        if self.affinity_claim_time is not None:
            obj["affinity_claim_time"] = self.affinity_claim_time
        obj.update({
            "allocations": list(self.allocations),
            "unallocated": list(self.unallocated),
            "attributes": [a.to_obj() for a in self.attributes],
            "sequenceNumber": self.sequence_number,
            "sequenceNumberForAllocation": dict(self.sequence_number_for_allocation),
            "deleted": self.deleted,
        })
        for k, v in self.extra.items():
            obj.setdefault(k, v)
        return obj

    def to_json(self) -> str:
        return json.dumps(self.to_obj(), separators=(",", ":"))

    @classmethod
    def from_json(cls, value: str) -> AllocationBlock:
        """Decode and validate a stored block; raises `Invalid` on anything inconsistent."""
        try:
            obj = json.loads(value)
        except ValueError as e:
            raise Invalid(f"block: not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise Invalid("block: expected a JSON object")
        try:
            cidr = ipaddress.ip_network(str(obj.get("cidr", "")))
        except ValueError:
            raise Invalid(f"block: bad cidr {obj.get('cidr')!r}", field="cidr") from None
        n = cidr.num_addresses
        allocs_raw = obj.get("allocations")
        if allocs_raw is None:
            allocs_raw = [None] * n
        if not isinstance(allocs_raw, list) or len(allocs_raw) != n:
            raise Invalid(f"block {cidr}: 'allocations' must list {n} entries", field="allocations")
        attrs = [AllocationAttribute.from_obj(a) for a in (obj.get("attributes") or [])]
        allocations: list[int | None] = []
        for a in allocs_raw:
            if a is None:
                allocations.append(None)
            elif isinstance(a, int) and not isinstance(a, bool) and 0 <= a < len(attrs):
                allocations.append(a)
            else:
                raise Invalid(f"block {cidr}: allocation {a!r} names no attribute", field="allocations")
        unalloc_raw = obj.get("unallocated") or []
        if not isinstance(unalloc_raw, list) or not all(
            isinstance(o, int) and not isinstance(o, bool) and 0 <= o < n for o in unalloc_raw
        ):
            raise Invalid(f"block {cidr}: bad 'unallocated'", field="unallocated")
        seq_alloc = obj.get("sequenceNumberForAllocation") or {}
        if not isinstance(seq_alloc, dict):
            raise Invalid(f"block {cidr}: bad 'sequenceNumberForAllocation'")
        affinity = obj.get("affinity")
        try:
            return cls(
                cidr=cidr,
                affinity=None if affinity is None else str(affinity),
                affinity_claim_time=obj.get("affinity_claim_time"),
                allocations=allocations,
                unallocated=list(unalloc_raw),
                attributes=attrs,
                sequence_number=int(obj.get("sequenceNumber") or 0),
                sequence_number_for_allocation={str(k): int(v) for k, v in seq_alloc.items()},
                deleted=bool(obj.get("deleted", False)),
                extra={k: v for k, v in obj.items() if k not in _KNOWN_FIELDS},
            )
        except (TypeError, ValueError):
            raise Invalid(f"block {cidr}: bad sequence numbers") from None
