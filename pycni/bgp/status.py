"""bgpd's status: a unix socket `pycnictl node status` reads, and calicoctl's table format.

calicoctl asks BIRD `show protocols` over `bird.ctl`; we have no BIRD, so bgpd answers one JSON
document per connection on its status socket (`<run dir>/status.sock`): the node, liveness,
readiness, and per peer its address, type (`node-to-node mesh`, `global`, `node specific`),
BIRD-style state (`up` / `start`), since (HH:MM:SS today, else the date) and info (`Established`,
`Active`, `Connect`, `Passive`, `Idle`). `format_status()` prints it exactly as
`calicoctl node status` does (calicoctl/commands/node/status.go with Go's tablewriter).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from pycni.unixsock import listen_unix

log = structlog.get_logger(__name__)


def since_text(ts: float, now: float | None = None) -> str:
    if ts <= 0:
        return ""
    lt, ln = time.localtime(ts), time.localtime(now if now is not None else time.time())
    if lt[:3] == ln[:3]:
        return time.strftime("%H:%M:%S", lt)
    return time.strftime("%Y-%m-%d", lt)


def peer_row(address: str, kind: str, session_state: str, since: float, passive: bool) -> dict[str, str]:
    if session_state == "up":
        state, info = "up", "Established"
    elif session_state == "connect":
        state, info = "start", "Connect"
    elif session_state == "down" and since > 0:
        state, info = "start", "Passive" if passive else "Active"
    else:
        state, info = "start", "Passive" if passive else "Idle"
    return {"address": address, "type": kind, "state": state, "since": since_text(since), "info": info}


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def center(s: str, w: int) -> str:
        extra = w - len(s)
        left = extra // 2
        return " " * left + s + " " * (extra - left)

    out = [sep, "|" + "|".join(f" {center(h, w)} " for h, w in zip(headers, widths, strict=True)) + "|", sep]
    for r in rows:
        out.append("|" + "|".join(f" {c.ljust(w)} " for c, w in zip(r, widths, strict=True)) + "|")
    out.append(sep)
    return "\n".join(out)


def format_status(doc: dict[str, Any] | None) -> str:
    """The text `calicoctl node status` prints, from our status document (None: not running)."""
    if doc is None:
        return "Calico process is not running.\n"
    lines = ["Calico process is running.", ""]
    headers = ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]
    for fam, label in ((4, "IPv4"), (6, "IPv6")):
        rows = [[p["address"], p["type"], p["state"], p["since"], p["info"]]
                for p in doc.get("peers", []) if (":" in p["address"]) == (fam == 6)]
        lines.append(f"{label} BGP status")
        if rows:
            lines.append(_table(headers, rows))
        else:
            lines.append(f"No {label} peers found.")
        lines.append("")
    return "\n".join(lines) + "\n"


def query(path: str, command: str = "status", timeout: float = 2.0) -> dict[str, Any] | None:
    """Ask a running bgpd; None when nothing answers on the socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(command.encode() + b"\n")
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError:
        return None
    try:
        doc = json.loads(buf)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class StatusServer:
    """Serves `status` (the whole document), `live` and `ready` on a unix socket."""

    def __init__(self, path: str, get: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self._get = get
        self._sock: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self._sock = listen_unix(self.path, mode=0o660, backlog=8, timeout=0.5)
        threading.Thread(target=self._serve, name="status", daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            s = self._sock
            if s is None:
                return
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                conn.settimeout(2.0)
                cmd = conn.recv(256).decode(errors="replace").strip() or "status"
                doc = self._get()
                if cmd in ("live", "ready"):
                    doc = {cmd: bool(doc.get(cmd))}
                conn.sendall(json.dumps(doc).encode())
            except Exception:  # noqa: BLE001 - a bad client never stops the server
                log.debug("status request failed", exc_info=True)
            finally:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        try:
            os.unlink(self.path)
        except OSError:
            pass
