"""The helper exabgp spawns as its API process: a dumb pipe between exabgp and bgpd.

exabgp writes events (JSON lines) and command acks (`done` / `error`) to this process's stdin and
reads commands from its stdout. bgpd is not exabgp's parent in the API sense (exabgp forks its
helpers itself, as the unprivileged user), so this relay connects back to bgpd's unix socket and
copies lines both ways. It holds no logic on purpose: everything worth testing lives in bgpd.

It is stdlib-only and run as a file (`python3 relay.py SOCKET`), so it starts in a few ms, needs no
access to the pycni package as `nobody`, and never blocks exabgp: stdin is always drained (an API
process that stops reading stdin stalls exabgp once the pipe fills). When bgpd goes away the relay
stops exabgp (SIGTERM to its parent): exabgp without its controller would announce stale state.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time


def _connect(path: str, deadline: float) -> socket.socket:
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: relay.py SOCKET\n")
        return 2
    try:
        sock = _connect(argv[1], time.monotonic() + 10.0)
    except OSError as e:
        sys.stderr.write(f"relay: cannot connect to {argv[1]}: {e}\n")
        return 1
    sock.sendall(f"#relay {os.getpid()} {os.getppid()}\n".encode())
    out = sys.stdout.buffer

    def down() -> None:
        # bgpd is gone: take exabgp down with us (the parent), then leave.
        try:
            os.kill(os.getppid(), signal.SIGTERM)
        except OSError:
            pass
        os._exit(0)

    def from_bgpd() -> None:
        f = sock.makefile("rb", buffering=0)
        buf = b""
        while True:
            try:
                chunk = f.read(65536)
            except OSError:
                chunk = b""
            if not chunk:
                down()
            buf += chunk
            if b"\n" in buf:
                head, _, buf = buf.rpartition(b"\n")
                try:
                    out.write(head + b"\n")
                    out.flush()
                except OSError:
                    os._exit(0)

    threading.Thread(target=from_bgpd, daemon=True).start()
    stdin = sys.stdin.buffer.raw  # type: ignore[union-attr,attr-defined]
    while True:
        chunk = stdin.read(65536)
        if not chunk:  # exabgp closed our stdin: it is going away
            os._exit(0)
        try:
            sock.sendall(chunk)
        except OSError:
            down()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
