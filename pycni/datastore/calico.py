"""Calico v3 resources: model dataclasses, JSON codecs and etcd key paths.

Calico's etcdv3 backend stores each v3 resource as the JSON of the whole object, exactly what
`calicoctl get -o json` prints, under `/calico/resources/v3/projectcalico.org/<plural>/<name>`
(namespaced kinds add the namespace: `workloadendpoints/<ns>/<name>`):

    {"kind": "IPPool", "apiVersion": "projectcalico.org/v3",
     "metadata": {"name": "default-ipv4-ippool", "uid": "...", "creationTimestamp": "..."},
     "spec": {"cidr": "10.244.0.0/16", "blockSize": 26, "ipipMode": "Always", ...}}

We keep that layout so calicoctl (etcdv3 mode) and calico-node can read what pycni writes and the
other way round. Field names follow `api/pkg/apis/projectcalico/v3` (IPPool, BGPConfiguration,
BGPPeer, FelixConfiguration) and `libcalico-go/lib/apis/internalapi` (Node, WorkloadEndpoint).

Shape:
- one frozen dataclass per kind, with the fields pycni reads as typed attributes (`ipaddress`
  types, enums as their canonical strings) and every spec field it does not model kept verbatim
  in `extra`, so a decode/encode round trip never drops what another tool wrote;
- `decode(key, value)` turns an etcd key + value into a resource or raises `Invalid` with the
  offending field, so a daemon logs one bad record and keeps serving the rest
  (`decode_all` does exactly that for a list of pairs);
- `encode(resource)` gives the JSON text; `key_for(resource)` the etcd key;
- `new_meta(...)` stamps a uid and a creationTimestamp as the apiserver would.

Defaults are Calico's: blockSize 26 (v4) / 122 (v6), AS 64512, node-to-node mesh on,
ipipMode/vxlanMode Never when empty, nodeSelector `all()`.
"""

from __future__ import annotations

import datetime as _dt
import functools
import ipaddress
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar, cast

import structlog

from pycni.errors import Invalid
from pycni.model import IPAddress, IPInterface, IPNetwork

log = structlog.get_logger(__name__)

API_VERSION = "projectcalico.org/v3"
RESOURCE_PREFIX = "/calico/resources/v3/projectcalico.org/"

DEFAULT_AS = 64512
DEFAULT_BLOCK_SIZE_V4 = 26
DEFAULT_BLOCK_SIZE_V6 = 122
DEFAULT_POOL_NAME = "default-ipv4-ippool"
DEFAULT_POOL_CIDR = "192.168.0.0/16"
DEFAULT_NODE_SELECTOR = "all()"

ENCAP_NEVER = "Never"
ENCAP_ALWAYS = "Always"
ENCAP_CROSS_SUBNET = "CrossSubnet"
ENCAP_MODES = (ENCAP_NEVER, ENCAP_ALWAYS, ENCAP_CROSS_SUBNET)

USE_WORKLOAD = "Workload"
USE_TUNNEL = "Tunnel"
USE_LOADBALANCER = "LoadBalancer"
ALLOWED_USES = (USE_WORKLOAD, USE_TUNNEL, USE_LOADBALANCER)

_LINK_LOCAL_V4 = ipaddress.ip_network("169.254.0.0/16")
_LINK_LOCAL_V6 = ipaddress.ip_network("fe80::/10")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")



# ----------------------------------------------------------------------------------------------
# metadata


@dataclass(frozen=True)
class Meta:
    """ObjectMeta, as far as Calico's etcd backend keeps it."""

    name: str
    namespace: str | None = None
    uid: str = ""
    creation_timestamp: str = ""
    resource_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.namespace is not None:
            out["namespace"] = self.namespace
        if self.uid:
            out["uid"] = self.uid
        if self.resource_version:
            out["resourceVersion"] = self.resource_version
        if self.creation_timestamp:
            out["creationTimestamp"] = self.creation_timestamp
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, d: Any) -> Meta:
        if not isinstance(d, dict):
            raise Invalid("metadata must be an object", field="metadata")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise Invalid("metadata.name is required", field="metadata.name")
        labels = d.get("labels") or {}
        annotations = d.get("annotations") or {}
        if not isinstance(labels, dict) or not isinstance(annotations, dict):
            raise Invalid("metadata.labels/annotations must be objects", field="metadata.labels")
        ns = d.get("namespace")
        return cls(
            name=name,
            namespace=ns if isinstance(ns, str) and ns else None,
            uid=str(d.get("uid") or ""),
            creation_timestamp=str(d.get("creationTimestamp") or ""),
            resource_version=str(d.get("resourceVersion") or ""),
            labels={str(k): str(v) for k, v in labels.items()},
            annotations={str(k): str(v) for k, v in annotations.items()},
        )


def now_rfc3339() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_meta(name: str, namespace: str | None = None, *, labels: Mapping[str, str] | None = None) -> Meta:
    """Metadata for a resource we create: a fresh uid and creationTimestamp, as the apiserver stamps."""
    return Meta(
        name=name,
        namespace=namespace,
        uid=str(uuid.uuid4()),
        creation_timestamp=now_rfc3339(),
        labels=dict(labels or {}),
    )


# ----------------------------------------------------------------------------------------------
# field parsing helpers (each raises Invalid naming the field)


def _net(v: Any, fld: str) -> IPNetwork:
    if not isinstance(v, str) or not v:
        raise Invalid(f"{fld}: a CIDR string is required", field=fld)
    try:
        return ipaddress.ip_network(v, strict=False)
    except ValueError as e:
        raise Invalid(f"{fld}: {v!r} is not a CIDR ({e})", field=fld) from None


def _addr(v: Any, fld: str) -> IPAddress | None:
    if v in (None, ""):
        return None
    if not isinstance(v, str):
        raise Invalid(f"{fld}: an IP address string is required", field=fld)
    try:
        return ipaddress.ip_address(v.split("/")[0])
    except ValueError:
        raise Invalid(f"{fld}: {v!r} is not an IP address", field=fld) from None


def _iface(v: Any, fld: str) -> IPInterface | None:
    if v in (None, ""):
        return None
    if not isinstance(v, str):
        raise Invalid(f"{fld}: an address/prefix string is required", field=fld)
    try:
        return ipaddress.ip_interface(v)
    except ValueError:
        raise Invalid(f"{fld}: {v!r} is not an address/prefix like 10.99.0.11/24", field=fld) from None


def _int(v: Any, fld: str, lo: int, hi: int, default: int | None = None) -> int | None:
    if v is None or v == "":
        return default
    if isinstance(v, bool):
        raise Invalid(f"{fld}: an integer is required", field=fld)
    if isinstance(v, str):
        try:
            v = int(v, 10)
        except ValueError:
            raise Invalid(f"{fld}: {v!r} is not an integer", field=fld) from None
    if not isinstance(v, int):
        raise Invalid(f"{fld}: an integer is required", field=fld)
    if not lo <= v <= hi:
        raise Invalid(f"{fld}: {v} is outside {lo}..{hi}", field=fld)
    return v


def _as_number(v: Any, fld: str) -> int | None:
    # Calico also accepts the dotted "65000.100" (asdot) notation.
    if isinstance(v, str) and "." in v:
        hi, _, lo = v.partition(".")
        h, low = _int(hi, fld, 0, 65535), _int(lo, fld, 0, 65535)
        assert h is not None and low is not None
        return (h << 16) | low
    return _int(v, fld, 0, 4294967295)


def _bool(v: Any, fld: str, default: bool) -> bool:
    if v is None:
        return default
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise Invalid(f"{fld}: true or false is required, not {v!r}", field=fld)


def _str(v: Any, fld: str, default: str = "") -> str:
    if v is None:
        return default
    if not isinstance(v, str):
        raise Invalid(f"{fld}: a string is required", field=fld)
    return v


def parse_encap_mode(v: Any, fld: str) -> str:
    """`Always` / `CrossSubnet` / `Never` (case-insensitive; empty means Never, as in Calico)."""
    if v is None or v == "":
        return ENCAP_NEVER
    if isinstance(v, str):
        for m in ENCAP_MODES:
            if v.lower() == m.lower():
                return m
    raise Invalid(f"{fld}: {v!r} is not one of Always, CrossSubnet, Never", field=fld)


def _mac(v: Any, fld: str) -> str:
    if v in (None, ""):
        return ""
    if not isinstance(v, str) or not _MAC_RE.match(v.lower()):
        raise Invalid(f"{fld}: {v!r} is not a MAC address like ee:ee:ee:ee:ee:ee", field=fld)
    return v.lower()


def _known(spec: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    ks = set(known)
    return {k: v for k, v in spec.items() if k not in ks}


# ----------------------------------------------------------------------------------------------
# resources


@dataclass(frozen=True)
class _Resource:
    """What every Calico v3 resource shares: its kind, where it lives, its metadata.

    Each kind adds its spec fields (after `meta`, so construction and equality are unchanged),
    `spec_json()` and `from_spec()`; `_FIELDS` are the spec keys it models (the rest is `extra`).
    """

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    NAMESPACED: ClassVar[bool]
    _FIELDS: ClassVar[tuple[str, ...]]

    meta: Meta

    @property
    def name(self) -> str:
        return self.meta.name


@dataclass(frozen=True)
class IPPool(_Resource):
    KIND: ClassVar[str] = "IPPool"
    PLURAL: ClassVar[str] = "ippools"
    NAMESPACED: ClassVar[bool] = False
    _FIELDS: ClassVar[tuple[str, ...]] = (
        "cidr",
        "blockSize",
        "ipipMode",
        "vxlanMode",
        "natOutgoing",
        "disabled",
        "disableBGPExport",
        "nodeSelector",
        "allowedUses",
        "assignmentMode",
    )

    cidr: IPNetwork
    block_size: int = DEFAULT_BLOCK_SIZE_V4
    ipip_mode: str = ENCAP_NEVER
    vxlan_mode: str = ENCAP_NEVER
    nat_outgoing: bool = False
    disabled: bool = False
    disable_bgp_export: bool = False
    node_selector: str = DEFAULT_NODE_SELECTOR
    allowed_uses: tuple[str, ...] = (USE_WORKLOAD, USE_TUNNEL)
    assignment_mode: str = "Automatic"
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def encapsulation(self) -> str:
        """ "ipip", "vxlan" or "none"."""
        if self.ipip_mode != ENCAP_NEVER:
            return "ipip"
        if self.vxlan_mode != ENCAP_NEVER:
            return "vxlan"
        return "none"

    @property
    def encap_mode(self) -> str:
        """The mode of whichever encapsulation is on (Never when none is)."""
        return self.ipip_mode if self.ipip_mode != ENCAP_NEVER else self.vxlan_mode

    def spec_json(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self.extra)
        s.update(
            {
                "cidr": str(self.cidr),
                "blockSize": self.block_size,
                "ipipMode": self.ipip_mode,
                "vxlanMode": self.vxlan_mode,
                "natOutgoing": self.nat_outgoing,
                "nodeSelector": self.node_selector,
                "allowedUses": list(self.allowed_uses),
            }
        )
        if self.disabled:
            s["disabled"] = True
        if self.disable_bgp_export:
            s["disableBGPExport"] = True
        if self.assignment_mode != "Automatic":
            s["assignmentMode"] = self.assignment_mode
        return s

    @classmethod
    def from_spec(cls, meta: Meta, spec: Mapping[str, Any]) -> IPPool:
        cidr = _net(spec.get("cidr"), "spec.cidr")
        v6 = cidr.version == 6
        default_bs = DEFAULT_BLOCK_SIZE_V6 if v6 else DEFAULT_BLOCK_SIZE_V4
        lo, hi = (116, 128) if v6 else (20, 32)
        bs = _int(spec.get("blockSize"), "spec.blockSize", lo, hi, default_bs)
        assert bs is not None
        if bs < cidr.prefixlen:
            raise Invalid(f"spec.blockSize: /{bs} blocks do not fit in pool {cidr}", field="spec.blockSize")
        ll = _LINK_LOCAL_V6 if v6 else _LINK_LOCAL_V4
        if cidr.overlaps(ll):  # type: ignore[arg-type]
            raise Invalid(f"spec.cidr: {cidr} overlaps the link-local range {ll}", field="spec.cidr")
        ipip = parse_encap_mode(spec.get("ipipMode"), "spec.ipipMode")
        vxlan = parse_encap_mode(spec.get("vxlanMode"), "spec.vxlanMode")
        if ipip != ENCAP_NEVER and vxlan != ENCAP_NEVER:
            raise Invalid("spec: ipipMode and vxlanMode cannot both be enabled", field="spec.ipipMode")
        if v6 and ipip != ENCAP_NEVER:
            raise Invalid("spec.ipipMode: IPIP is not supported on an IPv6 pool", field="spec.ipipMode")
        uses_raw = spec.get("allowedUses")
        if uses_raw in (None, []):
            uses: tuple[str, ...] = (USE_WORKLOAD, USE_TUNNEL)
        elif isinstance(uses_raw, list) and all(u in ALLOWED_USES for u in uses_raw):
            uses = tuple(uses_raw)
        else:
            raise Invalid(
                f"spec.allowedUses: {uses_raw!r} must be a list of {', '.join(ALLOWED_USES)}",
                field="spec.allowedUses",
            )
        am = _str(spec.get("assignmentMode"), "spec.assignmentMode", "Automatic") or "Automatic"
        if am not in ("Automatic", "Manual"):
            raise Invalid(
                f"spec.assignmentMode: {am!r} is not Automatic or Manual", field="spec.assignmentMode"
            )
        return cls(
            meta=meta,
            cidr=cidr,
            block_size=bs,
            ipip_mode=ipip,
            vxlan_mode=vxlan,
            nat_outgoing=_bool(spec.get("natOutgoing"), "spec.natOutgoing", False),
            disabled=_bool(spec.get("disabled"), "spec.disabled", False),
            disable_bgp_export=_bool(spec.get("disableBGPExport"), "spec.disableBGPExport", False),
            node_selector=_str(spec.get("nodeSelector"), "spec.nodeSelector", DEFAULT_NODE_SELECTOR)
            or DEFAULT_NODE_SELECTOR,
            allowed_uses=uses,
            assignment_mode=am,
            extra=_known(spec, cls._FIELDS),
        )


@dataclass(frozen=True)
class Node(_Resource):
    """calico-node's Node resource: BGP address and AS, tunnel addresses, the VXLAN MAC."""

    KIND: ClassVar[str] = "Node"
    PLURAL: ClassVar[str] = "nodes"
    NAMESPACED: ClassVar[bool] = False
    _FIELDS: ClassVar[tuple[str, ...]] = (
        "bgp",
        "ipv4VXLANTunnelAddr",
        "vxlanTunnelMACAddr",
        "ipv6VXLANTunnelAddr",
        "vxlanTunnelMACAddrV6",
    )
    _BGP_FIELDS: ClassVar[tuple[str, ...]] = (
        "ipv4Address",
        "ipv6Address",
        "asNumber",
        "routeReflectorClusterID",
        "ipv4IPIPTunnelAddr",
    )

    ipv4_address: ipaddress.IPv4Interface | None = None  # spec.bgp.ipv4Address "10.99.0.11/24"
    ipv6_address: ipaddress.IPv6Interface | None = None
    as_number: int | None = None  # None: the cluster's (BGPConfiguration) AS
    rr_cluster_id: str = ""
    ipip_tunnel_addr: ipaddress.IPv4Address | None = None
    vxlan_tunnel_addr: ipaddress.IPv4Address | None = None
    vxlan_tunnel_mac: str = ""
    has_bgp: bool = True  # whether spec.bgp is present at all
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    bgp_extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def ip(self) -> ipaddress.IPv4Address | None:
        return self.ipv4_address.ip if self.ipv4_address is not None else None

    def spec_json(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self.extra)
        if self.has_bgp:
            b: dict[str, Any] = dict(self.bgp_extra)
            if self.ipv4_address is not None:
                b["ipv4Address"] = str(self.ipv4_address)
            if self.ipv6_address is not None:
                b["ipv6Address"] = str(self.ipv6_address)
            if self.as_number is not None:
                b["asNumber"] = self.as_number
            if self.rr_cluster_id:
                b["routeReflectorClusterID"] = self.rr_cluster_id
            if self.ipip_tunnel_addr is not None:
                b["ipv4IPIPTunnelAddr"] = str(self.ipip_tunnel_addr)
            s["bgp"] = b
        if self.vxlan_tunnel_addr is not None:
            s["ipv4VXLANTunnelAddr"] = str(self.vxlan_tunnel_addr)
        if self.vxlan_tunnel_mac:
            s["vxlanTunnelMACAddr"] = self.vxlan_tunnel_mac
        return s

    @classmethod
    def from_spec(cls, meta: Meta, spec: Mapping[str, Any]) -> Node:
        bgp = spec.get("bgp")
        if bgp is not None and not isinstance(bgp, dict):
            raise Invalid("spec.bgp must be an object", field="spec.bgp")
        b: Mapping[str, Any] = bgp or {}
        v4 = _iface(b.get("ipv4Address"), "spec.bgp.ipv4Address")
        if v4 is not None and not isinstance(v4, ipaddress.IPv4Interface):
            raise Invalid("spec.bgp.ipv4Address: an IPv4 address is required", field="spec.bgp.ipv4Address")
        v6 = _iface(b.get("ipv6Address"), "spec.bgp.ipv6Address")
        if v6 is not None and not isinstance(v6, ipaddress.IPv6Interface):
            raise Invalid("spec.bgp.ipv6Address: an IPv6 address is required", field="spec.bgp.ipv6Address")
        ipip = _addr(b.get("ipv4IPIPTunnelAddr"), "spec.bgp.ipv4IPIPTunnelAddr")
        vx = _addr(spec.get("ipv4VXLANTunnelAddr"), "spec.ipv4VXLANTunnelAddr")
        for a, f in ((ipip, "spec.bgp.ipv4IPIPTunnelAddr"), (vx, "spec.ipv4VXLANTunnelAddr")):
            if a is not None and a.version != 4:
                raise Invalid(f"{f}: an IPv4 address is required", field=f)
        return cls(
            meta=meta,
            ipv4_address=v4,
            ipv6_address=v6,
            as_number=_as_number(b.get("asNumber"), "spec.bgp.asNumber"),
            rr_cluster_id=_str(b.get("routeReflectorClusterID"), "spec.bgp.routeReflectorClusterID"),
            ipip_tunnel_addr=ipip,  # type: ignore[arg-type]
            vxlan_tunnel_addr=vx,  # type: ignore[arg-type]
            vxlan_tunnel_mac=_mac(spec.get("vxlanTunnelMACAddr"), "spec.vxlanTunnelMACAddr"),
            has_bgp=bgp is not None,
            extra=_known(spec, cls._FIELDS),
            bgp_extra=_known(b, cls._BGP_FIELDS),
        )


@dataclass(frozen=True)
class WorkloadEndpoint(_Resource):
    """A pod's interface: written by the CNI plugin, read by felix (routes) and bgpd (nothing)."""

    KIND: ClassVar[str] = "WorkloadEndpoint"
    PLURAL: ClassVar[str] = "workloadendpoints"
    NAMESPACED: ClassVar[bool] = True
    _FIELDS: ClassVar[tuple[str, ...]] = (
        "orchestrator",
        "workload",
        "node",
        "containerID",
        "pod",
        "endpoint",
        "serviceAccountName",
        "ipNetworks",
        "profiles",
        "interfaceName",
        "mac",
    )

    node: str
    interface_name: str
    ip_networks: tuple[IPNetwork, ...] = ()
    orchestrator: str = "k8s"
    workload: str = ""
    container_id: str = ""
    pod: str = ""
    endpoint: str = "eth0"
    service_account_name: str = ""
    profiles: tuple[str, ...] = ()
    mac: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def namespace(self) -> str:
        return self.meta.namespace or "default"

    def spec_json(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self.extra)
        s.update(
            {
                "orchestrator": self.orchestrator,
                "node": self.node,
                "containerID": self.container_id,
                "pod": self.pod,
                "endpoint": self.endpoint,
                "ipNetworks": [str(n) for n in self.ip_networks],
                "profiles": list(self.profiles),
                "interfaceName": self.interface_name,
            }
        )
        if self.workload:
            s["workload"] = self.workload
        if self.service_account_name:
            s["serviceAccountName"] = self.service_account_name
        if self.mac:
            s["mac"] = self.mac
        return s

    @classmethod
    def from_spec(cls, meta: Meta, spec: Mapping[str, Any]) -> WorkloadEndpoint:
        node = _str(spec.get("node"), "spec.node")
        if not node:
            raise Invalid("spec.node is required", field="spec.node")
        ifname = _str(spec.get("interfaceName"), "spec.interfaceName")
        if not ifname or len(ifname) > 15 or "/" in ifname or " " in ifname:
            raise Invalid(
                f"spec.interfaceName: {ifname!r} is not a Linux interface name", field="spec.interfaceName"
            )
        nets_raw = spec.get("ipNetworks") or []
        if not isinstance(nets_raw, list):
            raise Invalid("spec.ipNetworks must be a list", field="spec.ipNetworks")
        nets = tuple(_net(n, "spec.ipNetworks") for n in nets_raw)
        profiles = spec.get("profiles") or []
        if not isinstance(profiles, list):
            raise Invalid("spec.profiles must be a list", field="spec.profiles")
        return cls(
            meta=meta,
            node=node,
            interface_name=ifname,
            ip_networks=nets,
            orchestrator=_str(spec.get("orchestrator"), "spec.orchestrator", "k8s"),
            workload=_str(spec.get("workload"), "spec.workload"),
            container_id=_str(spec.get("containerID"), "spec.containerID"),
            pod=_str(spec.get("pod"), "spec.pod"),
            endpoint=_str(spec.get("endpoint"), "spec.endpoint", "eth0"),
            service_account_name=_str(spec.get("serviceAccountName"), "spec.serviceAccountName"),
            profiles=tuple(str(p) for p in profiles),
            mac=_mac(spec.get("mac"), "spec.mac"),
            extra=_known(spec, cls._FIELDS),
        )


@dataclass(frozen=True)
class BGPConfiguration(_Resource):
    KIND: ClassVar[str] = "BGPConfiguration"
    PLURAL: ClassVar[str] = "bgpconfigurations"
    NAMESPACED: ClassVar[bool] = False
    _FIELDS: ClassVar[tuple[str, ...]] = (
        "nodeToNodeMeshEnabled",
        "asNumber",
        "listenPort",
        "logSeverityScreen",
        "serviceClusterIPs",
        "serviceExternalIPs",
        "serviceLoadBalancerIPs",
        "nodeMeshMaxRestartTime",
        "programClusterRoutes",
    )

    node_to_node_mesh_enabled: bool = True
    as_number: int = DEFAULT_AS
    listen_port: int = 179
    log_severity_screen: str = "Info"
    service_cluster_ips: tuple[IPNetwork, ...] = ()
    service_external_ips: tuple[IPNetwork, ...] = ()
    service_load_balancer_ips: tuple[IPNetwork, ...] = ()
    node_mesh_max_restart_time: str = ""  # a Go duration such as "120s"
    program_cluster_routes: str = ""  # "" = Calico's default (EnabledNoEncapOnly for BIRD)
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def spec_json(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self.extra)
        s.update(
            {
                "nodeToNodeMeshEnabled": self.node_to_node_mesh_enabled,
                "asNumber": self.as_number,
                "logSeverityScreen": self.log_severity_screen,
            }
        )
        if self.listen_port != 179:
            s["listenPort"] = self.listen_port
        for key, nets in (
            ("serviceClusterIPs", self.service_cluster_ips),
            ("serviceExternalIPs", self.service_external_ips),
            ("serviceLoadBalancerIPs", self.service_load_balancer_ips),
        ):
            if nets:
                s[key] = [{"cidr": str(n)} for n in nets]
        if self.node_mesh_max_restart_time:
            s["nodeMeshMaxRestartTime"] = self.node_mesh_max_restart_time
        if self.program_cluster_routes:
            s["programClusterRoutes"] = self.program_cluster_routes
        return s

    @classmethod
    def from_spec(cls, meta: Meta, spec: Mapping[str, Any]) -> BGPConfiguration:
        def cidrs(key: str) -> tuple[IPNetwork, ...]:
            raw = spec.get(key) or []
            if not isinstance(raw, list):
                raise Invalid(f"spec.{key} must be a list of {{cidr: ...}}", field=f"spec.{key}")
            out = []
            for item in raw:
                c = item.get("cidr") if isinstance(item, dict) else item
                out.append(_net(c, f"spec.{key}"))
            return tuple(out)

        asn = _as_number(spec.get("asNumber"), "spec.asNumber")
        port = _int(spec.get("listenPort"), "spec.listenPort", 1, 65535, 179)
        assert port is not None
        return cls(
            meta=meta,
            node_to_node_mesh_enabled=_bool(
                spec.get("nodeToNodeMeshEnabled"), "spec.nodeToNodeMeshEnabled", True
            ),
            as_number=DEFAULT_AS if asn is None else asn,
            listen_port=port,
            log_severity_screen=_str(spec.get("logSeverityScreen"), "spec.logSeverityScreen", "Info")
            or "Info",
            service_cluster_ips=cidrs("serviceClusterIPs"),
            service_external_ips=cidrs("serviceExternalIPs"),
            service_load_balancer_ips=cidrs("serviceLoadBalancerIPs"),
            node_mesh_max_restart_time=_str(
                spec.get("nodeMeshMaxRestartTime"), "spec.nodeMeshMaxRestartTime"
            ),
            program_cluster_routes=_str(spec.get("programClusterRoutes"), "spec.programClusterRoutes"),
            extra=_known(spec, cls._FIELDS),
        )


@dataclass(frozen=True)
class BGPPeer(_Resource):
    KIND: ClassVar[str] = "BGPPeer"
    PLURAL: ClassVar[str] = "bgppeers"
    NAMESPACED: ClassVar[bool] = False
    _FIELDS: ClassVar[tuple[str, ...]] = (
        "node",
        "nodeSelector",
        "peerIP",
        "peerSelector",
        "asNumber",
        "localASNumber",
        "keepOriginalNextHop",
        "nextHopMode",
        "sourceAddress",
        "maxRestartTime",
        "keepaliveTime",
        "ttlSecurity",
        "reachableBy",
        "filters",
        "numAllowedLocalASNumbers",
    )

    node: str = ""  # empty: applies to every node (subject to node_selector)
    node_selector: str = ""
    peer_ip: IPAddress | None = None
    peer_port: int | None = None  # from "peerIP": "10.0.0.1:1179" or "[::1]:1179"
    peer_selector: str = ""
    as_number: int | None = None
    local_as_number: int | None = None
    keep_original_next_hop: bool = False
    next_hop_mode: str = ""
    source_address: str = "UseNodeIP"
    max_restart_time: str = ""
    keepalive_time: str = ""
    ttl_security: int = 0
    reachable_by: IPAddress | None = None
    filters: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def spec_json(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self.extra)
        if self.node:
            s["node"] = self.node
        if self.node_selector:
            s["nodeSelector"] = self.node_selector
        if self.peer_ip is not None:
            ip = str(self.peer_ip)
            if self.peer_port is not None:
                ip = f"[{ip}]:{self.peer_port}" if self.peer_ip.version == 6 else f"{ip}:{self.peer_port}"
            s["peerIP"] = ip
        if self.peer_selector:
            s["peerSelector"] = self.peer_selector
        if self.as_number is not None:
            s["asNumber"] = self.as_number
        if self.local_as_number is not None:
            s["localASNumber"] = self.local_as_number
        if self.keep_original_next_hop:
            s["keepOriginalNextHop"] = True
        if self.next_hop_mode:
            s["nextHopMode"] = self.next_hop_mode
        if self.source_address != "UseNodeIP":
            s["sourceAddress"] = self.source_address
        if self.max_restart_time:
            s["maxRestartTime"] = self.max_restart_time
        if self.keepalive_time:
            s["keepaliveTime"] = self.keepalive_time
        if self.ttl_security:
            s["ttlSecurity"] = self.ttl_security
        if self.reachable_by is not None:
            s["reachableBy"] = str(self.reachable_by)
        if self.filters:
            s["filters"] = list(self.filters)
        return s

    @classmethod
    def from_spec(cls, meta: Meta, spec: Mapping[str, Any]) -> BGPPeer:
        raw_ip = _str(spec.get("peerIP"), "spec.peerIP")
        peer_ip: IPAddress | None = None
        port: int | None = None
        if raw_ip:
            host = raw_ip
            m = re.match(r"^\[(.+)\]:(\d+)$", raw_ip)
            if m:
                host, port = m.group(1), int(m.group(2))
            elif raw_ip.count(":") == 1:
                host, p = raw_ip.split(":")
                port = _int(p, "spec.peerIP", 1, 65535)
            peer_ip = _addr(host, "spec.peerIP")
        peer_selector = _str(spec.get("peerSelector"), "spec.peerSelector")
        asn = _as_number(spec.get("asNumber"), "spec.asNumber")
        if peer_ip is None and not peer_selector:
            raise Invalid("spec: one of peerIP or peerSelector is required", field="spec.peerIP")
        if peer_ip is not None and peer_selector:
            raise Invalid("spec: peerIP and peerSelector are mutually exclusive", field="spec.peerSelector")
        if peer_selector and asn is not None:
            raise Invalid(
                "spec.asNumber must be empty with peerSelector (the peer node's AS is used)",
                field="spec.asNumber",
            )
        if peer_ip is not None and asn is None:
            raise Invalid("spec.asNumber is required with peerIP", field="spec.asNumber")
        node = _str(spec.get("node"), "spec.node")
        node_selector = _str(spec.get("nodeSelector"), "spec.nodeSelector")
        if node and node_selector:
            raise Invalid("spec: node and nodeSelector are mutually exclusive", field="spec.nodeSelector")
        filters = spec.get("filters") or []
        if not isinstance(filters, list):
            raise Invalid("spec.filters must be a list", field="spec.filters")
        src = _str(spec.get("sourceAddress"), "spec.sourceAddress", "UseNodeIP") or "UseNodeIP"
        if src not in ("UseNodeIP", "None"):
            raise Invalid(f"spec.sourceAddress: {src!r} is not UseNodeIP or None", field="spec.sourceAddress")
        ttl = _int(spec.get("ttlSecurity"), "spec.ttlSecurity", 0, 255, 0)
        assert ttl is not None
        return cls(
            meta=meta,
            node=node,
            node_selector=node_selector,
            peer_ip=peer_ip,
            peer_port=port,
            peer_selector=peer_selector,
            as_number=asn,
            local_as_number=_as_number(spec.get("localASNumber"), "spec.localASNumber"),
            keep_original_next_hop=_bool(spec.get("keepOriginalNextHop"), "spec.keepOriginalNextHop", False),
            next_hop_mode=_str(spec.get("nextHopMode"), "spec.nextHopMode"),
            source_address=src,
            max_restart_time=_str(spec.get("maxRestartTime"), "spec.maxRestartTime"),
            keepalive_time=_str(spec.get("keepaliveTime"), "spec.keepaliveTime"),
            ttl_security=ttl,
            reachable_by=_addr(spec.get("reachableBy"), "spec.reachableBy"),
            filters=tuple(str(f) for f in filters),
            extra=_known(spec, cls._FIELDS),
        )


@dataclass(frozen=True)
class FelixConfiguration(_Resource):
    """The felix settings pycni-felix honours (`default` is cluster-wide, `node.<name>` per node)."""

    KIND: ClassVar[str] = "FelixConfiguration"
    PLURAL: ClassVar[str] = "felixconfigurations"
    NAMESPACED: ClassVar[bool] = False
    _FIELDS: ClassVar[tuple[str, ...]] = (
        "ipipEnabled",
        "ipipMTU",
        "vxlanEnabled",
        "vxlanMTU",
        "vxlanVNI",
        "vxlanPort",
        "interfacePrefix",
        "routeRefreshInterval",
        "logSeverityScreen",
        "natOutgoingAddress",
        "deviceRouteProtocol",
        "healthEnabled",
        "healthPort",
        "healthHost",
        "programClusterRoutes",
        "natOutgoingExclusions",
    )

    ipip_enabled: bool | None = None  # None: follow the pools
    ipip_mtu: int = 0  # 0: auto (underlay - 20)
    vxlan_enabled: bool | None = None
    vxlan_mtu: int = 0  # 0: auto (underlay - 50)
    vxlan_vni: int = 4096
    vxlan_port: int = 4789
    interface_prefix: str = "cali"
    route_refresh_interval: str = ""  # Go duration "90s"
    log_severity_screen: str = ""
    nat_outgoing_address: ipaddress.IPv4Address | None = None
    device_route_protocol: int = 0  # 0: default
    health_enabled: bool = True
    health_port: int = 9099
    health_host: str = "localhost"
    program_cluster_routes: str = ""  # "" = Enabled (felix programs IPIP + VXLAN pool routes)
    nat_outgoing_exclusions: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def spec_json(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self.extra)
        if self.ipip_enabled is not None:
            s["ipipEnabled"] = self.ipip_enabled
        if self.ipip_mtu:
            s["ipipMTU"] = self.ipip_mtu
        if self.vxlan_enabled is not None:
            s["vxlanEnabled"] = self.vxlan_enabled
        if self.vxlan_mtu:
            s["vxlanMTU"] = self.vxlan_mtu
        if self.vxlan_vni != 4096:
            s["vxlanVNI"] = self.vxlan_vni
        if self.vxlan_port != 4789:
            s["vxlanPort"] = self.vxlan_port
        if self.interface_prefix != "cali":
            s["interfacePrefix"] = self.interface_prefix
        if self.route_refresh_interval:
            s["routeRefreshInterval"] = self.route_refresh_interval
        if self.log_severity_screen:
            s["logSeverityScreen"] = self.log_severity_screen
        if self.nat_outgoing_address is not None:
            s["natOutgoingAddress"] = str(self.nat_outgoing_address)
        if self.device_route_protocol:
            s["deviceRouteProtocol"] = self.device_route_protocol
        if not self.health_enabled:
            s["healthEnabled"] = False
        if self.health_port != 9099:
            s["healthPort"] = self.health_port
        if self.health_host != "localhost":
            s["healthHost"] = self.health_host
        if self.program_cluster_routes:
            s["programClusterRoutes"] = self.program_cluster_routes
        if self.nat_outgoing_exclusions:
            s["natOutgoingExclusions"] = self.nat_outgoing_exclusions
        return s

    @classmethod
    def from_spec(cls, meta: Meta, spec: Mapping[str, Any]) -> FelixConfiguration:
        ipip = spec.get("ipipEnabled")
        vx = spec.get("vxlanEnabled")
        nat_addr = _addr(spec.get("natOutgoingAddress"), "spec.natOutgoingAddress")
        if nat_addr is not None and nat_addr.version != 4:
            raise Invalid(
                "spec.natOutgoingAddress: an IPv4 address is required", field="spec.natOutgoingAddress"
            )
        prefix = _str(spec.get("interfacePrefix"), "spec.interfacePrefix", "cali") or "cali"
        return cls(
            meta=meta,
            ipip_enabled=None if ipip is None else _bool(ipip, "spec.ipipEnabled", True),
            ipip_mtu=_int(spec.get("ipipMTU"), "spec.ipipMTU", 0, 65535, 0) or 0,
            vxlan_enabled=None if vx is None else _bool(vx, "spec.vxlanEnabled", True),
            vxlan_mtu=_int(spec.get("vxlanMTU"), "spec.vxlanMTU", 0, 65535, 0) or 0,
            vxlan_vni=_int(spec.get("vxlanVNI"), "spec.vxlanVNI", 1, 16777215, 4096) or 4096,
            vxlan_port=_int(spec.get("vxlanPort"), "spec.vxlanPort", 1, 65535, 4789) or 4789,
            interface_prefix=prefix.split(",")[0],
            route_refresh_interval=_str(spec.get("routeRefreshInterval"), "spec.routeRefreshInterval"),
            log_severity_screen=_str(spec.get("logSeverityScreen"), "spec.logSeverityScreen"),
            nat_outgoing_address=nat_addr,  # type: ignore[arg-type]
            device_route_protocol=_int(spec.get("deviceRouteProtocol"), "spec.deviceRouteProtocol", 0, 255, 0)
            or 0,
            health_enabled=_bool(spec.get("healthEnabled"), "spec.healthEnabled", True),
            health_port=_int(spec.get("healthPort"), "spec.healthPort", 1, 65535, 9099) or 9099,
            health_host=_str(spec.get("healthHost"), "spec.healthHost", "localhost") or "localhost",
            program_cluster_routes=_str(spec.get("programClusterRoutes"), "spec.programClusterRoutes"),
            nat_outgoing_exclusions=_str(spec.get("natOutgoingExclusions"), "spec.natOutgoingExclusions"),
            extra=_known(spec, cls._FIELDS),
        )


Resource = IPPool | Node | WorkloadEndpoint | BGPConfiguration | BGPPeer | FelixConfiguration
R = TypeVar("R", IPPool, Node, WorkloadEndpoint, BGPConfiguration, BGPPeer, FelixConfiguration)

KINDS: dict[str, type[Resource]] = {
    c.KIND: c for c in (IPPool, Node, WorkloadEndpoint, BGPConfiguration, BGPPeer, FelixConfiguration)
}
PLURALS: dict[str, type[Resource]] = {c.PLURAL: c for c in KINDS.values()}


# ----------------------------------------------------------------------------------------------
# keys


def prefix_for(cls: type[Resource], namespace: str | None = None) -> str:
    """The etcd prefix holding every resource of a kind (with a trailing slash)."""
    p = f"{RESOURCE_PREFIX}{cls.PLURAL}/"
    if namespace is not None:
        p += f"{namespace}/"
    return p


def resource_key(cls: type[Resource], name: str, namespace: str | None = None) -> str:
    if cls.NAMESPACED:
        return f"{RESOURCE_PREFIX}{cls.PLURAL}/{namespace or 'default'}/{name}"
    return f"{RESOURCE_PREFIX}{cls.PLURAL}/{name}"


def key_for(res: Resource) -> str:
    return resource_key(type(res), res.meta.name, res.meta.namespace)


IPPOOLS_PREFIX = f"{RESOURCE_PREFIX}ippools/"
NODES_PREFIX = f"{RESOURCE_PREFIX}nodes/"
WEPS_PREFIX = f"{RESOURCE_PREFIX}workloadendpoints/"
BGPCONFIG_PREFIX = f"{RESOURCE_PREFIX}bgpconfigurations/"
BGPPEERS_PREFIX = f"{RESOURCE_PREFIX}bgppeers/"
FELIXCONFIG_PREFIX = f"{RESOURCE_PREFIX}felixconfigurations/"


def parse_key(key: str) -> tuple[type[Resource], str | None, str] | None:
    """`(class, namespace, name)` for a v3 resource key of a kind we model; None otherwise."""
    if not key.startswith(RESOURCE_PREFIX):
        return None
    parts = key[len(RESOURCE_PREFIX) :].split("/")
    cls = PLURALS.get(parts[0])
    if cls is None:
        return None
    if cls.NAMESPACED:
        if len(parts) != 3 or not parts[1] or not parts[2]:
            return None
        return cls, parts[1], parts[2]
    if len(parts) != 2 or not parts[1]:
        return None
    return cls, None, parts[1]


# ----------------------------------------------------------------------------------------------
# codec


def encode(res: Resource) -> str:
    """The JSON text Calico's etcdv3 backend stores for this resource."""
    obj = {
        "kind": res.KIND,
        "apiVersion": API_VERSION,
        "metadata": res.meta.to_json(),
        "spec": res.spec_json(),
    }
    return json.dumps(obj, separators=(",", ":"), sort_keys=False)


def decode_json(text: str | bytes, expect: type[R] | None = None) -> Resource:
    """Decode a resource from its JSON text alone (kind from the document)."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise Invalid(f"not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise Invalid("a resource must be a JSON object")
    kind = obj.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if expect is not None:
        if kind not in (None, expect.KIND):
            raise Invalid(f"kind {kind!r} where {expect.KIND} was expected", field="kind")
        cls = expect
    if cls is None:
        raise Invalid(f"unknown or missing kind {kind!r}", field="kind")
    api = obj.get("apiVersion")
    if api not in (None, API_VERSION):
        raise Invalid(f"apiVersion {api!r} is not {API_VERSION}", field="apiVersion")
    meta = Meta.from_json(obj.get("metadata"))
    if cls.NAMESPACED and meta.namespace is None:
        meta = replace(meta, namespace="default")
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        raise Invalid("spec must be an object", field="spec")
    return cls.from_spec(meta, spec)


def decode(key: str, value: str | bytes, expect: type[R] | None = None) -> Resource:
    """Decode the value stored at `key`; the key decides the kind, name and namespace.

    Raises `Invalid` (with a message naming the key and the field) for anything malformed.
    """
    parsed = parse_key(key)
    if parsed is None:
        raise Invalid(f"{key}: not a Calico v3 resource key pycni knows")
    cls, ns, name = parsed
    if expect is not None and cls is not expect:
        raise Invalid(f"{key}: holds a {cls.KIND}, not a {expect.KIND}")
    try:
        res = decode_json(value, cls)  # type: ignore[type-var]
    except Invalid as e:
        raise Invalid(f"{key}: {e}", field=e.field) from None
    if res.meta.name != name or (cls.NAMESPACED and res.meta.namespace != ns):
        # The key is the identity (as in Calico's backend); keep it, whatever the body says.
        res = replace(res, meta=replace(res.meta, name=name, namespace=ns))  # type: ignore[type-var]
    return res


def decode_all(items: Iterable[tuple[str, str]], expect: type[R]) -> Iterator[R]:
    """Decode every (key, value) of one kind, logging and skipping the bad ones.

    This is what daemons use on a snapshot: one malformed record never hides the others.
    """
    for key, value in items:
        try:
            res = _decode_memo(key, value, cast(Any, expect))
        except Invalid as e:
            # Once per bad value, not once per recalculation.
            if _reported.get(key) != value:
                if len(_reported) > 10000:
                    _reported.clear()
                _reported[key] = value
                log.warning("bad resource skipped", key=key, error=str(e))
            continue
        yield res  # type: ignore[misc]


_reported: dict[str, str] = {}


@functools.lru_cache(maxsize=8192)
def _decode_memo(key: str, value: str, expect: Any) -> Any:
    """decode(), remembered per record: a daemon's calc runs on every batch of changes and decodes
    the same unchanged records each time (resources are frozen; a bad record raises every time)."""
    return decode(key, value, expect)


# ----------------------------------------------------------------------------------------------
# names


def _escape_dashes(s: str) -> str:
    return s.replace("-", "--")


def wep_name(node: str, pod: str, endpoint: str = "eth0", orchestrator: str = "k8s") -> str:
    """`<node>-k8s-<pod>-<endpoint>` with each part's dashes doubled (libcalico-go names package)."""
    return "-".join(_escape_dashes(p) for p in (node, orchestrator, pod, endpoint))


def felix_config_name(node: str | None = None) -> str:
    return "default" if node is None else f"node.{node}"


def validate_name(name: str) -> str:
    """Resource names are DNS subdomain names (lowercase alphanumerics, '-' and '.')."""
    if not name or len(name) > 253 or not _NAME_RE.match(name):
        raise Invalid(
            f"{name!r} is not a valid resource name (lowercase letters, digits, '-', '.')",
            field="metadata.name",
        )
    return name


# ----------------------------------------------------------------------------------------------
# datastore helpers (any `pycni.datastore.Datastore`)


def get_resource(ds: Any, cls: type[R], name: str, namespace: str | None = None) -> tuple[R, int] | None:
    """(resource, revision) or None when absent. Raises `Invalid` when the stored value is bad."""
    v = ds.get(resource_key(cls, name, namespace))
    if v is None:
        return None
    return decode(v.key, v.value, cls), v.revision  # type: ignore[return-value]


def list_resources(ds: Any, cls: type[R], namespace: str | None = None) -> list[R]:
    """Every valid resource of a kind (bad ones are logged and skipped)."""
    return list(decode_all(((v.key, v.value) for v in ds.list(prefix_for(cls, namespace))), cls))


def create_resource(ds: Any, res: Resource) -> int:
    """Create-if-absent (raises `AlreadyExists`); stamps uid/creationTimestamp if missing."""
    if not res.meta.uid:
        res = replace(
            res,
            meta=replace(
                res.meta,
                uid=str(uuid.uuid4()),  # type: ignore[type-var]
                creation_timestamp=res.meta.creation_timestamp or now_rfc3339(),
            ),
        )
    return int(ds.create(key_for(res), encode(res)).revision)


def apply_resource(ds: Any, res: Resource, *, retries: int = 10) -> int:
    """Create or update (CAS) keeping the stored uid and creationTimestamp, like `calicoctl apply`."""
    from pycni.errors import AlreadyExists, CasConflict

    key = key_for(res)
    for _ in range(retries):
        cur = ds.get(key)
        if cur is None:
            try:
                return create_resource(ds, res)
            except AlreadyExists:
                continue
        try:
            old = decode_json(cur.value, type(res)).meta  # type: ignore[type-var]
        except Invalid:
            old = res.meta
        meta = replace(
            res.meta,
            uid=old.uid or res.meta.uid or str(uuid.uuid4()),
            creation_timestamp=(old.creation_timestamp or res.meta.creation_timestamp or now_rfc3339()),
        )
        new = replace(res, meta=meta)  # type: ignore[type-var]
        text = encode(new)
        if text == cur.value:
            return int(cur.revision)
        try:
            return int(ds.update(key, text, revision=cur.revision).revision)
        except CasConflict:
            continue
    raise CasConflict(f"{key}: gave up after {retries} conflicting writes")


def delete_resource(ds: Any, cls: type[Resource], name: str, namespace: str | None = None) -> bool:
    return bool(ds.delete(resource_key(cls, name, namespace)))
