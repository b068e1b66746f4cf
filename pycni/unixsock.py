"""Listening unix sockets for our local APIs (the CNI agent, bgpd's status, the exabgp relay).

A daemon that crashed leaves its socket file behind, and bind() refuses an existing path, so the
successor removes it first; the file's mode is set before listen() so no client can connect
through a too-open socket in between.
"""

from __future__ import annotations

import os
import socket


def listen_unix(
    path: str, *, mode: int = 0o600, backlog: int = 8, timeout: float | None = None
) -> socket.socket:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, mode)
    s.listen(backlog)
    if timeout is not None:
        s.settimeout(timeout)
    return s
