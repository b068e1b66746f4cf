"""CNI 1.1.0 types: error codes, the error raised through the plugin, versions, results, arguments.

Mirrors `containernetworking/cni:pkg/types` closely enough that a reader of the Go code finds the
same names: `CniError(code, msg, details)` is `types.Error`, `CmdArgs` is `skel.CmdArgs`. Results
are built once in the 1.1.0 shape and converted to the version the caller asked for
(`format_result`), because every runtime in the field still speaks 0.3.1 or 0.4.0 somewhere.

This module is imported by the in-process plugin on every call, so it stays stdlib-only and cheap.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

# Error codes (cni:pkg/types/types.go L230-247, SPEC.md "Error").
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODING = 6
ERR_INVALID_NETWORK_CONFIG = 7
ERR_INVALID_NETNS = 8
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50
ERR_LIMITED_CONNECTIVITY = 51
ERR_INTERNAL = 999

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"
VERBS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class CniError(Exception):
    """The only error type that crosses the skeleton: it becomes the error JSON on stdout."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        d: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            d["details"] = self.details
        return d


def version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return (0,)


@dataclass(slots=True)
class CmdArgs:
    """What the runtime handed us: `skel.CmdArgs` plus the parsed config."""

    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]
    path: str
    stdin: bytes
    conf: dict[str, Any] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=dict)

    @property
    def cni_version(self) -> str:
        return str(self.conf.get("cniVersion", CURRENT_VERSION))


def parse_cni_args(s: str) -> dict[str, str]:
    """`K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0` -> dict. Malformed pairs are code 4."""
    out: dict[str, str] = {}
    for pair in s.split(";"):
        if not pair:
            continue
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise CniError(ERR_INVALID_ENV, "invalid CNI_ARGS pair", f"{pair!r} is not K=V")
        out[k] = v
    return out


def valid_container_id(cid: str) -> bool:
    return bool(_CONTAINER_ID.match(cid))


# ---------------------------------------------------------------------------- results


def iface(name: str, mac: str = "", sandbox: str = "", mtu: int = 0) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name}
    if mac:
        d["mac"] = mac
    if mtu:
        d["mtu"] = mtu
    if sandbox:
        d["sandbox"] = sandbox
    return d


def ip_config(
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
    interface: int | None = None,
) -> dict[str, Any]:
    d: dict[str, Any] = {"address": str(address)}
    if gateway is not None:
        d["gateway"] = str(gateway)
    if interface is not None:
        d["interface"] = interface
    return d


def route(dst: str, gw: str | None = None, scope: int | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"dst": dst}
    if gw:
        d["gw"] = gw
    if scope is not None:
        d["scope"] = scope
    return d


_ROUTE_1_1_ONLY = ("mtu", "advmss", "priority", "table", "scope")
_IFACE_1_1_ONLY = ("mtu", "socketPath", "pciID")


def format_result(result: dict[str, Any], version: str) -> dict[str, Any]:
    """Convert a 1.1.0-shaped result to `version` (0.3.0 .. 1.1.0)."""
    out: dict[str, Any] = {"cniVersion": version}
    v = version_tuple(version)
    if result.get("interfaces"):
        ifs = []
        for i in result["interfaces"]:
            i = dict(i)
            if v < (1, 1, 0):
                for k in _IFACE_1_1_ONLY:
                    i.pop(k, None)
            ifs.append(i)
        out["interfaces"] = ifs
    ips = []
    for ip in result.get("ips", []):
        ip = dict(ip)
        if v < (1, 0, 0):
            addr = ipaddress.ip_interface(ip["address"])
            ip = {"version": str(addr.version), **ip}
        ips.append(ip)
    if ips:
        out["ips"] = ips
    routes = []
    for r in result.get("routes", []):
        r = dict(r)
        if v < (1, 1, 0):
            for k in _ROUTE_1_1_ONLY:
                r.pop(k, None)
        routes.append(r)
    if routes:
        out["routes"] = routes
    out["dns"] = result.get("dns", {})
    return out


def dumps(obj: Any) -> bytes:
    """`json.dumps(obj, indent=4)` + newline (Go's MarshalIndent layout, as the reference prints).

    With `indent` the json module uses its pure-Python encoder (~0.1 ms for an ADD result in the
    agent); results are plain dicts, lists, strings and numbers, so a direct recursive writer gives
    the same bytes in about a quarter of the time. Anything else falls back to json.dumps."""
    try:
        parts: list[str] = []
        _indent4(obj, parts, "\n")
        text = "".join(parts)
    except _Unusual:
        text = json.dumps(obj, indent=4)
    return text.encode() + b"\n"


class _Unusual(Exception):
    """A value the fast writer leaves to json.dumps (non-str keys, floats, other types)."""


_esc = json.encoder.encode_basestring_ascii  # json.dumps's own (C) string encoder, ensure_ascii


def _indent4(o: Any, out: list[str], nl: str) -> None:
    t = type(o)
    if t is str:
        out.append(_esc(o))
    elif t is dict:
        if not o:
            out.append("{}")
            return
        inner = nl + "    "
        sep = "{" + inner
        for k, v in o.items():
            if type(k) is not str:
                raise _Unusual
            out.append(sep)
            out.append(_esc(k))
            out.append(": ")
            _indent4(v, out, inner)
            sep = "," + inner
        out.append(nl + "}")
    elif t is list:
        if not o:
            out.append("[]")
            return
        inner = nl + "    "
        sep = "[" + inner
        for v in o:
            out.append(sep)
            _indent4(v, out, inner)
            sep = "," + inner
        out.append(nl + "]")
    elif o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif t is int:
        out.append(int.__repr__(o))
    else:
        raise _Unusual
