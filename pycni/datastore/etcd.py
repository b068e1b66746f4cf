"""EtcdDatastore: the `Datastore` seam on etcd v3 (3.4+), through etcd-sdk-python (`pyetcd`).

This is the only module that imports `pyetcd` (or grpc). It maps the seam onto etcd exactly as
flannel and Calico use it, so their tools read what we write:

* `create` is a txn `If(create_revision(key) == 0) Then(Put)`; a lost race raises `AlreadyExists`.
* `update(revision=)` / `delete(revision=)` are txns on `mod_revision(key) == revision`; an absent
  key compares as revision 0, so it raises `CasConflict` too.
* `ttl=` grants a fresh lease per write (flannel's Grant + Put; the lease id is `Versioned.lease`);
  if the guarded write loses, the lease is revoked at once. `refresh(lease)` is one KeepAlive.
  Gotcha kept from python-etcd3: `refresh_lease()` is a *generator*; unless it is consumed nothing
  is sent, so we consume it.
* `sync()` is the syncer contract of `pycni.datastore`: list (pinning every prefix to the first
  list's header revision), emit, IN_SYNC, then one prefix watch per prefix from `revision + 1` on a
  single gRPC stream. A lost watch (ErrCompacted, the stream breaking because etcd restarted or the
  connection dropped) emits RESYNC, retries with capped back-off until etcd answers, relists,
  synthesises `Update(key, None, rev)` for keys that vanished meanwhile, re-emits only keys whose
  mod revision changed, and says IN_SYNC again.

Client quirks handled here (read in the client's source; the last two measured with SIGSTOP/restart):
* `pyetcd.client()` builds an `Endpoint` with `time_retry=300`: after a single UNAVAILABLE every call
  raises `ValueError('Trying to use a failed node')` for five minutes. We build our endpoints with
  `time_retry=0` and do failover ourselves, trying the endpoints in the order given (sticky on the
  last one that answered). Reads fail over on any connection error; writes only when provably
  unsent (see `_call`), since replaying an applied create/CAS elsewhere would misreport it.
* gRPC's default reconnect back-off grows to 120 s, so a client would stay "unavailable" long after
  etcd came back; we cap it at 2 s. Keepalive pings (every `keepalive` s, timing out after half
  that) break a watch stream whose peer froze or vanished without a FIN.
"""

from __future__ import annotations

import math
import queue
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pyetcd
import pyetcd.events
import pyetcd.exceptions
import pyetcd.utils
import structlog

from pycni.datastore import Emit, SyncStatus, Update, Versioned
from pycni.errors import AlreadyExists, CasConflict, Invalid, LeaseExpired, Unavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0

DEFAULT_KEEPALIVE = 10.0  # etcd rejects pings more frequent than --grpc-keepalive-min-time (5 s)


def _grpc_options(keepalive: float) -> list[tuple[str, int]]:
    return [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        # A silently dead peer (host gone, etcd frozen) breaks the watch stream after ~1.5 x keepalive.
        ("grpc.keepalive_time_ms", int(keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive * 500)),
        # grpcio >= 1.5x times pings out by this one; without it a frozen peer went unnoticed
        # for a minute even with keepalive_timeout_ms set (measured with grpcio 1.85 + SIGSTOP).
        ("grpc.http2.ping_timeout_ms", int(keepalive * 500)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pyetcd.exceptions.ConnectionFailedError,
    pyetcd.exceptions.ConnectionTimeoutError,
    pyetcd.exceptions.NoServerAvailableError,
    pyetcd.exceptions.InternalServerError,
)


def parse_endpoints(endpoints: Sequence[str] | str) -> list[tuple[str, int]]:
    """`"http://10.0.0.1:2379,127.0.0.1:2379"` or a list of them -> [(host, port), ...].

    Only plain http is supported (as in the labs); https raises `Invalid` rather than silently
    talking cleartext to a TLS port.
    """
    items = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    out: list[tuple[str, int]] = []
    for item in items:
        for raw in item.split(","):
            raw = raw.strip()
            if not raw:
                continue
            url = urllib.parse.urlsplit(raw if "://" in raw else "http://" + raw)
            if url.scheme != "http":
                raise Invalid(f"etcd endpoint {raw!r}: only http:// is supported", field="etcd_endpoints")
            try:
                port = url.port or 2379
            except ValueError as e:
                raise Invalid(f"etcd endpoint {raw!r}: {e}", field="etcd_endpoints") from None
            if not url.hostname:
                raise Invalid(f"etcd endpoint {raw!r}: no host", field="etcd_endpoints")
            out.append((url.hostname, port))
    if not out:
        raise Invalid("no etcd endpoints given", field="etcd_endpoints")
    return out


def _check_key(key: str) -> None:
    if not key:
        raise Invalid("empty etcd key", field="key")


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def _span(prefix: str) -> tuple[bytes, bytes]:
    """The etcd [key, range_end) of a prefix; the empty prefix is the whole keyspace ("\0", "\0")."""
    if not prefix:
        return b"\0", b"\0"
    key = prefix.encode()
    return key, bytes(pyetcd.utils.prefix_range_end(key))


class _Lost(Exception):
    """The watch is gone; `reason` says why (logged), `unavailable` whether to back off."""

    def __init__(self, reason: str, *, unavailable: bool) -> None:
        super().__init__(reason)
        self.unavailable = unavailable


@dataclass
class _SyncState:
    """What one `sync` call has told its consumer: key -> mod revision, and the newest revision seen."""

    known: dict[str, int] = field(default_factory=dict)
    high: int = 0


class EtcdDatastore:
    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        keepalive: float = DEFAULT_KEEPALIVE,
    ) -> None:
        """`timeout` bounds every RPC; `keepalive` is the gRPC ping interval (dead-peer detection)."""
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self._clients: list[Any] = []
        for host, port in self.endpoints:
            ep = pyetcd.Endpoint(host, port, secure=False, time_retry=0, opts=_grpc_options(keepalive))
            self._clients.append(pyetcd.MultiEndpointEtcd3Client(endpoints=[ep], timeout=timeout))
        self._current = 0
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        eps = ",".join(f"{h}:{p}" for h, p in self.endpoints)
        return f"EtcdDatastore({eps})"

    # -- plumbing ------------------------------------------------------------------------------
    def _call(self, fn: Callable[[Any], T], what: str, *, write: bool = False) -> T:
        """Run `fn(client)` on the current endpoint, failing over in order; Unavailable if none.

        Reads fail over on any connection error. A write fails over only when the request provably
        never left (connection refused); after a timeout or a dropped stream it may have been
        applied, and replaying a create or CAS elsewhere would turn our own success into
        AlreadyExists / CasConflict, so it raises Unavailable ("outcome unknown") for the caller
        to re-read.
        """
        if self._closed:
            raise Unavailable(f"etcd {what}: client closed")
        with self._lock:
            start = self._current
        n = len(self._clients)
        last: BaseException | None = None
        for i in range(n):
            idx = (start + i) % n
            try:
                result = fn(self._clients[idx])
            except (grpc.RpcError, *_CONNECTION_ERRORS) as e:
                last = e
                log.debug("etcd endpoint failed", op=what, endpoint=self._label(idx), error=_why(e))
                if write and not _never_sent(e):
                    raise Unavailable(f"etcd {what}: outcome unknown ({_why(e)})") from None
                continue
            if idx != start:
                with self._lock:
                    self._current = idx
                log.info("etcd endpoint switched", endpoint=self._label(idx))
            return result
        raise Unavailable(f"etcd {what}: no endpoint answered ({_why(last)})") from None

    def _label(self, idx: int) -> str:
        h, p = self.endpoints[idx]
        return f"{h}:{p}"

    def _grant(self, c: Any, ttl: float | None) -> int:
        if ttl is None:
            return 0
        if ttl <= 0:
            raise Invalid(f"ttl must be positive, got {ttl}", field="ttl")
        return int(c.lease(max(1, math.ceil(ttl))).id)

    def _revoke_quietly(self, c: Any, lease: int) -> None:
        if lease:
            try:
                c.revoke_lease(lease)
            except (grpc.RpcError, *_CONNECTION_ERRORS):
                pass  # it expires by itself

    def _guarded_put(self, key: str, value: str, ttl: float | None, compare: Callable[[Any], Any]) -> Any:
        """Txn If(compare) Then(Put key[, fresh lease]) -> (succeeded, Versioned | None)."""

        def op(c: Any) -> tuple[bool, Versioned | None]:
            lease = self._grant(c, ttl)
            try:
                ok, responses = c.transaction(
                    compare=[compare(c)], success=[c.transactions.put(key, value, lease=lease)], failure=[]
                )
            except BaseException:
                self._revoke_quietly(c, lease)
                raise
            if not ok:
                self._revoke_quietly(c, lease)
                return False, None
            rev = int(responses[0].response_put.header.revision)
            return True, Versioned(key, value, rev, lease)

        return self._call(op, "txn put", write=True)

    # -- Datastore -----------------------------------------------------------------------------
    def get(self, key: str) -> Versioned | None:
        _check_key(key)
        resp = self._call(lambda c: c.get_response(key), "get")
        if resp.count < 1:
            return None
        kv = resp.kvs[0]
        return Versioned(key, _text(kv.value), int(kv.mod_revision), int(kv.lease))

    def _range(self, prefix: str, revision: int | None = None) -> tuple[list[Versioned], int]:
        resp = self._call(
            lambda c: c.get_range_response(*_span(prefix), sort_order="ascend", revision=revision), "list"
        )
        items = [
            Versioned(_text(kv.key), _text(kv.value), int(kv.mod_revision), int(kv.lease)) for kv in resp.kvs
        ]
        return items, int(resp.header.revision)

    def list(self, prefix: str) -> list[Versioned]:
        return self._range(prefix)[0]

    def create(self, key: str, value: str, *, ttl: float | None = None) -> Versioned:
        _check_key(key)
        ok, v = self._guarded_put(key, value, ttl, lambda c: c.transactions.create(key) == 0)
        if not ok:
            raise AlreadyExists(key)
        log.info("etcd key created", key=key, revision=v.revision, lease=v.lease)
        return v  # type: ignore[no-any-return]

    def update(self, key: str, value: str, *, revision: int, ttl: float | None = None) -> Versioned:
        _check_key(key)
        ok, v = self._guarded_put(key, value, ttl, lambda c: c.transactions.mod(key) == revision)
        if not ok:
            raise CasConflict(f"{key}: revision {revision} is not current")
        log.info("etcd key updated", key=key, revision=v.revision, lease=v.lease)
        return v  # type: ignore[no-any-return]

    def put(self, key: str, value: str, *, ttl: float | None = None) -> Versioned:
        _check_key(key)
        def op(c: Any) -> Versioned:
            lease = self._grant(c, ttl)
            try:
                resp = c.put(key, value, lease=lease)
            except BaseException:
                self._revoke_quietly(c, lease)
                raise
            return Versioned(key, value, int(resp.header.revision), lease)

        v = self._call(op, "put", write=True)
        log.info("etcd key put", key=key, revision=v.revision, lease=v.lease)
        return v

    def delete(self, key: str, *, revision: int | None = None) -> bool:
        _check_key(key)
        if revision is None:
            deleted = bool(self._call(lambda c: c.delete(key), "delete", write=True))
            if deleted:
                log.info("etcd key deleted", key=key)
            return deleted

        def op(c: Any) -> bool:
            ok, _ = c.transaction(
                compare=[c.transactions.mod(key) == revision],
                success=[c.transactions.delete(key)],
                failure=[],
            )
            return bool(ok)

        if not self._call(op, "txn delete", write=True):
            raise CasConflict(f"{key}: revision {revision} is not current")
        log.info("etcd key deleted", key=key, revision=revision)
        return True

    def refresh(self, lease: int) -> float:
        # refresh_lease() is a generator: list() sends the KeepAlive and reads its reply.
        replies = self._call(lambda c: list(c.refresh_lease(lease)), "lease keepalive")
        ttl = int(replies[0].TTL) if replies else 0
        if ttl <= 0:
            raise LeaseExpired(f"lease {lease:x} not found")
        log.debug("etcd lease refreshed", lease=lease, ttl=ttl)
        return float(ttl)

    def revision(self) -> int:
        """The store's current revision (the header of an empty range)."""
        resp = self._call(lambda c: c.get_response("\0", count_only=True), "revision")
        return int(resp.header.revision)

    def compact(self, revision: int | None = None) -> int:
        """Compact history up to `revision` (default: now); live watchers must relist."""
        rev = revision if revision is not None else self.revision()
        self._call(lambda c: c.compact(rev, physical=True), "compact")
        log.info("etcd compacted", revision=rev)
        return rev

    def close(self) -> None:
        self._closed = True
        for c in self._clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - closing a dead channel must not raise
                pass

    # -- sync ----------------------------------------------------------------------------------
    def sync(
        self,
        prefixes: Sequence[str],
        emit: Emit,
        stop: threading.Event,
        *,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        """List, IN_SYNC, watch; on a lost watch RESYNC, relist (with back-off), IN_SYNC again."""
        st = _SyncState()
        backoff = min_backoff
        emit(SyncStatus.WAIT_FOR_DATASTORE)
        while not stop.is_set() and not self._closed:
            try:
                rev = self._relist(prefixes, st, emit)
            except Unavailable as e:
                log.warning("etcd list failed; retrying", error=str(e), retry_in=round(backoff, 2))
                stop.wait(backoff)
                backoff = min(backoff * 2, max_backoff)
                continue
            backoff = min_backoff
            emit(SyncStatus.IN_SYNC)
            try:
                self._watch(prefixes, rev, st, emit, stop)
                return  # stop was set
            except _Lost as lost:
                if self._closed:
                    return
                log.warning("etcd watch lost; relisting", reason=str(lost))
                emit(SyncStatus.RESYNC)
                if lost.unavailable:
                    stop.wait(backoff)
                    backoff = min(backoff * 2, max_backoff)

    def _relist(self, prefixes: Sequence[str], st: _SyncState, emit: Emit) -> int:
        snap: dict[str, Versioned] = {}
        rev: int | None = None
        for p in prefixes:
            items, r = self._range(p, rev)
            rev = r if rev is None else rev
            for v in items:
                snap[v.key] = v
        if rev is None:  # no prefixes: still learn a revision so the watch has a start
            rev = self.revision()
        known = st.known
        force = rev < st.high
        if force:
            # The store went back in time (restored from a backup, wiped, or a different cluster):
            # equal revisions no longer mean equal values, so re-emit everything listed.
            log.warning("etcd revision went backwards; re-emitting every key", revision=rev, seen=st.high)
        st.high = rev
        gone = sorted(set(known) - set(snap))
        for k in gone:
            emit(Update(k, None, rev))
            del known[k]
        changed = 0
        for k in sorted(snap):
            v = snap[k]
            if force or known.get(k) != v.revision:
                emit(Update(k, v.value, v.revision))
                known[k] = v.revision
                changed += 1
        log.info("etcd listed", prefixes=list(prefixes), keys=len(snap), changed=changed, gone=len(gone),
                 revision=rev)  # fmt: skip
        return rev

    def _watch(
        self, prefixes: Sequence[str], rev: int, st: _SyncState, emit: Emit, stop: threading.Event
    ) -> None:
        """Watch from rev+1 until `stop` (returns) or the watch is lost (raises `_Lost`)."""
        known = st.known
        with self._lock:
            client = self._clients[self._current]
        q: queue.Queue[Any] = queue.Queue()
        ids: list[Any] = []
        try:
            for p in prefixes:
                try:
                    start, end = _span(p)
                    ids.append(client.add_watch_callback(start, q.put, range_end=end, start_revision=rev + 1))
                except pyetcd.exceptions.RevisionCompactedError as e:
                    raise _Lost(f"compacted at {e.compacted_revision}", unavailable=False) from None
                except (grpc.RpcError, *_CONNECTION_ERRORS, pyetcd.exceptions.WatchTimedOut) as e:
                    raise _Lost(f"watch not created: {_why(e)}", unavailable=True) from None
            log.debug("etcd watching", prefixes=list(prefixes), start_revision=rev + 1)
            while not stop.is_set():
                try:
                    item = q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if isinstance(item, pyetcd.exceptions.RevisionCompactedError):
                    raise _Lost(f"compacted at {item.compacted_revision}", unavailable=False)
                if isinstance(item, BaseException) or item is None:
                    raise _Lost(f"watch stream broke: {_why(item)}", unavailable=True)
                for ev in item.events:
                    key = _text(ev.key)
                    mod = int(ev.mod_revision)
                    st.high = max(st.high, mod)
                    if isinstance(ev, pyetcd.events.DeleteEvent):
                        if known.pop(key, None) is None:
                            continue  # never seen (or already synthesised): no duplicate delete
                        emit(Update(key, None, mod))
                    else:
                        if known.get(key, 0) >= mod:
                            continue  # already emitted by the list
                        known[key] = mod
                        emit(Update(key, _text(ev.value), mod))
        finally:
            for wid in ids:
                try:
                    client.cancel_watch(wid)
                except Exception:  # noqa: BLE001 - the stream may already be gone
                    pass


def _grpc_cause(e: BaseException | None) -> grpc.RpcError | None:
    """The gRPC error behind `e` (pyetcd re-raises its own exception class inside the handler)."""
    while e is not None:
        if isinstance(e, grpc.RpcError):
            return e
        e = e.__cause__ or e.__context__
    return None


def _never_sent(e: BaseException) -> bool:
    if isinstance(e, pyetcd.exceptions.NoServerAvailableError):
        return True
    cause = _grpc_cause(e)
    if cause is None or not hasattr(cause, "code"):
        return False
    details = (cause.details() or "").lower() if hasattr(cause, "details") else ""
    return bool(
        cause.code() == grpc.StatusCode.UNAVAILABLE
        and ("failed to connect" in details or "connection refused" in details)
    )


def _why(e: BaseException | None) -> str:
    cause = _grpc_cause(e)
    if cause is not None and hasattr(cause, "code"):
        code = cause.code()
        details = cause.details() if hasattr(cause, "details") else ""
        return f"{getattr(code, 'name', code)}: {details}"
    return f"{type(e).__name__}: {e}" if e is not None else "unknown"
