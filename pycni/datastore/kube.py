"""KubeDatastore: the `Datastore` seam on the Kubernetes API, for the DaemonSet (no etcd of ours).

pycni's keys are etcd paths; here each key lives in exactly one Kubernetes object, chosen from the
key alone (`locate`), the way Calico's KDD backend and flannel's kube subnet manager keep their
state in the API server:

=========================================================  ==========================================
key                                                        object
=========================================================  ==========================================
``/calico/resources/v3/projectcalico.org/<plural>/<name>``  ``crd.projectcalico.org/v1 <plural>/<name>``
``.../<plural>/<ns>/<name>`` (namespaced plurals)           the same, in namespace ``<ns>``
``/calico/ipam/v2/assignment/ipv4/block/10.244.0.0-26``     ``ipamblocks/10-244-0-0-26``
``/calico/ipam/v2/host/<node>/ipv4/block/10.244.0.0-26``    ``blockaffinities/<node>-10-244-0-0-26``
``/calico/ipam/v2/handle/<id>``                             ``ipamhandles/<lowercased id>``
anything else (flannel leases, IPAM config, Ready flag)    ``pycni.dev/v1 keyvalues/<slug>-<sha256:16>``
=========================================================  ==========================================

The value (JSON text) is kept losslessly: a Calico resource's `spec` becomes the object's spec and
the rest of the v3 document (apiVersion, kind, metadata, status) an annotation, so the JSON is
rebuilt key for key; a block's, affinity's or handle's JSON object is the spec (Calico's
`spec.node`/`spec.cidr`/`spec.handleID` are added when absent and taken out again on read);
a generic key's value is the string `spec.value`, byte for byte. Every object also carries its key
in the `pycni.dev/key` annotation. A value under a structured key that is not a JSON object raises
`Invalid`. Objects other tools created (no annotations) are read too: the key comes from the
plural, namespace and name, or from `spec.cidr`/`spec.node`/`spec.handleID`.

`revision` is the object's `resourceVersion` (the revision of the etcd behind the API server, so
it is comparable across kinds). `create` is POST (409 -> `AlreadyExists`), `update(revision=)` is PUT
with `metadata.resourceVersion` (409 or 404 -> `CasConflict`), `delete(revision=)` is DELETE with
`preconditions.resourceVersion`. `put` is a read-then-create-or-replace loop, because custom
resources allow no unconditional update.

TTL is an emulation (flannel's kube mode has no TTL at all; etcd leases have no API object): a
`ttl=` write first creates a `coordination.k8s.io/v1` Lease `pycni-<16 hex>` in `namespace`
(`leaseDurationSeconds` = ttl rounded up, `renewTime` = now) and names it in the object's
`pycni.dev/lease` annotation; the lease id is that hex number. Readers treat an object whose lease
is missing or past `renewTime + leaseDurationSeconds` as absent and reap it (DELETE with the
resourceVersion precondition) so watchers see a deletion; `refresh(lease)` moves `renewTime`
(the key object, hence its revision, is untouched, as in etcd). Expiry is judged by the reader's
clock, so nodes need roughly synchronised clocks (as Kubernetes leader election does). Renewing by
`update(ttl=)` orphans the previous Lease; syncers sweep expired Leases that no live key uses.

`sync` lists every relevant kind (the Lease kind first), emits, says IN_SYNC only when all have
listed, then runs one watch thread per kind from that kind's list resourceVersion
(`allowWatchBookmarks`, `timeoutSeconds`). A stream the server ends cleanly is resumed from the last
event or bookmark; a 410 Gone (as an ERROR event or as the HTTP status), a broken stream or an
unreachable server emits RESYNC and relists everything with the etcd adapter's rules (deletions
synthesised, unchanged keys not repeated; everything re-emitted if the resourceVersion went
backwards). Expiring leases are checked every `poll` seconds.

The client is the standard library (http.client + json), not the `kubernetes` package: we use six
verbs on two URL shapes, the watch must stop within a second (we shut its socket down, which the
generated client has no handle for), a clean stream end must be told from a dead server (we read
the chunk framing), and `import kubernetes.client` takes 1.4-1.8 s in every daemon.
Auth: in-cluster (service account token, re-read as it rotates, and CA) or a kubeconfig (JSON, or
YAML when PyYAML is installed; token, client certificate, CA; no exec plugins).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.client
import json
import math
import os
import queue
import re
import secrets
import select
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from pycni.datastore import Emit, SyncStatus, Update, Versioned
from pycni.errors import AlreadyExists, CasConflict, Invalid, LeaseExpired, Unavailable
from pycni.testing.clock import Clock

log = structlog.get_logger(__name__)

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_TIMEOUT = 5.0
DEFAULT_WATCH_TIMEOUT = 290  # seconds the server keeps one watch open before we resume it

# Key spaces (the same strings as pycni.datastore.calico / pycni.ipam.keys; a unit test pins that).
RESOURCE_PREFIX = "/calico/resources/v3/projectcalico.org/"
BLOCK_PREFIX = "/calico/ipam/v2/assignment/"
HOST_PREFIX = "/calico/ipam/v2/host/"
HANDLE_PREFIX = "/calico/ipam/v2/handle/"

ANN_KEY = "pycni.dev/key"
ANN_LEASE = "pycni.dev/lease"
ANN_V3 = "pycni.dev/v3"  # the v3 document minus its spec (spec: null marks its place)
ANN_ADDED = "pycni.dev/added"  # spec fields we added for Calico's CRD shape, removed on read
MANAGED = {"app.kubernetes.io/managed-by": "pycni"}
CALICO_GROUP = "crd.projectcalico.org"
V3_API_VERSION = "projectcalico.org/v3"

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def valid_label(key: str, value: str) -> bool:
    """A label the API server accepts: `[prefix/]name` and a value of at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    return (
        (not prefix or valid_name(prefix))
        and 0 < len(name) <= 63
        and bool(_LABEL_VALUE_RE.match(name))
        and len(value) <= 63
        and bool(_LABEL_VALUE_RE.match(value))
    )


def valid_name(name: str) -> bool:
    """An RFC 1123 subdomain (what object names must be), at most 253 characters."""
    return 0 < len(name) <= 253 and bool(_NAME_RE.match(name))


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    codec: str  # "calico" | "block" | "affinity" | "handle" | "kv" | "lease"
    root: str  # the key prefix this kind can hold ("" = any key)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        p = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None:
            p += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
        p += f"/{self.plural}"
        if name is not None:
            p += f"/{urllib.parse.quote(name, safe='')}"
        return p


_CALICO_CLUSTER = {
    "bgpconfigurations": "BGPConfiguration", "bgpfilters": "BGPFilter", "bgppeers": "BGPPeer",
    "caliconodestatuses": "CalicoNodeStatus", "clusterinformations": "ClusterInformation",
    "felixconfigurations": "FelixConfiguration", "globalnetworkpolicies": "GlobalNetworkPolicy",
    "globalnetworksets": "GlobalNetworkSet", "hostendpoints": "HostEndpoint", "ippools": "IPPool",
    "ipreservations": "IPReservation", "kubecontrollersconfigurations": "KubeControllersConfiguration",
    "nodes": "Node", "tiers": "Tier",
}  # fmt: skip
_CALICO_NAMESPACED = {
    "networkpolicies": "NetworkPolicy", "networksets": "NetworkSet", "workloadendpoints": "WorkloadEndpoint",
}  # fmt: skip

CALICO_KINDS: dict[str, Kind] = {
    p: Kind(CALICO_GROUP, "v1", p, k, p in _CALICO_NAMESPACED, "calico", f"{RESOURCE_PREFIX}{p}/")
    for p, k in {**_CALICO_CLUSTER, **_CALICO_NAMESPACED}.items()
}
BLOCKS = Kind(CALICO_GROUP, "v1", "ipamblocks", "IPAMBlock", False, "block", BLOCK_PREFIX)
AFFINITIES = Kind(CALICO_GROUP, "v1", "blockaffinities", "BlockAffinity", False, "affinity", HOST_PREFIX)
HANDLES = Kind(CALICO_GROUP, "v1", "ipamhandles", "IPAMHandle", False, "handle", HANDLE_PREFIX)
KEYVALUES = Kind("pycni.dev", "v1", "keyvalues", "KeyValue", False, "kv", "")
LEASES = Kind("coordination.k8s.io", "v1", "leases", "Lease", True, "lease", "")

KEY_KINDS: tuple[Kind, ...] = (*CALICO_KINDS.values(), BLOCKS, AFFINITIES, HANDLES, KEYVALUES)


@dataclass(frozen=True)
class Location:
    kind: Kind
    namespace: str | None
    name: str


def cidr_to_name(cidr_part: str) -> str:
    """Calico's `names.CIDRToName` on a key's CIDR part: `10.244.0.0-26` -> `10-244-0-0-26`."""
    return cidr_part.replace(".", "-").replace(":", "-").replace("/", "-").lower()


def kv_name(key: str) -> str:
    """A readable, collision-free object name for any key: `<slug>-<first 16 hex of sha256>`."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")[:200].strip("-")
    return f"{slug}-{digest}" if slug else digest


def _block_part(parts: list[str]) -> str | None:
    """`["ipv4", "block", "10.244.0.0-26"]` -> "10.244.0.0-26" (None if not that shape)."""
    if len(parts) == 3 and parts[0] in ("ipv4", "ipv6") and parts[1] == "block" and "-" in parts[2]:
        return parts[2]
    return None


def locate(key: str) -> Location:
    """The one object that holds `key` (a function of the key alone)."""
    if not key:
        raise Invalid("empty key", field="key")
    if key.startswith(RESOURCE_PREFIX):
        parts = key[len(RESOURCE_PREFIX) :].split("/")
        kind = CALICO_KINDS.get(parts[0])
        if kind is not None and kind.namespaced and len(parts) == 3:
            if _LABEL_RE.match(parts[1]) and len(parts[1]) <= 63 and valid_name(parts[2]):
                return Location(kind, parts[1], parts[2])
        elif kind is not None and len(parts) == 2 and valid_name(parts[1]):
            return Location(kind, None, parts[1])
    elif key.startswith(BLOCK_PREFIX):
        part = _block_part(key[len(BLOCK_PREFIX) :].split("/"))
        if part is not None and valid_name(cidr_to_name(part)):
            return Location(BLOCKS, None, cidr_to_name(part))
    elif key.startswith(HOST_PREFIX):
        node, _, rest = key[len(HOST_PREFIX) :].partition("/")
        part = _block_part(rest.split("/"))
        if node and part is not None and valid_name(f"{node}-{cidr_to_name(part)}"):
            return Location(AFFINITIES, None, f"{node}-{cidr_to_name(part)}")
    elif key.startswith(HANDLE_PREFIX):
        handle = key[len(HANDLE_PREFIX) :]
        if valid_name(handle.lower()):
            return Location(HANDLES, None, handle.lower())
    return Location(KEYVALUES, None, kv_name(key))


def kinds_for(prefixes: Sequence[str]) -> list[Kind]:
    """The kinds that may hold a key under any of the prefixes (KeyValue: always)."""
    return [k for k in KEY_KINDS if any(k.root.startswith(p) or p.startswith(k.root) for p in prefixes)]


# -- value <-> object ----------------------------------------------------------------------------
def _json_object(key: str, value: str) -> dict[str, Any]:
    try:
        obj = json.loads(value)
    except ValueError as e:
        raise Invalid(f"{key}: the Kubernetes datastore keeps this key as an object; value is not JSON: {e}",
                      field="value") from None  # fmt: skip
    if not isinstance(obj, dict):
        raise Invalid(f"{key}: value must be a JSON object", field="value")
    return obj


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _added_fields(spec: dict[str, Any], derived: dict[str, str]) -> list[str]:
    added = [f for f in derived if f not in spec]
    for f in added:
        spec[f] = derived[f]
    return added


def encode(key: str, value: str, loc: Location) -> dict[str, Any]:
    """The object (without resourceVersion and lease) that stores `value` at `key`."""
    kind = loc.kind
    ann: dict[str, str] = {ANN_KEY: key}
    md: dict[str, Any] = {"name": loc.name, "annotations": ann}
    if loc.namespace is not None:
        md["namespace"] = loc.namespace
    obj: dict[str, Any] = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": md}
    if kind.codec == "kv":
        obj["spec"] = {"key": key, "value": value}
        return obj
    doc = _json_object(key, value)
    if kind.codec == "calico":
        spec = doc.get("spec", {})
        vmd = doc.get("metadata")
        if not isinstance(vmd, dict) or vmd.get("name", loc.name) != loc.name:
            raise Invalid(f"{key}: metadata.name must be {loc.name!r}", field="value")
        if loc.namespace is not None and vmd.get("namespace", loc.namespace) != loc.namespace:
            raise Invalid(f"{key}: metadata.namespace must be {loc.namespace!r}", field="value")
        if doc.get("kind", kind.kind) != kind.kind:
            raise Invalid(f"{key}: kind must be {kind.kind!r}", field="value")
        labels = vmd.get("labels")
        if isinstance(labels, dict):  # mirrored for `kubectl -l`; the annotation keeps them all anyway
            valid = {k: v for k, v in labels.items() if isinstance(v, str) and valid_label(k, v)}
            if valid:
                md["labels"] = valid
        envelope = dict(doc)
        if "spec" in envelope:
            envelope["spec"] = None  # keeps the spec's place, so the text is rebuilt key for key
        ann[ANN_V3] = _dumps(envelope)
        obj["spec"] = spec
        return obj
    spec = dict(doc)
    if kind.codec == "block":
        added: list[str] = []
    elif kind.codec == "affinity":
        node, _, rest = key[len(HOST_PREFIX) :].partition("/")
        part = rest.split("/")[2]
        added = _added_fields(spec, {"node": node, "cidr": _part_to_cidr(part)})
    else:  # handle
        added = _added_fields(spec, {"handleID": key[len(HANDLE_PREFIX) :]})
    if added:
        ann[ANN_ADDED] = ",".join(added)
    obj["spec"] = spec
    return obj


def _part_to_cidr(part: str) -> str:
    addr, _, plen = part.rpartition("-")
    return f"{addr}/{plen}"


def _cidr_to_part(cidr: str) -> str:
    addr, _, plen = cidr.rpartition("/")
    return f"{addr}-{plen}"


def _family(cidr: str) -> str:
    return "ipv6" if ":" in cidr else "ipv4"


@dataclass(frozen=True)
class Decoded:
    key: str
    value: str
    revision: int
    lease: str  # the Lease object's name, "" for none


def decode(kind: Kind, obj: Any) -> Decoded | None:
    """The key and value an object stores, or None when it is not one of ours to read."""
    if not isinstance(obj, dict):
        return None
    md = obj.get("metadata") or {}
    ann = md.get("annotations") or {}
    spec = obj.get("spec")
    name, ns = md.get("name", ""), md.get("namespace")
    try:
        rev = int(md.get("resourceVersion", "0"))
    except ValueError:
        return None
    key = ann.get(ANN_KEY)
    if kind.codec == "kv":
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("key"), str)
            or not isinstance(spec.get("value"), str)
        ):
            return None
        key, value = spec["key"], spec["value"]
    elif kind.codec == "calico":
        if key is None:
            key = (
                f"{RESOURCE_PREFIX}{kind.plural}/{ns}/{name}"
                if kind.namespaced
                else f"{RESOURCE_PREFIX}{kind.plural}/{name}"
            )
        try:
            envelope = json.loads(ann[ANN_V3]) if ANN_V3 in ann else None
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict):
            vmd: dict[str, Any] = {"name": name}
            if ns is not None:
                vmd["namespace"] = ns
            for f in ("uid", "creationTimestamp", "labels"):
                if md.get(f):
                    vmd[f] = md[f]
            others = {k: v for k, v in ann.items() if not k.startswith("pycni.dev/")}
            if others:
                vmd["annotations"] = others
            envelope = {"kind": kind.kind, "apiVersion": V3_API_VERSION, "metadata": vmd, "spec": None}
        if "spec" in envelope:
            envelope["spec"] = spec if spec is not None else {}
        value = _dumps(envelope)
    else:
        if not isinstance(spec, dict):
            return None
        spec = dict(spec)
        if key is None:
            if kind.codec == "block" and isinstance(spec.get("cidr"), str):
                c = spec["cidr"]
                key = f"{BLOCK_PREFIX}{_family(c)}/block/{_cidr_to_part(c)}"
            elif kind.codec == "affinity" and isinstance(spec.get("cidr"), str) and spec.get("node"):
                c = spec["cidr"]
                key = f"{HOST_PREFIX}{spec['node']}/{_family(c)}/block/{_cidr_to_part(c)}"
            elif kind.codec == "handle" and isinstance(spec.get("handleID"), str):
                key = f"{HANDLE_PREFIX}{spec['handleID']}"
            else:
                return None
        for f in filter(None, ann.get(ANN_ADDED, "").split(",")):
            spec.pop(f, None)
        value = _dumps(spec)
    if locate(key) != Location(kind, ns if kind.namespaced else None, name):
        return None  # not where this key lives: never let two objects claim one key
    return Decoded(key, value, rev, ann.get(ANN_LEASE, ""))


# -- leases --------------------------------------------------------------------------------------
def lease_name(lease_id: int) -> str:
    return f"pycni-{lease_id:016x}"


def lease_id(name: str) -> int:
    try:
        return int(name.removeprefix("pycni-"), 16) if name.startswith("pycni-") else 0
    except ValueError:
        return 0


def _micro_time(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> float | None:
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.UTC).timestamp()
        except ValueError:
            continue
    return None


def lease_deadline(obj: Any) -> float | None:
    """`renewTime + leaseDurationSeconds` of a Lease object (None if it has neither)."""
    spec = obj.get("spec") if isinstance(obj, dict) else None
    if not isinstance(spec, dict):
        return None
    renew = _parse_time(str(spec.get("renewTime") or spec.get("acquireTime") or ""))
    dur = spec.get("leaseDurationSeconds")
    if renew is None or not isinstance(dur, int):
        return None
    return renew + dur


_List = list  # `KubeDatastore.list` shadows the builtin inside the class


class _WallClock:
    def now(self) -> float:
        return time.time()


# -- HTTP ----------------------------------------------------------------------------------------
class _ApiError(Exception):
    def __init__(self, code: int, body: Any) -> None:
        self.code = code
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        self.message = body.get("message", "") if isinstance(body, dict) else str(body)[:200]
        super().__init__(f"HTTP {code} {self.reason}: {self.message}")


@dataclass
class _Config:
    host: str
    port: int
    tls: ssl.SSLContext | None
    token: str | None = None
    token_file: str | None = None


class _Http:
    """One keep-alive connection per thread; bearer token (re-read from its file once a minute)."""

    def __init__(self, cfg: _Config, timeout: float) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self._local = threading.local()
        self._token: str | None = cfg.token
        self._token_read = 0.0
        self.token_reread = 60.0  # seconds: kubelet rotates projected service-account tokens
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []

    def connect(self, timeout: float | None) -> http.client.HTTPConnection:
        cfg = self.cfg
        conn: http.client.HTTPConnection
        if cfg.tls is not None:
            conn = http.client.HTTPSConnection(cfg.host, cfg.port, timeout=timeout, context=cfg.tls)
        else:
            conn = http.client.HTTPConnection(cfg.host, cfg.port, timeout=timeout)
        try:
            conn.connect()
            # http.client sends headers and body in two writes: without this, Nagle plus the
            # server's delayed ACK cost 40 ms per request.
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, ssl.SSLError) as e:
            conn.close()
            raise Unavailable(f"kube api {cfg.host}:{cfg.port}: {e}") from None
        return conn

    def headers(self, body: bool) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "pycni"}
        if body:
            h["Content-Type"] = "application/json"
        token = self.token()
        if token:
            h["Authorization"] = f"Bearer {token}"
        return h

    def token(self) -> str | None:
        if self.cfg.token_file is None:
            return self._token
        with self._lock:
            if time.monotonic() - self._token_read > self.token_reread or self._token is None:
                try:
                    with open(self.cfg.token_file) as f:
                        self._token = f.read().strip()
                    self._token_read = time.monotonic()
                except OSError as e:
                    log.warning("kube token unreadable", path=self.cfg.token_file, error=str(e))
            return self._token

    def _conn(self) -> tuple[http.client.HTTPConnection, bool]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            try:  # the server closed an idle keep-alive connection: readable with EOF
                readable, _, _ = select.select([conn.sock], [], [], 0)
            except (OSError, ValueError):
                readable = [conn.sock]
            if not readable:
                return conn, True
            conn.close()
        conn = self.connect(self.timeout)
        self._local.conn = conn
        with self._lock:
            self._all = [c for c in self._all if c.sock is not None]
            self._all.append(conn)
        return conn, False

    def close_all(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            c.close()

    def drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: Any = None, *, write: bool = False) -> Any:
        """The decoded JSON of a 2xx answer; raises `_ApiError` for others, `Unavailable` if unreachable."""
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (0, 1):
            conn, reused = self._conn()
            try:
                conn.request(method, path, body=data, headers=self.headers(data is not None))
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as e:
                self.drop()
                if attempt == 0 and reused and not write:
                    continue  # a stale keep-alive connection: a read may simply be retried
                if write:
                    raise Unavailable(f"kube api {method} {path}: outcome unknown ({e!r})") from None
                raise Unavailable(f"kube api {method} {path}: {e!r}") from None
            if resp.will_close:
                self.drop()
            try:
                obj = json.loads(raw) if raw else None
            except ValueError:
                obj = {"message": raw[:200].decode(errors="replace")}
            if 200 <= resp.status < 300:
                return obj
            if resp.status in (401, 403, 429) or resp.status >= 500:
                msg = obj.get("message", "") if isinstance(obj, dict) else ""
                raise Unavailable(f"kube api {method} {path}: HTTP {resp.status}: {msg}")
            raise _ApiError(resp.status, obj)
        raise AssertionError("unreachable")


def _tls_context(ca_file: str | None, ca_data: str | None, cert_file: str | None, key_file: str | None,
                 insecure: bool) -> ssl.SSLContext:  # fmt: skip
    ctx = ssl.create_default_context(cafile=ca_file, cadata=ca_data)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


# -- the datastore -------------------------------------------------------------------------------
class _Lost(Exception):
    def __init__(self, reason: str, *, unavailable: bool) -> None:
        super().__init__(reason)
        self.unavailable = unavailable


@dataclass
class _SyncState:
    known: dict[str, int] = field(default_factory=dict)  # key -> revision told to the consumer
    leased: dict[str, str] = field(default_factory=dict)  # key -> lease name (known keys only)
    deadlines: dict[str, float | None] = field(default_factory=dict)  # lease name -> deadline (None: gone)
    reaping: dict[str, int] = field(default_factory=dict)  # key -> revision we asked to delete
    checked: dict[str, float] = field(default_factory=dict)  # lease name -> when last fetched
    next_sweep: float = 0.0  # monotonic time of the next orphaned-lease sweep
    high: int = 0  # the newest resourceVersion seen (lists and events)


class KubeDatastore:
    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        token_file: str | None = None,
        ca_file: str | None = None,
        ca_data: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        insecure_skip_tls_verify: bool = False,
        namespace: str = "kube-system",
        timeout: float = DEFAULT_TIMEOUT,
        watch_timeout: int = DEFAULT_WATCH_TIMEOUT,
        poll: float = 0.1,
        sweep_interval: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        """`server`: `https://host:port` (or `http://` for the fake); `namespace` holds the TTL Leases.

        `clock` is the wall clock lease times are written and judged with (tests inject a FakeClock).
        """
        url = urllib.parse.urlsplit(server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise Invalid(f"kube api server {server!r}: expected http(s)://host[:port]", field="server")
        try:
            port = url.port or (443 if url.scheme == "https" else 80)
        except ValueError as e:
            raise Invalid(f"kube api server {server!r}: {e}", field="server") from None
        tls = None
        if url.scheme == "https":
            try:
                tls = _tls_context(ca_file, ca_data, client_cert, client_key, insecure_skip_tls_verify)
            except (OSError, ssl.SSLError) as e:
                raise Invalid(f"kube api TLS setup: {e}", field="server") from None
        self.server = server
        self.namespace = namespace
        self.watch_timeout = watch_timeout
        self.poll = poll
        self.sweep_interval = sweep_interval
        self._clock: Clock = clock or _WallClock()
        self._http = _Http(_Config(url.hostname, port, tls, token, token_file), timeout)
        self._closed = False

    def __repr__(self) -> str:
        return f"KubeDatastore({self.server})"

    # -- construction from the environment ---------------------------------------------------
    @classmethod
    def in_cluster(cls, **kw: Any) -> KubeDatastore:
        """The pod's service account: KUBERNETES_SERVICE_HOST/PORT, token, CA and namespace."""
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
        )
        if not host:
            raise Invalid("not in a cluster: KUBERNETES_SERVICE_HOST is not set", field="kubeconfig")
        if ":" in host:
            host = f"[{host}]"
        ns_file = os.path.join(SA_DIR, "namespace")
        if "namespace" not in kw and os.path.exists(ns_file):
            with open(ns_file) as f:
                kw["namespace"] = f.read().strip() or "kube-system"
        return cls(f"https://{host}:{port}", token_file=os.path.join(SA_DIR, "token"),
                   ca_file=os.path.join(SA_DIR, "ca.crt"), **kw)  # fmt: skip

    @classmethod
    def from_kubeconfig(cls, path: str, *, context: str | None = None, **kw: Any) -> KubeDatastore:
        """A kubeconfig's current (or named) context: server, CA, token or client certificate."""
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise Invalid(f"kubeconfig {path}: {e}", field="kubeconfig") from None
        cfg = _load_yaml_or_json(text, path)
        base = os.path.dirname(os.path.abspath(path))

        def named(section: str, name: str | None) -> dict[str, Any]:
            for item in cfg.get(section) or []:
                if isinstance(item, dict) and item.get("name") == name:
                    inner = item.get(section.rstrip("s"))
                    return inner if isinstance(inner, dict) else {}
            raise Invalid(f"kubeconfig {path}: no {section.rstrip('s')} {name!r}", field="kubeconfig")

        ctx = named("contexts", context or cfg.get("current-context"))
        cluster, user = named("clusters", ctx.get("cluster")), named("users", ctx.get("user"))
        if "exec" in user or "auth-provider" in user:
            raise Invalid(
                f"kubeconfig {path}: exec/auth-provider credentials are not supported", field="kubeconfig"
            )

        temps: list[str] = []

        def file_or_data(file_key: str, data_key: str, src: dict[str, Any]) -> str | None:
            """A path for ssl to load: the file named, or the inline base64 data in a 0600 temp file."""
            if src.get(file_key):
                return os.path.join(base, str(src[file_key]))
            if src.get(data_key):
                fd, tmp = tempfile.mkstemp(prefix="pycni-kube-")
                temps.append(tmp)
                with os.fdopen(fd, "wb") as f:
                    f.write(base64.b64decode(src[data_key]))
                return tmp
            return None

        token_file = user.get("tokenFile")
        try:
            return cls(
                str(cluster.get("server", "")),
                token=user.get("token"),
                token_file=os.path.join(base, token_file) if token_file else None,
                ca_file=file_or_data("certificate-authority", "certificate-authority-data", cluster),
                client_cert=file_or_data("client-certificate", "client-certificate-data", user),
                client_key=file_or_data("client-key", "client-key-data", user),
                insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify")),
                **kw,
            )
        finally:  # the TLS context has read them
            for tmp in temps:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    @classmethod
    def connect(cls, kubeconfig: str | None = None, **kw: Any) -> KubeDatastore:
        """A kubeconfig when given (or $KUBECONFIG), else the in-cluster service account."""
        path = kubeconfig or os.environ.get("KUBECONFIG")
        return cls.from_kubeconfig(path, **kw) if path else cls.in_cluster(**kw)

    # -- plumbing -------------------------------------------------------------------------------
    def _req(self, method: str, path: str, body: Any = None, *, write: bool = False) -> Any:
        if self._closed:
            raise Unavailable("kube datastore: client closed")
        return self._http.request(method, path, body, write=write)

    def _get_obj(self, loc: Location) -> Any | None:
        try:
            return self._req("GET", loc.kind.path(loc.namespace, loc.name))
        except _ApiError as e:
            if e.code == 404:
                return None
            raise Invalid(f"kube api GET {loc.kind.plural}/{loc.name}: {e}") from None

    def _fetch_deadline(self, lease: str) -> float | None:
        """The lease's deadline from the server; None when it is gone (or carries no times)."""
        try:
            return lease_deadline(self._req("GET", LEASES.path(self.namespace, lease)))
        except _ApiError as e:
            if e.code != 404:
                raise Invalid(f"kube api GET lease {lease}: {e}") from None
            return None

    def _expired(self, lease: str, cache: dict[str, float | None] | None = None) -> bool:
        if not lease:
            return False
        deadline = cache[lease] if cache is not None and lease in cache else self._fetch_deadline(lease)
        return deadline is None or deadline <= self._clock.now()

    def _reap(self, loc: Location, revision: int, lease: str) -> None:
        """Delete an expired object (only if unchanged) and its lease; failures are left to others."""
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": {"resourceVersion": str(revision)},
        }
        for path, b in (
            (loc.kind.path(loc.namespace, loc.name), body),
            (LEASES.path(self.namespace, lease), None),
        ):
            try:
                self._req("DELETE", path, b, write=True)
                log.info("kube expired object reaped", path=path)
            except (_ApiError, Unavailable) as e:
                log.debug("kube reap skipped", path=path, error=str(e))

    def _grant(self, key: str, ttl: float | None) -> str:
        if ttl is None:
            return ""
        if ttl <= 0:
            raise Invalid(f"ttl must be positive, got {ttl}", field="ttl")
        name = lease_name(secrets.randbits(63) or 1)
        now = _micro_time(self._clock.now())
        obj = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": name, "namespace": self.namespace, "labels": dict(MANAGED),
                            "annotations": {ANN_KEY: key}},
               "spec": {"holderIdentity": socket.gethostname(),
                        "leaseDurationSeconds": max(1, math.ceil(ttl)),
                        "acquireTime": now, "renewTime": now}}  # fmt: skip
        try:
            self._req("POST", LEASES.path(self.namespace), obj, write=True)
        except _ApiError as e:
            raise Invalid(f"kube api: cannot create lease in namespace {self.namespace!r}: {e}") from None
        return name

    def _revoke(self, lease: str) -> None:
        if lease:
            with contextlib.suppress(_ApiError, Unavailable):
                self._req("DELETE", LEASES.path(self.namespace, lease), write=True)

    def _body(self, key: str, value: str, loc: Location, lease: str, revision: int | None) -> dict[str, Any]:
        obj = encode(key, value, loc)
        if lease:
            obj["metadata"]["annotations"][ANN_LEASE] = lease
        if revision is not None:
            obj["metadata"]["resourceVersion"] = str(revision)
        return obj

    def _versioned(self, obj: Any, loc: Location) -> Versioned:
        d = decode(loc.kind, obj)
        if d is None:
            raise Invalid(f"kube api returned an object that does not decode ({loc.kind.plural}/{loc.name})")
        return Versioned(d.key, d.value, d.revision, lease_id(d.lease))

    def _current(self, key: str, loc: Location) -> tuple[Any, Decoded] | None:
        """The live object holding `key` (expired ones are reaped and count as absent)."""
        obj = self._get_obj(loc)
        if obj is None:
            return None
        d = decode(loc.kind, obj)
        if d is None or d.key != key:
            return None
        if d.lease and self._expired(d.lease):
            self._reap(loc, d.revision, d.lease)
            return None
        return obj, d

    # -- Datastore ------------------------------------------------------------------------------
    def get(self, key: str) -> Versioned | None:
        loc = locate(key)
        cur = self._current(key, loc)
        return None if cur is None else Versioned(key, cur[1].value, cur[1].revision, lease_id(cur[1].lease))

    def list(self, prefix: str) -> list[Versioned]:
        found: list[Decoded] = []
        for kind in kinds_for([prefix]):
            items, _ = self._list_kind(kind)
            decoded = (decode(kind, obj) for obj in items)
            found += [d for d in decoded if d is not None and d.key.startswith(prefix)]
        # Leases are listed only when a key has one (IPAM lists blocks on every allocation), and after
        # the keys: a key's Lease is created before the key, so it cannot be missed.
        deadlines = self._lease_deadlines() if any(d.lease for d in found) else {}
        live = sorted(
            (d for d in found if not (d.lease and self._expired(d.lease, deadlines))), key=lambda d: d.key
        )
        return [Versioned(d.key, d.value, d.revision, lease_id(d.lease)) for d in live]

    def _list_kind(self, kind: Kind) -> tuple[_List[Any], int | None]:
        """(items, list resourceVersion); a kind the server does not know (CRD missing) is empty."""
        ns = self.namespace if kind is LEASES else None
        path = kind.path(ns)
        if kind is LEASES:
            path += "?" + urllib.parse.urlencode({"labelSelector": "app.kubernetes.io/managed-by=pycni"})
        try:
            out = self._req("GET", path)
        except _ApiError as e:
            if e.code == 404:
                log.warning(
                    "kube resource not served; is its CRD installed?", resource=f"{kind.plural}.{kind.group}"
                )
                return [], None
            raise Invalid(f"kube api LIST {kind.plural}: {e}") from None
        items = out.get("items") or [] if isinstance(out, dict) else []
        try:
            rv = int(out["metadata"]["resourceVersion"])
        except (KeyError, TypeError, ValueError):
            raise Unavailable(f"kube api LIST {kind.plural}: no resourceVersion") from None
        return items, rv

    def _lease_deadlines(self) -> dict[str, float | None]:
        items, _ = self._list_kind(LEASES)
        return {o["metadata"]["name"]: lease_deadline(o) for o in items if isinstance(o, dict)}

    def create(self, key: str, value: str, *, ttl: float | None = None) -> Versioned:
        loc = locate(key)
        body = self._body(key, value, loc, "", None)  # validate before granting anything
        lease = self._grant(key, ttl)
        if lease:
            body["metadata"]["annotations"][ANN_LEASE] = lease
        try:
            for _ in range(3):
                try:
                    obj = self._req("POST", loc.kind.path(loc.namespace), body, write=True)
                    break
                except _ApiError as e:
                    if e.code != 409:
                        raise Invalid(f"kube api create {key}: {e}") from None
                    if self._current(key, loc) is not None or self._get_obj(loc) is not None:
                        raise AlreadyExists(key) from None
                    # it had expired and was reaped: try again
            else:
                raise AlreadyExists(key)
        except (AlreadyExists, CasConflict, Invalid):
            self._revoke(lease)  # the write surely lost; after "outcome unknown" the object may hold it
            raise
        v = self._versioned(obj, loc)
        log.info("kube key created", key=key, object=f"{loc.kind.plural}/{loc.name}", revision=v.revision,
                 lease=lease or None)  # fmt: skip
        return v

    def update(self, key: str, value: str, *, revision: int, ttl: float | None = None) -> Versioned:
        loc = locate(key)
        body = self._body(key, value, loc, "", revision)
        lease = self._grant(key, ttl)
        if lease:
            body["metadata"]["annotations"][ANN_LEASE] = lease
        try:
            try:
                obj = self._req("PUT", loc.kind.path(loc.namespace, loc.name), body, write=True)
            except _ApiError as e:
                if e.code in (404, 409):
                    raise CasConflict(f"{key}: revision {revision} is not current") from None
                raise Invalid(f"kube api update {key}: {e}") from None
        except (AlreadyExists, CasConflict, Invalid):
            self._revoke(lease)  # the write surely lost; after "outcome unknown" the object may hold it
            raise
        v = self._versioned(obj, loc)
        log.info("kube key updated", key=key, revision=v.revision, lease=lease or None)
        return v

    def put(self, key: str, value: str, *, ttl: float | None = None) -> Versioned:
        loc = locate(key)
        self._body(key, value, loc, "", None)  # validate first
        lease = self._grant(key, ttl)
        try:
            for _ in range(20):
                cur = self._current(key, loc)
                try:
                    if cur is None:
                        body = self._body(key, value, loc, lease, None)
                        obj = self._req("POST", loc.kind.path(loc.namespace), body, write=True)
                    else:
                        body = self._body(key, value, loc, lease, cur[1].revision)
                        obj = self._req("PUT", loc.kind.path(loc.namespace, loc.name), body, write=True)
                except _ApiError as e:
                    if e.code in (404, 409):
                        continue  # raced with another writer: read again
                    raise Invalid(f"kube api put {key}: {e}") from None
                break
            else:
                raise CasConflict(f"{key}: put kept racing other writers")
        except (AlreadyExists, CasConflict, Invalid):
            self._revoke(lease)  # the write surely lost; after "outcome unknown" the object may hold it
            raise
        v = self._versioned(obj, loc)
        log.info("kube key put", key=key, revision=v.revision, lease=lease or None)
        return v

    def delete(self, key: str, *, revision: int | None = None) -> bool:
        loc = locate(key)
        body: dict[str, Any] | None = None
        if revision is not None:
            body = {
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "preconditions": {"resourceVersion": str(revision)},
            }
        else:
            cur = self._current(key, loc)  # also tells an expired (= absent) object from a live one
            if cur is None:
                return False
            body = {"kind": "DeleteOptions", "apiVersion": "v1",
                    "preconditions": {"resourceVersion": str(cur[1].revision)}}  # fmt: skip
        try:
            obj = self._req("DELETE", loc.kind.path(loc.namespace, loc.name), body, write=True)
        except _ApiError as e:
            if revision is None and e.code in (404, 409):
                return self.delete(key) if e.code == 409 else False  # changed meanwhile: delete what is there
            if e.code in (404, 409):
                raise CasConflict(f"{key}: revision {revision} is not current") from None
            raise Invalid(f"kube api delete {key}: {e}") from None
        d = decode(loc.kind, obj)
        if d is not None and d.lease:
            self._revoke(d.lease)  # one lease per write: nothing else hangs on it
        log.info("kube key deleted", key=key, revision=revision)
        return True

    def refresh(self, lease: int) -> float:
        name = lease_name(lease)
        path = LEASES.path(self.namespace, name)
        for _ in range(5):
            try:
                obj = self._req("GET", path)
            except _ApiError as e:
                if e.code == 404:
                    raise LeaseExpired(f"lease {lease:x} not found") from None
                raise Invalid(f"kube api GET lease {name}: {e}") from None
            deadline = lease_deadline(obj)
            if deadline is None or deadline <= self._clock.now():
                self._revoke(name)
                raise LeaseExpired(f"lease {lease:x} expired")
            obj["spec"]["renewTime"] = _micro_time(self._clock.now())
            try:
                self._req("PUT", path, obj, write=True)
            except _ApiError as e:
                if e.code in (404, 409):
                    continue
                raise Invalid(f"kube api renew lease {name}: {e}") from None
            ttl = float(obj["spec"]["leaseDurationSeconds"])
            log.debug("kube lease renewed", lease=name, ttl=ttl)
            return ttl
        raise CasConflict(f"lease {lease:x}: renewal kept racing")

    def close(self) -> None:
        self._closed = True
        self._http.close_all()

    # -- sync -----------------------------------------------------------------------------------
    def sync(
        self,
        prefixes: Sequence[str],
        emit: Emit,
        stop: threading.Event,
        *,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        """List every kind, IN_SYNC, watch each; on a lost watch RESYNC, relist, IN_SYNC again."""
        kinds = kinds_for(prefixes)
        st = _SyncState()
        backoff = min_backoff
        emit(SyncStatus.WAIT_FOR_DATASTORE)
        while not stop.is_set() and not self._closed:
            try:
                rvs = self._relist(kinds, prefixes, st, emit)
            except (Unavailable, Invalid) as e:
                log.warning("kube list failed; retrying", error=str(e), retry_in=round(backoff, 2))
                stop.wait(backoff)
                backoff = min(backoff * 2, max_backoff)
                continue
            backoff = min_backoff
            emit(SyncStatus.IN_SYNC)
            try:
                self._watch(rvs, prefixes, st, emit, stop)
                return
            except _Lost as lost:
                if self._closed:
                    return
                log.warning("kube watch lost; relisting", reason=str(lost))
                emit(SyncStatus.RESYNC)
                if lost.unavailable:
                    stop.wait(backoff)
                    backoff = min(backoff * 2, max_backoff)

    def _relist(
        self, kinds: _List[Kind], prefixes: Sequence[str], st: _SyncState, emit: Emit
    ) -> dict[Kind, int]:
        def wanted(k: str) -> bool:
            return any(k.startswith(p) for p in prefixes)

        leases, lease_rv = self._list_kind(LEASES)
        st.deadlines = {o["metadata"]["name"]: lease_deadline(o) for o in leases if isinstance(o, dict)}
        rvs: dict[Kind, int] = {}
        if lease_rv is not None:
            rvs[LEASES] = lease_rv
        snap: dict[str, Decoded] = {}
        for kind in kinds:
            items, rv = self._list_kind(kind)
            if rv is not None:
                rvs[kind] = rv
            for obj in items:
                d = decode(kind, obj)
                if d is None or not wanted(d.key):
                    continue
                if d.lease and self._expired(d.lease, st.deadlines):
                    self._reap(locate(d.key), d.revision, d.lease)
                    continue
                snap[d.key] = d
        known = st.known
        gone = sorted(set(known) - set(snap))
        top = max(rvs.values(), default=0)
        force = top < st.high
        if force:
            # The API server's store went back in time (etcd restored or wiped, another cluster):
            # equal resourceVersions no longer mean equal objects, so re-emit everything listed.
            log.warning(
                "kube resourceVersion went backwards; re-emitting every key", revision=top, seen=st.high
            )
        st.high = top
        for k in gone:
            emit(Update(k, None, top))
            del known[k]
            st.leased.pop(k, None)
        changed = 0
        for k in sorted(snap):
            d = snap[k]
            if force or known.get(k) != d.revision:
                emit(Update(k, d.value, d.revision))
                known[k] = d.revision
                changed += 1
            if d.lease:
                st.leased[k] = d.lease
            else:
                st.leased.pop(k, None)
        st.reaping.clear()
        log.info("kube listed", prefixes=list(prefixes), kinds=len(kinds), keys=len(snap), changed=changed,
                 gone=len(gone), revision=top)  # fmt: skip
        return rvs

    def _watch(
        self, rvs: dict[Kind, int], prefixes: Sequence[str], st: _SyncState, emit: Emit, stop: threading.Event
    ) -> None:
        q: queue.Queue[tuple[Kind, str, Any] | _Lost] = queue.Queue()
        quit_ = threading.Event()
        watchers = [_Watcher(self, kind, rv, q, quit_) for kind, rv in rvs.items()]
        for w in watchers:
            w.start()
        next_check = 0.0
        try:
            while not stop.is_set() and not self._closed:
                try:
                    item = q.get(timeout=self.poll)
                except queue.Empty:
                    item = None
                if isinstance(item, _Lost):
                    raise item
                if item is not None:
                    self._on_event(*item, prefixes, st, emit)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.poll
                    self._check_expiry(st, emit)
        finally:
            quit_.set()
            for w in watchers:
                w.abort()
            for w in watchers:
                w.join(2)

    def _on_event(self, kind: Kind, etype: str, obj: Any, prefixes: Sequence[str], st: _SyncState,
                  emit: Emit) -> None:  # fmt: skip
        if kind is LEASES:
            name = (obj.get("metadata") or {}).get("name", "")
            st.deadlines[name] = None if etype == "DELETED" else lease_deadline(obj)
            return
        d = decode(kind, obj)
        if d is None or not any(d.key.startswith(p) for p in prefixes):
            return
        st.high = max(st.high, d.revision)
        known = st.known
        if etype == "DELETED":
            st.leased.pop(d.key, None)
            st.reaping.pop(d.key, None)
            if known.pop(d.key, None) is not None:
                emit(Update(d.key, None, d.revision))
            return
        if known.get(d.key, 0) >= d.revision:
            return  # already told by the list
        if d.lease and self._expired_cached(d.lease, st):
            if known.pop(d.key, None) is not None:
                emit(Update(d.key, None, d.revision))
            st.leased.pop(d.key, None)
            self._reap(locate(d.key), d.revision, d.lease)
            return
        known[d.key] = d.revision
        if d.lease:
            st.leased[d.key] = d.lease
        else:
            st.leased.pop(d.key, None)
        emit(Update(d.key, d.value, d.revision))

    def _expired_cached(self, lease: str, st: _SyncState) -> bool:
        """Expired per the watched leases; a lease not seen yet is fetched (its watch may lag)."""
        if lease not in st.deadlines:
            try:
                st.deadlines[lease] = self._fetch_deadline(lease)
            except (Unavailable, Invalid):
                return False
        deadline = st.deadlines[lease]
        return deadline is None or deadline <= self._clock.now()

    def _sweep_leases(self, st: _SyncState) -> None:
        """Delete expired Leases no live key needs (a renewal by `update(ttl=)` orphans the old one).

        Every syncer sweeps; each deletion re-reads the lease and quotes its resourceVersion, so a
        lease renewed meanwhile survives and racing sweepers only meet 404s and 409s.
        """
        now = self._clock.now()
        in_use = set(st.leased.values())
        for name, deadline in list(st.deadlines.items()):
            if deadline is None or deadline > now or name in in_use:
                continue
            try:
                obj = self._req("GET", LEASES.path(self.namespace, name))
                fresh = lease_deadline(obj)
                if fresh is not None and fresh > now:
                    st.deadlines[name] = fresh
                    continue
                rv = str(obj["metadata"]["resourceVersion"])
                body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": rv}}
                self._req("DELETE", LEASES.path(self.namespace, name), body, write=True)
                log.info("kube expired lease deleted", lease=name)
            except (_ApiError, Unavailable, KeyError, TypeError) as e:
                log.debug("kube lease sweep skipped", lease=name, error=str(e))

    def _check_expiry(self, st: _SyncState, emit: Emit) -> None:
        """Delete (only if unchanged) every known key whose lease ran out; the watch reports it."""
        if time.monotonic() >= st.next_sweep:
            st.next_sweep = time.monotonic() + self.sweep_interval
            self._sweep_leases(st)
        now = self._clock.now()
        for key, lease in list(st.leased.items()):
            rev = st.known.get(key)
            if rev is None or st.reaping.get(key) == rev:
                continue
            deadline = st.deadlines.get(lease, -math.inf)
            if deadline is not None and deadline > now:
                continue
            # Expired by the cache, or never seen: ask the server (at most every second per lease),
            # since a renewal may be on its way through the watch.
            if time.monotonic() - st.checked.get(lease, -math.inf) < 1.0 and deadline is not None:
                continue
            st.checked[lease] = time.monotonic()
            try:
                deadline = st.deadlines[lease] = self._fetch_deadline(lease)
            except (Unavailable, Invalid):
                continue
            if deadline is not None and deadline > now:
                continue
            st.reaping[key] = rev
            loc = locate(key)
            body = {
                "kind": "DeleteOptions",
                "apiVersion": "v1",
                "preconditions": {"resourceVersion": str(rev)},
            }
            try:
                self._req("DELETE", loc.kind.path(loc.namespace, loc.name), body, write=True)
                log.info("kube key expired", key=key, lease=lease)
            except _ApiError as e:
                if e.code not in (404, 409):  # those: the watch tells what happened
                    log.warning("kube expired key not deletable; reporting it gone", key=key, error=str(e))
                    st.known.pop(key, None)
                    st.leased.pop(key, None)
                    emit(Update(key, None, rev))
            except Unavailable:
                st.reaping.pop(key, None)
                continue
            self._revoke(lease)


class _Watcher(threading.Thread):
    """One kind's watch stream: feeds (kind, type, object) to the queue, or a `_Lost`."""

    def __init__(
        self, ds: KubeDatastore, kind: Kind, rv: int, q: queue.Queue[Any], quit_: threading.Event
    ) -> None:
        super().__init__(daemon=True, name=f"kube-watch-{kind.plural}")
        self.ds, self.kind, self.rv, self.q, self.quit = ds, kind, rv, q, quit_
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def abort(self) -> None:
        with self._lock:
            conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        try:
            while not self.quit.is_set():
                began = time.monotonic()
                self._once()
                if time.monotonic() - began < 1.0:
                    self.quit.wait(1.0)  # a server (or proxy) ending watches at once: do not spin
        except _Lost as lost:
            if not self.quit.is_set():
                self.q.put(lost)
        except Exception as e:  # noqa: BLE001 - a watcher must report, never die silently
            if not self.quit.is_set():
                self.q.put(_Lost(f"{self.kind.plural}: {e!r}", unavailable=True))
        finally:
            with self._lock:
                conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def _once(self) -> None:
        ds, kind = self.ds, self.kind
        params = {"watch": "1", "resourceVersion": str(self.rv), "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(ds.watch_timeout)}  # fmt: skip
        if kind is LEASES:
            params["labelSelector"] = "app.kubernetes.io/managed-by=pycni"
        path = kind.path(ds.namespace if kind is LEASES else None) + "?" + urllib.parse.urlencode(params)
        try:
            conn = ds._http.connect(ds.watch_timeout + 30)
        except Unavailable as e:
            raise _Lost(str(e), unavailable=True) from None
        with self._lock:
            self._conn = conn
        try:
            if self.quit.is_set():
                return
            conn.request("GET", path, headers=ds._http.headers(False))
            resp = conn.getresponse()
            if resp.status == 410:
                raise _Lost(f"{kind.plural}: 410 Gone at {self.rv}", unavailable=False)
            if resp.status != 200:
                raise _Lost(f"{kind.plural}: watch answered HTTP {resp.status}", unavailable=True)
            for line in _event_lines(resp):
                if self.quit.is_set():
                    break
                if not line.strip():
                    continue
                ev = json.loads(line)
                etype, obj = ev.get("type"), ev.get("object") or {}
                if etype == "ERROR":
                    code = obj.get("code")
                    why = f"{code} {obj.get('reason')}: {obj.get('message')}"
                    raise _Lost(f"{kind.plural}: watch error {why}", unavailable=code != 410)
                rv = int((obj.get("metadata") or {}).get("resourceVersion", self.rv))
                if etype in ("ADDED", "MODIFIED", "DELETED"):
                    self.q.put((kind, etype, obj))
                self.rv = max(self.rv, rv)
        except (OSError, http.client.HTTPException, ValueError) as e:
            if not self.quit.is_set():
                raise _Lost(f"{kind.plural}: watch stream broke: {e!r}", unavailable=True) from None
        finally:
            with self._lock:
                self._conn = None
            conn.close()


def _event_lines(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    """The watch stream's JSON lines; ends on the terminating chunk, raises `_Lost` if cut short.

    http.client's own `readline()` on a chunked body returns b"" both at the final chunk and when
    the connection simply drops (a killed API server), so the framing is read here: only a clean
    end (`timeoutSeconds`) lets the watch resume from its revision; a cut one means relist.
    """
    fp = resp.fp
    if not resp.chunked or fp is None:
        while line := resp.readline():
            yield line
        return
    buf = b""
    while True:
        size_line = fp.readline(1024)
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise _Lost(f"watch stream cut ({size_line[:40]!r})", unavailable=True) from None
        if size == 0:
            while fp.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            resp.close()
            if buf:
                yield buf
            return
        data = fp.read(size)
        if len(data) < size or fp.read(2) != b"\r\n":
            raise _Lost("watch stream cut inside a chunk", unavailable=True)
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line


def _load_yaml_or_json(text: str, path: str) -> dict[str, Any]:
    try:
        cfg = json.loads(text)
    except ValueError:
        try:
            import yaml  # type: ignore[import-untyped]  # comes with the `kube` extra (kubernetes)
        except ImportError:
            raise Invalid(f"kubeconfig {path}: YAML needs PyYAML (pip install 'pycni[kube]') "
                          "or write it as JSON", field="kubeconfig") from None  # fmt: skip
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise Invalid(f"kubeconfig {path}: {e}", field="kubeconfig") from None
    if not isinstance(cfg, dict):
        raise Invalid(f"kubeconfig {path}: not a mapping", field="kubeconfig")
    return cfg
