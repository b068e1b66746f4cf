"""FakeKubeApi: an honest, in-process Kubernetes API server for the subset `KubeDatastore` speaks.

There is no kube-apiserver on the build machine (no Docker, no kind), so this stdlib HTTP server
(a thread on a free loopback port) keeps the semantics a client can observe, as the real server
backed by etcd does:

* one global `resourceVersion` counter for every object of every kind (etcd's revision);
* registered resources only (unknown group/version/plural -> 404 NotFound, like a missing CRD),
  cluster-scoped or namespaced, at the real paths: `/api/v1/nodes/<name>`,
  `/apis/<group>/<version>/<plural>/<name>`, `/apis/<group>/<version>/namespaces/<ns>/<plural>/<name>`,
  and cross-namespace lists at `/apis/<group>/<version>/<plural>`;
* GET, LIST (`metadata.resourceVersion`, `labelSelector` with `=`, `==`, `!=`, `k`, `!k`),
  POST (409 AlreadyExists, 422 Invalid for a bad name), PUT (404 NotFound for an absent object,
  422 when `metadata.resourceVersion` is missing: custom resources allow no unconditional update,
  409 Conflict when it is stale; a no-op PUT keeps the resourceVersion, as the real server does),
  DELETE (`preconditions.resourceVersion`/`uid` -> 409 Conflict);
* WATCH (`?watch=1&resourceVersion=N`): chunked JSON lines `ADDED`/`MODIFIED`/`DELETED`, `BOOKMARK`
  every `bookmark_interval` when `allowWatchBookmarks=true`, `timeoutSeconds` ends the stream
  cleanly; no resourceVersion (or "0") starts with synthetic ADDED events for what exists;
* `compact()` drops the event history: a watch that starts (or is still) behind it gets
  `{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}` and the stream ends
  (or, with `watch_gone_as_http=True`, the watch request itself answers HTTP 410 Gone), so the
  client's relist path is exercised;
* `restart(down_for=)` drops every connection (streams end without their final chunk, as when the
  process dies), keeps the objects and, like a restarted apiserver whose watch cache starts at the
  current revision, compacts the history.

Optional https (`tls=`) and bearer-token checking (`token=`, 401 otherwise) exercise the client's
in-cluster and kubeconfig paths. What it does not do: RBAC, admission, schemas and pruning,
finalizers, generateName, PATCH, subresources, server-side apply, field selectors, pagination;
and it returns objects with their keys in the order written, where the real server sorts them.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class ApiResource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


CALICO_GROUP = "crd.projectcalico.org"

# Calico's CRDs (crd.projectcalico.org/v1) as KubeDatastore maps them, pycni's KeyValue, and the
# core kinds a node agent touches.
_CALICO = {
    "bgpconfigurations": "BGPConfiguration", "bgpfilters": "BGPFilter", "bgppeers": "BGPPeer",
    "blockaffinities": "BlockAffinity", "caliconodestatuses": "CalicoNodeStatus",
    "clusterinformations": "ClusterInformation", "felixconfigurations": "FelixConfiguration",
    "globalnetworkpolicies": "GlobalNetworkPolicy", "globalnetworksets": "GlobalNetworkSet",
    "hostendpoints": "HostEndpoint", "ipamblocks": "IPAMBlock", "ipamconfigs": "IPAMConfig",
    "ipamhandles": "IPAMHandle", "ippools": "IPPool", "ipreservations": "IPReservation",
    "kubecontrollersconfigurations": "KubeControllersConfiguration", "nodes": "Node", "tiers": "Tier",
}  # fmt: skip
_CALICO_NAMESPACED = {
    "networkpolicies": "NetworkPolicy", "networksets": "NetworkSet", "workloadendpoints": "WorkloadEndpoint",
}  # fmt: skip

DEFAULT_RESOURCES: tuple[ApiResource, ...] = (
    ApiResource("", "v1", "nodes", "Node"),
    ApiResource("", "v1", "namespaces", "Namespace"),
    ApiResource("", "v1", "pods", "Pod", namespaced=True),
    ApiResource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True),
    ApiResource("pycni.dev", "v1", "keyvalues", "KeyValue"),
    *(ApiResource(CALICO_GROUP, "v1", p, k) for p, k in _CALICO.items()),
    *(ApiResource(CALICO_GROUP, "v1", p, k, namespaced=True) for p, k in _CALICO_NAMESPACED.items()),
)


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    """A `metav1.Status` failure body, as the API server sends it."""
    out: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }  # fmt: skip
    if details:
        out["details"] = details
    return out


class _Fail(Exception):
    def __init__(self, code: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.body = status(code, reason, message, **details)
        self.code = code


class _Killed(Exception):
    """A watch cut off by `stop()`: the stream must end without its terminating chunk."""


@dataclass(frozen=True)
class _Event:
    rv: int
    type: str
    res: ApiResource
    namespace: str
    obj: dict[str, Any]


def _selector(text: str) -> list[tuple[str, str, str]]:
    """`a=b,c!=d,e,!f` -> [(op, key, value)]; raises _Fail(400) on anything else."""
    out: list[tuple[str, str, str]] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            out.append(("!=", k.strip(), v.strip()))
        elif "==" in term or "=" in term:
            k, v = re.split("==?", term, maxsplit=1)
            out.append(("=", k.strip(), v.strip()))
        elif term.startswith("!"):
            out.append(("!", term[1:].strip(), ""))
        elif re.fullmatch(r"[A-Za-z0-9./_-]+", term):
            out.append(("?", term, ""))
        else:
            raise _Fail(400, "BadRequest", f"unable to parse requirement: {term!r}")
    return out


def _matches(obj: dict[str, Any], sel: list[tuple[str, str, str]]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for op, k, v in sel:
        if op == "=" and labels.get(k) != v:
            return False
        if op == "!=" and labels.get(k) == v:
            return False
        if op == "?" and k not in labels:
            return False
        if op == "!" and k in labels:
            return False
    return True


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FakeKubeApi:
    """The fake API server; `url` is its base URL (plain http on loopback)."""

    def __init__(
        self,
        resources: Iterable[ApiResource] = DEFAULT_RESOURCES,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bookmark_interval: float = 1.0,
        watch_gone_as_http: bool = False,
        tls: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> None:
        """`tls`: serve https with this server context; `token`: demand `Authorization: Bearer <token>`."""
        self.resources = {(r.group, r.version, r.plural): r for r in resources}
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.watch_gone_as_http = watch_gone_as_http
        self.tls = tls
        self.token = token
        self._cond = threading.Condition()
        self._objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}  # (group, plural, ns, name)
        self._rv = 1
        self._history: list[_Event] = []
        self._compacted = 1
        self._epoch = 0  # bumped by stop(): live watch loops end
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.requests: list[tuple[str, str]] = []  # (method, path) log, for tests
        self.connections = 0  # connections accepted (keep-alive reuse shows as few)

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FakeKubeApi:
        api = self

        class Handler(_Handler):
            fake = api

        srv = _Server((self.host, self.port), Handler)
        srv.daemon_threads = True
        if self.tls is not None:
            srv.socket = self.tls.wrap_socket(srv.socket, server_side=True)
        self.port = int(srv.server_address[1])
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=f"fake-kube-api:{self.port}")  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        srv, self._server = self._server, None
        if srv is None:
            return
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()
        srv.shutdown()
        srv.server_close()
        for s in list(self._conns):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    def restart(self, down_for: float = 0.0) -> None:
        """Drop every connection, stay down `down_for` s, come back on the same port, same objects.

        Like a restarted kube-apiserver, whose watch cache starts at the current revision, the
        history is compacted: a client watching from an older revision must relist.
        """
        self.stop()
        time.sleep(down_for)
        self.compact()
        self.start()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> FakeKubeApi:
        return self if self.running else self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def write_kubeconfig(self, path: str, *, token: str = "t0ken") -> str:
        """A JSON kubeconfig (context `fake`) for this server with a bearer token; returns `path`."""
        with open(path, "w") as f:
            json.dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "contexts": [{"name": "fake", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": {"server": self.url}}],
                "users": [{"name": "u", "user": {"token": token}}],
            }, f)  # fmt: skip
        return path

    # -- state, for tests ------------------------------------------------------------------------
    def revision(self) -> int:
        with self._cond:
            return self._rv

    def compact(self) -> None:
        """Drop the event history: watches behind the current revision get 410 Gone."""
        with self._cond:
            self._compacted = self._rv
            self._history.clear()
            self._cond.notify_all()

    def objects(self, group: str, plural: str, namespace: str = "") -> list[dict[str, Any]]:
        """Deep copies of the stored objects of one resource, sorted by (namespace, name)."""
        with self._cond:
            return [copy.deepcopy(o) for (g, p, ns, _), o in sorted(self._objects.items())
                    if g == group and p == plural and (not namespace or ns == namespace)]  # fmt: skip

    # -- the API, called by the handler under no lock ----------------------------------------------
    def _resolve(self, path: str) -> tuple[ApiResource, str | None, str | None]:
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if len(parts) >= 2 and parts[0] == "api" and parts[1] == "v1":
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _Fail(404, "NotFound", "the server could not find the requested resource")
        ns: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 2:
            raise _Fail(404, "NotFound", "the server could not find the requested resource")
        res = self.resources.get((group, version, rest[0]))
        name = rest[1] if len(rest) == 2 else None
        if res is None or (ns is not None and not res.namespaced) or (res.namespaced and name and ns is None):
            raise _Fail(404, "NotFound", "the server could not find the requested resource")
        return res, ns, name

    def _not_found(self, res: ApiResource, name: str) -> _Fail:
        return _Fail(404, "NotFound", f'{res.plural}.{res.group or "core"} "{name}" not found',
                     name=name, group=res.group, kind=res.plural)  # fmt: skip

    def _bump(self, etype: str, res: ApiResource, ns: str, obj: dict[str, Any]) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._history.append(_Event(self._rv, etype, res, ns, copy.deepcopy(obj)))
        self._cond.notify_all()

    def get(self, res: ApiResource, ns: str | None, name: str) -> dict[str, Any]:
        with self._cond:
            obj = self._objects.get((res.group, res.plural, ns or "", name))
            if obj is None:
                raise self._not_found(res, name)
            return copy.deepcopy(obj)

    def list(self, res: ApiResource, ns: str | None, selector: str) -> dict[str, Any]:
        sel = _selector(selector)
        with self._cond:
            items = [
                copy.deepcopy(o)
                for (g, p, n, _), o in sorted(self._objects.items())
                if g == res.group and p == res.plural and (ns is None or n == ns) and _matches(o, sel)
            ]
            return {"apiVersion": res.api_version, "kind": f"{res.kind}List",
                    "metadata": {"resourceVersion": str(self._rv)}, "items": items}  # fmt: skip

    def _check_body(self, res: ApiResource, ns: str | None, body: Any, name: str | None) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise _Fail(400, "BadRequest", "the body of the request was not a JSON object")
        if (
            body.get("apiVersion", res.api_version) != res.api_version
            or body.get("kind", res.kind) != res.kind
        ):
            raise _Fail(400, "BadRequest", f"the API version or kind in the body does not match {res.kind}")
        md = body.setdefault("metadata", {})
        body["apiVersion"], body["kind"] = res.api_version, res.kind
        if name is not None and md.get("name", name) != name:
            raise _Fail(400, "BadRequest", "the name of the object does not match the name on the URL")
        if name is not None:
            md["name"] = name
        n = md.get("name")
        if not isinstance(n, str) or not n or len(n) > 253 or not _NAME_RE.match(n):
            raise _Fail(422, "Invalid", f"{res.kind} {n!r} is invalid: metadata.name: Invalid value: "
                        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                        "characters, '-' or '.'", name=str(n), kind=res.kind)  # fmt: skip
        if res.namespaced:
            if md.get("namespace", ns) != ns:
                raise _Fail(
                    400, "BadRequest", "the namespace of the object does not match the namespace on the URL"
                )
            md["namespace"] = ns
        else:
            md.pop("namespace", None)
        for lbl in (md.get("labels") or {}, md.get("annotations") or {}):
            if not isinstance(lbl, dict) or not all(isinstance(v, str) for v in lbl.values()):
                raise _Fail(400, "BadRequest", "labels and annotations must be string maps")
        return body

    def create(self, res: ApiResource, ns: str | None, body: Any) -> dict[str, Any]:
        if res.namespaced and ns is None:
            raise _Fail(405, "MethodNotAllowed", "create needs a namespace")
        obj = self._check_body(res, ns, body, None)
        md = obj["metadata"]
        if md.get("resourceVersion"):
            raise _Fail(500, "InternalError", "resourceVersion should not be set on objects to be created")
        with self._cond:
            key = (res.group, res.plural, ns or "", md["name"])
            if key in self._objects:
                what = f'{res.plural}.{res.group or "core"} "{md["name"]}"'
                raise _Fail(409, "AlreadyExists", f"{what} already exists",
                            name=md["name"], group=res.group, kind=res.plural)  # fmt: skip
            md["uid"] = str(uuid.uuid4())
            md["creationTimestamp"] = _now_rfc3339()
            md["generation"] = 1
            self._objects[key] = obj
            self._bump("ADDED", res, ns or "", obj)
            return copy.deepcopy(obj)

    def replace(self, res: ApiResource, ns: str | None, name: str, body: Any) -> dict[str, Any]:
        obj = self._check_body(res, ns, body, name)
        md = obj["metadata"]
        with self._cond:
            key = (res.group, res.plural, ns or "", name)
            old = self._objects.get(key)
            if old is None:
                raise self._not_found(res, name)
            rv = md.get("resourceVersion")
            if not rv:
                raise _Fail(422, "Invalid", f'{res.kind} "{name}" is invalid: metadata.resourceVersion: '
                            "Invalid value: 0x0: must be specified for an update",
                            name=name, kind=res.kind)  # fmt: skip
            if str(rv) != old["metadata"]["resourceVersion"]:
                what = f'{res.plural}.{res.group} "{name}"'
                raise _Fail(409, "Conflict", f"Operation cannot be fulfilled on {what}: the object has been "
                            "modified; please apply your changes to the latest version and try again",
                            name=name, group=res.group, kind=res.plural)  # fmt: skip
            omd = old["metadata"]
            for f in ("uid", "creationTimestamp", "generation"):
                md[f] = omd[f]
            if obj == old:
                return copy.deepcopy(old)  # no-op: the real server writes nothing and keeps the RV
            if obj.get("spec") != old.get("spec"):
                md["generation"] = omd["generation"] + 1
            self._objects[key] = obj
            self._bump("MODIFIED", res, ns or "", obj)
            return copy.deepcopy(obj)

    def delete(self, res: ApiResource, ns: str | None, name: str, body: Any) -> dict[str, Any]:
        pre = (body or {}).get("preconditions") or {} if isinstance(body, dict) else {}
        with self._cond:
            key = (res.group, res.plural, ns or "", name)
            old = self._objects.get(key)
            if old is None:
                raise self._not_found(res, name)
            omd = old["metadata"]
            for field, have in (("resourceVersion", omd["resourceVersion"]), ("uid", omd["uid"])):
                want = pre.get(field)
                if want is not None and str(want) != have:
                    raise _Fail(409, "Conflict", f"Precondition failed: {field} in precondition: {want}, "
                                f"{field} in object meta: {have}", name=name, group=res.group,
                                kind=res.plural)  # fmt: skip
            del self._objects[key]
            self._bump("DELETED", res, ns or "", old)
            return copy.deepcopy(old)

    def watch(
        self, res: ApiResource, ns: str | None, q: dict[str, str]
    ) -> Generator[dict[str, Any] | None, None, None]:
        """Yields watch events; None means "nothing for a while" (the handler checks its socket)."""
        sel = _selector(q.get("labelSelector", ""))
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        deadline = time.monotonic() + float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
        rv = q.get("resourceVersion", "")

        def wanted(e: _Event) -> bool:
            return e.res == res and (ns is None or e.namespace == ns) and _matches(e.obj, sel)

        with self._cond:
            epoch = self._epoch
            if rv in ("", "0"):
                since = self._rv
                initial = [
                    copy.deepcopy(o)
                    for (g, p, n, _), o in sorted(self._objects.items())
                    if g == res.group and p == res.plural and (ns is None or n == ns) and _matches(o, sel)
                ]
            else:
                try:
                    since = int(rv)
                except ValueError:
                    raise _Fail(400, "BadRequest", f"invalid resourceVersion {rv!r}") from None
                initial = []
                if since < self._compacted:
                    raise _Fail(410, "Expired", f"too old resource version: {since} ({self._compacted})")
        for obj in initial:
            yield {"type": "ADDED", "object": obj}
        last_sent = time.monotonic()
        while True:
            with self._cond:
                if self._epoch != epoch:
                    raise _Killed  # the server is going down: no final chunk, as when a process dies
                if since < self._compacted:
                    yield {"type": "ERROR", "object": status(410, "Expired",
                           f"too old resource version: {since} ({self._compacted})")}  # fmt: skip
                    return
                events = [e for e in self._history if e.rv > since]
                if not events:
                    self._cond.wait(0.05)
                    events = [e for e in self._history if e.rv > since]
                if events:
                    since = events[-1].rv
                elif since < self._rv:  # writes happened that history no longer holds
                    continue
                current = since
            out = [{"type": e.type, "object": copy.deepcopy(e.obj)} for e in events if wanted(e)]
            yield from out
            now = time.monotonic()
            if out:
                last_sent = now
            elif bookmarks and now - last_sent >= self.bookmark_interval:
                last_sent = now
                yield {"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version,
                       "metadata": {"resourceVersion": str(current)}}}  # fmt: skip
            else:
                yield None
            if deadline is not None and now >= deadline:
                return


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog of 5 drops SYNs when 8 clients connect at once
    allow_reuse_address = True


def _empty() -> Generator[dict[str, Any] | None, None, None]:
    yield from ()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubeApi
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def setup(self) -> None:
        super().setup()
        self.fake.connections += 1
        self.fake._conns.add(self.connection)

    def finish(self) -> None:
        self.fake._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        if not n:
            return None
        raw = self.rfile.read(n)
        try:
            return json.loads(raw)
        except ValueError:
            raise _Fail(400, "BadRequest", "the body of the request was not valid JSON") from None

    def _handle(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        self.fake.requests.append((method, url.path))
        try:
            body = self._body() if method in ("POST", "PUT", "DELETE") else None
            want = self.fake.token
            if want is not None and self.headers.get("Authorization") != f"Bearer {want}":
                raise _Fail(401, "Unauthorized", "Unauthorized")
            res, ns, name = self.fake._resolve(url.path)
            if method == "GET" and name is None and q.get("watch") in ("1", "true"):
                self._watch(res, ns, q)
                return
            if method == "GET":
                out = (
                    self.fake.get(res, ns, name)
                    if name
                    else self.fake.list(res, ns, q.get("labelSelector", ""))
                )
                self._send(200, out)
            elif method == "POST" and name is None:
                self._send(201, self.fake.create(res, ns, body))
            elif method == "PUT" and name is not None:
                self._send(200, self.fake.replace(res, ns, name, body))
            elif method == "DELETE" and name is not None:
                self._send(200, self.fake.delete(res, ns, name, body))
            else:
                raise _Fail(405, "MethodNotAllowed", f"{method} is not supported here")
        except _Fail as f:
            self._send(f.code, f.body)

    def _watch(self, res: ApiResource, ns: str | None, q: dict[str, str]) -> None:
        events = self.fake.watch(res, ns, q)
        try:
            first = next(events)
        except _Fail as f:
            if f.code != 410 or self.fake.watch_gone_as_http:
                self._send(f.code, f.body)
                return
            first = {"type": "ERROR", "object": f.body}
            events = _empty()
        except StopIteration:
            first = None
        except _Killed:
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            for e in itertools.chain([first], events):
                if e is None:
                    if self._client_gone():
                        break
                    continue
                data = json.dumps(e).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            else:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                return  # a complete response: the connection stays open for the next request
        except (OSError, _Killed):
            pass
        finally:
            events.close()
        self.close_connection = True

    def _client_gone(self) -> bool:
        """True once the client closed its end (readable with nothing to read)."""
        if isinstance(self.connection, ssl.SSLSocket):
            return False  # no MSG_PEEK through TLS: a gone client shows when the next bookmark fails
        try:
            ready, _, _ = select.select([self.connection], [], [], 0)
            return bool(ready) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")
