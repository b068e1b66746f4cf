"""The CNI fast path's resident half: a unix-socket server inside the node agent.

kubelet starts the plugin binary once per pod operation; a Python process with pyroute2, structlog
and an etcd client loaded needs ~0.5 s before doing anything. So the binary is a stdlib-only front
(`pycni.cni.front`) and the work happens here, in a process that is already warm: felix hosts a
`CniServer` in calico mode, flanneld in flannel mode (each is always running on a node of its mode
and already holds the datastore connection); `python -m pycni.cni.server` hosts one standalone for
tests and benchmarks. The same `skel.dispatch` + `CniPlugin` run here as in-process.

What staying resident buys, besides the start-up: netlink sockets in the host namespace are
pooled, datastore clients and block allocators live across calls, pod namespaces are entered by a
worker thread `setns()`-ing only itself for a `socket()` call (no fork, unlike pyroute2's NetNS),
veth destruction (an RCU grace period, 15-25 ms) happens after DEL has answered
(`plugin.Reaper`), and ADD's result-cache write after its reply (`CniPlugin.deferring`).

Safety: the server only acts for callers in its own network namespace (SO_PEERCRED -> pid ->
/proc/<pid>/ns/net); anyone else is told to run the plugin in-process. The socket is 0600, root's.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pycni.cni import skel
from pycni.cni.log import get_logger
from pycni.cni.plugin import CniPlugin, Reaper
from pycni.unixsock import listen_unix

log = get_logger("pycni.cni.server")

MAGIC = b"PYCNI1"
ANSWERED, FALLBACK = 0, 1
_PEERCRED = struct.Struct("3i")


class _Reader:
    """Buffered exact reads: one recv() usually holds the whole request."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buf = b""
        self.off = 0

    def take(self, n: int) -> bytes:
        while len(self.buf) - self.off < n:
            c = self.conn.recv(max(8192, n))  # a request is ~0.5 KiB; 64 KiB buffers cost a realloc
            if not c:
                raise ConnectionError("short read")
            self.buf = self.buf[self.off :] + c
            self.off = 0
        out = self.buf[self.off : self.off + n]
        self.off += n
        return out


def read_request(conn: socket.socket) -> tuple[dict[str, str], bytes]:
    r = _Reader(conn)
    if r.take(6) != MAGIC:
        raise ValueError("bad magic")
    env_blob = r.take(int.from_bytes(r.take(4), "little"))
    stdin = r.take(int.from_bytes(r.take(4), "little"))
    env: dict[str, str] = {}
    for item in env_blob.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env, stdin


class CniServer:
    """Serve CNI requests on `socket_path` until `stop()`. `start()` returns at once (threads)."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        datastore_factory: Callable[[], Any] | None = None,
        workers: int = 8,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.reaper: Reaper | None = None
        self.plugin: CniPlugin | None = None
        self._datastore_factory = datastore_factory
        self._workers = workers
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._netns_ino = os.stat("/proc/self/ns/net").st_ino

    def start(self) -> None:
        self.reaper = Reaper()
        self.plugin = CniPlugin(datastore_factory=self._datastore_factory, reaper=self.reaper)
        self._sock = listen_unix(str(self.socket_path), mode=0o600, backlog=256)
        # Every worker blocks in accept() on the one listening socket: the kernel hands each
        # connection to one idle worker, with no queue or extra thread switch in between.
        for i in range(self._workers):
            w = threading.Thread(target=self._worker, name=f"pycni-cni-{i}", daemon=True)
            w.start()
            self._threads.append(w)
        log.info("cni server listening", socket=str(self.socket_path))

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        for t in self._threads:
            t.join(5)
        self._threads.clear()
        if self.reaper is not None:
            self.reaper.stop()
        if self.plugin is not None:
            self.plugin.close()
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        log.info("cni server stopped", socket=str(self.socket_path))

    def __enter__(self) -> CniServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _worker(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            try:
                self._serve(conn)
            except Exception as e:  # noqa: BLE001 - one bad client never stops the server
                log.warning("cni request failed", error=repr(e))
            finally:
                conn.close()

    def _same_netns(self, conn: socket.socket) -> bool:
        pid, _uid, _gid = _PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino == self._netns_ino
        except OSError:
            return False

    def _serve(self, conn: socket.socket) -> None:
        if not self._same_netns(conn):
            conn.sendall(bytes([FALLBACK, 0]))
            return
        env, stdin = read_request(conn)
        t0 = time.perf_counter()
        assert self.plugin is not None
        # The front exits at EOF: end the stream as soon as the reply is out; the verb's
        # non-result bookkeeping (ADD's result-cache write) runs after that (`CniPlugin.deferring`).
        with self.plugin.deferring():
            rc, out = skel.dispatch(env, stdin, self.plugin)
            conn.sendall(bytes([ANSWERED, rc]) + out)
            conn.shutdown(socket.SHUT_WR)
            replied = time.perf_counter()
        log.debug(
            "cni request served",
            command=env.get("CNI_COMMAND"),
            container_id=env.get("CNI_CONTAINERID"),
            rc=rc,
            ms=round((replied - t0) * 1000, 3),
            ms_total=round((time.perf_counter() - t0) * 1000, 3),
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pycni.cni.server", description="standalone pycni CNI agent")
    p.add_argument("--socket", required=True, help="unix socket path (the config's agentSocket)")
    p.add_argument("--etcd-endpoints", default="", help="datastore for every request (else from each config)")
    p.add_argument("--datastore-type", default="", help="etcdv3 or kubernetes: one datastore for every "
                   "request (default: etcdv3 when --etcd-endpoints is given, else from each config)")
    p.add_argument("--kubeconfig", default=None, help="for --datastore-type kubernetes (default $KUBECONFIG, "
                   "else the pod's service account)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--log-level", default="info")
    ns = p.parse_args(argv)
    from pycni import log as pylog

    pylog.configure(level=ns.log_level)
    factory = None
    if ns.etcd_endpoints or ns.datastore_type:
        from pycni.datastore.factory import open_datastore
        from pycni.errors import Invalid

        try:
            ds = open_datastore(ns.datastore_type or "etcdv3", etcd_endpoints=ns.etcd_endpoints,
                                kubeconfig=ns.kubeconfig, field="--datastore-type")
        except Invalid as e:
            p.error(str(e))

        def factory() -> Any:
            return ds

    server = CniServer(ns.socket, datastore_factory=factory, workers=ns.workers)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    server.start()
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
