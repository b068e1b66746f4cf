"""EtcdServer: a real, throwaway etcd 3.4 on loopback for integration tests and labs.

Each instance gets its own temp data dir and a free client/peer port pair, is started with a short
election timeout (healthy in ~0.15 s instead of ~0.7 s), and is killed by its PID only, so parallel
workers never touch each other's etcd. It runs under `setpriv --pdeathsig KILL` (no Python code
between fork and exec), so a test run that dies does not leave an etcd behind. `restart()` keeps
the data dir and the ports (a client sees the same endpoint go away and come back, as after a real
etcd restart); `pause()`/`resume()` freeze it (a hung peer: connections stay open, nothing
answers); `compact()` compacts the history at the current revision, so every watcher that is
behind it fails with "compacted" and must relist. `start()` returns only once both `/health` and
a gRPC quorum read (`etcdctl endpoint health`) succeed.

The helper is stdlib-only on purpose (health via HTTP `/health`, compaction via `etcdctl`): it must
not depend on the client library whose adapter it is used to test.

Usage::

    with EtcdServer() as etcd:
        ds = EtcdDatastore(etcd.endpoint)

    # pytest
    etcd = pytest.fixture(etcd_fixture)            # function scope
    etcd_module = pytest.fixture(etcd_fixture, scope="module", name="etcd_module")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from types import TracebackType

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"

SETPRIV = shutil.which("setpriv")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel considers free right now (a race remains; `start()` retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EtcdError(RuntimeError):
    """etcd did not start or a helper command failed (the message carries etcd's log tail)."""


class EtcdServer:
    """One etcd member on `host` (loopback by default); `endpoint` is its client URL."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        name: str = "pycni-test",
        wrap: Sequence[str] = (),
        startup_timeout: float = 15.0,
        data_dir: str | None = None,
        die_with_parent: bool = True,
    ) -> None:
        """`wrap` prefixes the command, e.g. `["ip", "netns", "exec", "lab-etcd"]` (it must exec).

        `die_with_parent` runs etcd under `setpriv --pdeathsig KILL`: it dies when the *thread*
        that started it exits, so pass False when starting it from a short-lived thread.
        """
        self.die_with_parent = die_with_parent
        self.host = host
        self.name = name
        self.wrap = list(wrap)
        self.startup_timeout = startup_timeout
        self._own_dir = data_dir is None
        self.dir = data_dir or tempfile.mkdtemp(prefix="pycni-etcd-")
        self.data_dir = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "etcd.log")
        self.client_port = 0
        self.peer_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    # -- properties ----------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle -----------------------------------------------------------------------------
    def _cmd(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        guard = [SETPRIV, "--pdeathsig", "KILL"] if self.die_with_parent and SETPRIV else []
        return [
            *guard,
            *self.wrap,
            ETCD,
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
            "--grpc-keepalive-min-time", "200ms",  # let tests ping fast (dead-peer detection)
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip

    def start(self) -> EtcdServer:
        """Start (or start again, same ports and data) and wait until `/health` says true."""
        if self.running:
            return self
        fresh_ports = self.client_port == 0
        last = ""
        for attempt in range(3):
            if fresh_ports:
                self.client_port, self.peer_port = free_port(self.host), free_port(self.host)
                while self.peer_port == self.client_port:
                    self.peer_port = free_port(self.host)
            elif attempt:
                time.sleep(0.2)  # a restart on fixed ports: let a transient port clash clear
            try:
                self._spawn()
                return self
            except EtcdError as e:  # most likely a port grabbed by someone else meanwhile
                last = str(e)
                if fresh_ports and os.path.isdir(self.data_dir) and not os.listdir(self.data_dir):
                    shutil.rmtree(self.data_dir, ignore_errors=True)
        raise EtcdError(last)

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._cmd(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise EtcdError(f"etcd exited at start: {self.log_tail(errors_only=True)}")
            if self.healthy() and self._grpc_ready() and self.proc.poll() is None:
                return
            time.sleep(0.02)
        self.kill()
        raise EtcdError(f"etcd not healthy after {self.startup_timeout}s: {self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def _grpc_ready(self) -> bool:
        """`/health` is HTTP; also prove the gRPC side (what clients use) answers a quorum read."""
        try:
            self.etcdctl("endpoint", "health", "--command-timeout=2s", timeout=5)
        except (EtcdError, subprocess.TimeoutExpired):
            return False
        return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill our etcd by PID (SIGKILL: a crash; SIGTERM: a clean stop) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
                if sig != signal.SIGKILL:
                    os.kill(self.proc.pid, signal.SIGCONT)  # a paused etcd cannot act on SIGTERM
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        """Freeze etcd (SIGSTOP): connections stay open but nothing answers, like a hung peer."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused etcd (SIGCONT)."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop etcd but keep the data dir and ports (`start()` brings the same member back)."""
        self.kill(signal.SIGTERM)

    def restart(self, *, down_for: float = 0.0) -> None:
        """Crash-restart on the same ports and data, optionally staying down `down_for` seconds."""
        self.kill(signal.SIGKILL)
        if down_for:
            time.sleep(down_for)
        self.start()

    def cleanup(self) -> None:
        """Kill etcd and remove the temp dir (if we made it)."""
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------
    def etcdctl(self, *args: str, timeout: float = 10.0) -> str:
        env = dict(os.environ, ETCDCTL_API="3")
        p = subprocess.run(
            [*self.wrap, ETCDCTL, f"--endpoints={self.endpoint}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        if p.returncode != 0:
            raise EtcdError(f"etcdctl {' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
        return p.stdout

    def revision(self) -> int:
        """The store's current revision."""
        out = json.loads(self.etcdctl("endpoint", "status", "-w", "json"))
        return int(out[0]["Status"]["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compact history at `revision` (default: now); live watchers get ErrCompacted. Returns it."""
        rev = revision if revision is not None else self.revision()
        self.etcdctl("compact", str(rev), "--physical")
        return rev

    def log_tail(self, lines: int = 20, *, errors_only: bool = False) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                text = f.readlines()
        except OSError:
            return ""
        if errors_only:
            text = [ln for ln in text if '"level":"error"' in ln or '"level":"fatal"' in ln or "panic" in ln]
        return "".join(text[-lines:])

    # -- context manager -----------------------------------------------------------------------
    def __enter__(self) -> EtcdServer:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


def etcd_fixture() -> Iterator[EtcdServer]:
    """A generator for `pytest.fixture(etcd_fixture)`: a started EtcdServer, always cleaned up."""
    with EtcdServer() as server:
        yield server
