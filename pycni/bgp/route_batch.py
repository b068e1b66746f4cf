"""Many kernel route writes in few system calls: the learned-route driver's bulk path.

A peer announcing a thousand blocks makes bgpd write a thousand routes. One request and one ack per
route (`Rtnl.request`) cost two system calls each, and each call gives up the GIL: with the exabgp
reader thread decoding the same burst, the main thread waited for the GIL after almost every
route (the send showed ~140 us per route in a sampled profile, the kernel needs far less). Here
every route is one RTM_NEWROUTE/RTM_DELROUTE message with NLM_F_ACK, messages are packed back to back
into sends of up to CHUNK bytes (the kernel's rtnetlink handles every message of a send in turn),
and the acks are read back and matched by sequence number, so each route still gets its own
verdict (errno) exactly as with one request each.

Only plain main-table unicast routes with an output device come here (the same subset
`LearnedRoutes` already wrote through the raw socket); onlink tunnel routes keep their path.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from pycni.cni.rtnl import (
    _HDR,
    _RTM,
    MAIN_TABLE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTM_DELROUTE,
    RTM_NEWROUTE,
    RTN_UNICAST,
    Rtnl,
    attr,
    attr_u32,
)
from pycni.model import IPAddress, IPNetwork

CHUNK = 1 << 15  # bytes of requests per send (~500 routes); acks for them fit the 1 MiB receive buffer


@dataclass(frozen=True, slots=True)
class RouteWrite:
    """One route to replace (`oif` set) or delete (`oif` 0 and `delete`)."""

    dst: IPNetwork
    proto: int
    oif: int = 0
    gateway: IPAddress | None = None
    scope: int = 0
    delete: bool = False


def _message(seq: int, w: RouteWrite) -> bytes:
    fam = socket.AF_INET if w.dst.version == 4 else socket.AF_INET6
    if w.delete:
        body = _RTM.pack(fam, w.dst.prefixlen, 0, 0, MAIN_TABLE, w.proto, 0, 0, 0)
        mtype, flags = RTM_DELROUTE, 0
    else:
        body = _RTM.pack(fam, w.dst.prefixlen, 0, 0, MAIN_TABLE, w.proto, w.scope, RTN_UNICAST, 0)
        mtype, flags = RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE
    if w.dst.prefixlen:
        body += attr(RTA_DST, w.dst.network_address.packed)
    if not w.delete:
        if w.gateway is not None:
            body += attr(RTA_GATEWAY, w.gateway.packed)
        body += attr_u32(RTA_OIF, w.oif)
    return _HDR.pack(_HDR.size + len(body), mtype, flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def write_routes(rt: Rtnl, writes: list[RouteWrite]) -> list[int]:
    """Apply every write; return one errno per write, in order (0: done)."""
    result = [0] * len(writes)
    with rt._lock:  # noqa: SLF001 - the socket's request lock: no other request may interleave
        i = 0
        while i < len(writes):
            pending: dict[int, int] = {}
            parts: list[bytes] = []
            size = 0
            while i < len(writes) and size < CHUNK:
                rt._seq = (rt._seq + 1) & 0xFFFFFFFF or 1  # noqa: SLF001 - shared sequence space
                msg = _message(rt._seq, writes[i])  # noqa: SLF001
                pending[rt._seq] = i  # noqa: SLF001
                parts.append(msg)
                size += len(msg)
                i += 1
            rt.sock.sendall(b"".join(parts))
            while pending:
                data = rt.sock.recv(1 << 18)
                off = 0
                while off + _HDR.size <= len(data):
                    length, t, _f, seq, _p = _HDR.unpack_from(data, off)
                    if t == NLMSG_ERROR and seq in pending:
                        (err,) = struct.unpack_from("=i", data, off + _HDR.size)
                        result[pending.pop(seq)] = -err
                    off += (length + 3) & ~3 or len(data)
    return result
