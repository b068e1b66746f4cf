"""ExaBgp: the exabgp child process, its API relay socket, and command acks.

Topology: bgpd listens on a unix socket and starts exabgp; exabgp forks the relay
(`pycni/bgp/relay.py`) as its API process, and the relay connects back to the socket. From then
on, commands written to the socket reach exabgp's API and exabgp's events and `done`/`error` acks
come back on it. exabgp answers commands in order, so acks are matched FIFO to the commands sent.

Privileges: exabgp must listen on port 179 (between two pycni nodes only one side dials, see the
mesh rule in `pycni.calc.bgp`), and nothing else about it needs root. When we are root we start it
through `setpriv` as the unprivileged user (default `nobody`) with only CAP_NET_BIND_SERVICE
(ambient) and a parent-death signal, so exabgp can never outlive bgpd (the relay also stops exabgp
when bgpd's end of the socket closes). Its config file and the socket are chowned to that user.

Failure handling: if exabgp exits, or an ack does not come in time, the process is (re)started and
`on_restart` tells the announcer that exabgp's RIB is empty (resync) and the reader that every
session is down. exabgp's own logs go to a file beside its config.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import structlog

from pycni.bgp import exabgp_api
from pycni.bgp.exabgp_api import Ack, BgpEvent
from pycni.errors import Transient
from pycni.unixsock import listen_unix

log = structlog.get_logger(__name__)

RELAY_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay.py")
LAUNCH_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exabgp_launch.py")


class ExaBgp:
    def __init__(
        self,
        *,
        conf_path: str,
        api_socket: str,
        on_event: Callable[[BgpEvent], None],
        on_restart: Callable[[], None],
        bind: str = "",
        port: int = 179,
        user: str = "nobody",
        exabgp: str | None = None,
        log_path: str | None = None,
        ack_timeout: float = 30.0,
        extra_env: Mapping[str, str] | None = None,
        on_events: Callable[[list[BgpEvent]], None] | None = None,
    ) -> None:
        self.conf_path = conf_path
        self.api_socket = api_socket
        self._on_event = on_event
        self._on_events = on_events  # when given: the events of one line in one call
        self._on_restart = on_restart
        self.bind = bind
        self.port = port
        self.user = user
        # Default: exabgp from our own interpreter through the launcher (one hot-path fix, see
        # exabgp_launch.py); an explicit binary is run as it is.
        self.exabgp = exabgp or ""
        self.log_path = log_path or os.path.join(os.path.dirname(conf_path), "exabgp.log")
        self.ack_timeout = ack_timeout
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._conn_gen = 0
        self._cond = threading.Condition()
        self._acks: deque[bool] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self.starts = 0
        self._uid, self._gid = self._ids()

    # -- setup -------------------------------------------------------------------------------
    def _ids(self) -> tuple[int, int]:
        if os.geteuid() != 0:
            return os.geteuid(), os.getegid()
        try:
            pw = pwd.getpwnam(self.user)
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            return 0, 0

    def chown(self, path: str, mode: int = 0o600) -> None:
        """Give exabgp's user a file it must read (the config) or connect to (the socket)."""
        os.chmod(path, mode)
        if os.geteuid() == 0:
            os.chown(path, self._uid, self._gid)

    def relay_argv(self) -> tuple[str, ...]:
        return (sys.executable, RELAY_PATH, self.api_socket)

    def _listen(self) -> None:
        if self._listener is not None:
            return
        self._listener = listen_unix(self.api_socket, mode=0o600, backlog=4, timeout=0.5)
        self.chown(self.api_socket, 0o600)

    def _argv(self) -> list[str]:
        base = [self.exabgp] if self.exabgp else [sys.executable, LAUNCH_PATH]
        argv = [*base, "server", self.conf_path]
        if os.geteuid() == 0 and self._uid != 0 and shutil.which("setpriv"):
            argv = [
                "setpriv", f"--reuid={self._uid}", f"--regid={self._gid}", "--clear-groups",
                "--inh-caps=-all,+net_bind_service", "--ambient-caps=-all,+net_bind_service",
                "--pdeathsig=KILL", *argv,
            ]
        return argv

    def _env(self) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "exabgp.api.ack": "true",
            "exabgp.api.cli": "false",
            "exabgp.api.respawn": "true",
            "exabgp.daemon.daemonize": "false",
            "exabgp.daemon.user": self.user if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name,
            "exabgp.daemon.drop": "true",
            "exabgp.log.destination": "stdout",
            "exabgp.log.level": "INFO",
            # Per-route API lines ("route added to <every neighbour> : <route>", one per prefix and
            # command) and per-keepalive counters: a file write each, ~15% of a 1000-route burst.
            # Sessions, config and reactor messages stay. `--exabgp-env exabgp.log.processes=true`
            # brings them back.
            "exabgp.log.processes": "false",
            "exabgp.log.statistics": "false",
            "exabgp.tcp.port": str(self.port),
            "exabgp.tcp.bind": self.bind,
            # The reactor sleeps speed/100 s between turns when idle and runs at most 50 queued API
            # steps (one per prefix) per turn: 1.0 (10 ms) caps intake near 5 prefixes/ms.
            "exabgp.reactor.speed": "1.0",
        }
        env.update(self.extra_env)
        return env

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start (or restart) exabgp; the reader thread starts once."""
        self._listen()
        self._drop_conn()
        if self.proc is not None and self.proc.poll() is None:
            self._terminate()
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(self._argv(), env=self._env(), stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT, close_fds=True)
        finally:
            logf.close()
        self.starts += 1
        log.info("exabgp started", pid=self.proc.pid, conf=self.conf_path, bind=self.bind, user=self.user)
        if self._thread is None:
            self._thread = threading.Thread(target=self._read_loop, name="exabgp-reader", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def ensure_running(self) -> bool:
        """Restart exabgp if it died; returns True when it had to."""
        if self.proc is None or self.proc.poll() is None:
            return False
        log.error("exabgp exited; restarting", rc=self.proc.returncode)
        self.start()
        self._on_restart()
        return True

    def reload(self) -> None:
        """SIGUSR1: exabgp re-reads its config; unchanged neighbours keep their sessions."""
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGUSR1)
            log.info("exabgp reload", pid=self.proc.pid)

    def _terminate(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def stop(self) -> None:
        self._stop.set()
        self._drop_conn()
        self._terminate()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.api_socket)
            except OSError:
                pass

    def wait_connected(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._conn is not None, timeout)

    # -- commands ----------------------------------------------------------------------------
    def send(self, cmds: Sequence[str]) -> list[bool]:
        """Send commands, pipelined, and wait for one ack each (True = done, False = error).

        Raises Transient when exabgp is not connected or the acks do not come: the caller keeps
        its work pending, and exabgp is restarted (an ack stream that lost count cannot be trusted).
        """
        if not cmds:
            return []
        with self._send_lock:
            with self._cond:
                conn, gen = self._conn, self._conn_gen
                if conn is None:
                    raise Transient("exabgp API not connected")
                self._acks.clear()
            try:
                conn.sendall(exabgp_api.commands_text(cmds))
            except OSError as e:
                raise Transient(f"exabgp API write failed: {e}") from None
            deadline = time.monotonic() + self.ack_timeout + 0.01 * len(cmds)
            with self._cond:
                ok = self._cond.wait_for(
                    lambda: len(self._acks) >= len(cmds) or self._conn_gen != gen,
                    max(0.0, deadline - time.monotonic()))
                if self._conn_gen != gen:
                    raise Transient("exabgp API connection lost while waiting for acks")
                if not ok:
                    log.error("exabgp acks missing; restarting exabgp", sent=len(cmds), acked=len(self._acks))
                    self._acks.clear()
                    threading.Thread(target=self._restart_async, daemon=True).start()
                    raise Transient("exabgp did not ack")
                acks = [self._acks.popleft() for _ in cmds]
            return acks

    def _restart_async(self) -> None:
        self.start()
        self._on_restart()

    # -- the reader thread -------------------------------------------------------------------
    def _drop_conn(self) -> None:
        self._set_conn(None)

    def _set_conn(self, conn: socket.socket | None) -> None:
        """Replace the relay connection (closing the old one); pending acks belong to the old one."""
        with self._cond:
            if self._conn is not None:
                try:
                    self._conn.close()
                except OSError:
                    pass
            self._conn = conn
            self._conn_gen += 1
            self._acks.clear()
            self._cond.notify_all()

    def _read_loop(self) -> None:
        try:
            while not self._stop.is_set():
                lst = self._listener
                if lst is None:
                    return
                try:
                    conn, _ = lst.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stop.is_set():
                        return
                    time.sleep(0.1)
                    continue
                conn.settimeout(None)
                self._set_conn(conn)
                log.info("exabgp api connected")
                self._on_restart()  # a new relay: exabgp's view of us starts empty
                self._pump(conn)
        except Exception:
            log.critical("exabgp reader crashed", exc_info=True)
            time.sleep(0.1)
            os._exit(1)

    def _pump(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        for raw in f:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("#relay"):
                continue
            if line not in ("done", "error"):
                log.debug("exabgp line", line=line)
            events: list[BgpEvent] = []
            for ev in exabgp_api.decode(line):
                if isinstance(ev, Ack):
                    with self._cond:
                        self._acks.append(ev.ok)
                        self._cond.notify_all()
                else:
                    events.append(ev)
            if not events:
                continue
            try:
                if self._on_events is not None:
                    self._on_events(events)  # one UPDATE's routes together
                else:
                    for ev in events:
                        self._on_event(ev)
            except Exception:
                log.exception("bgp event handler failed", bgp_events=len(events), first=repr(events[0]))
        log.warning("exabgp api disconnected")
        with self._cond:
            if self._conn is conn:
                self._conn = None
                self._conn_gen += 1
                self._acks.clear()
                self._cond.notify_all()
