"""The result cache: what ADD did, per (network, containerID, ifname), for CHECK, DEL and GC.

One JSON file per attachment, `<cacheDir>/<network>-<containerID>-<ifname>`, named as libcni
names its own cache (`/var/lib/cni/results/<net>-<id>-<if>`) but in our own directory
(default `/var/lib/cni/pycni`), so the runtime's cache and ours never collide. Besides the result
it keeps what DEL needs when the runtime sends no prevResult and the netns is already gone: the
host veth's name, the mode, the IPAM handle and the endpoint key. A torn or
unreadable file reads as absent (DEL then works from names alone).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULT_DIR = "/var/lib/cni/pycni"
KIND = "pycniCacheV1"


class ResultCache:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)

    def path(self, network: str, cid: str, ifname: str) -> Path:
        return self.dir / f"{network}-{cid}-{ifname}"

    def put(self, network: str, cid: str, ifname: str, entry: dict[str, Any]) -> None:
        data = {"kind": KIND, "networkName": network, "containerId": cid, "ifName": ifname, **entry}
        # Truncate-and-write like libcni's cache (one attachment is never written concurrently: the
        # runtime serialises operations per container); a torn file reads as absent.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        try:
            fd = os.open(self.path(network, cid, ifname), flags, 0o600)
        except FileNotFoundError:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path(network, cid, ifname), flags, 0o600)
        try:
            os.write(fd, json.dumps(data).encode())
        finally:
            os.close(fd)

    def get(self, network: str, cid: str, ifname: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path(network, cid, ifname).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("kind") == KIND else None

    def delete(self, network: str, cid: str, ifname: str) -> bool:
        try:
            os.unlink(self.path(network, cid, ifname))
            return True
        except FileNotFoundError:
            return False

    def entries(self, network: str) -> list[dict[str, Any]]:
        """Every readable entry of one network (GC)."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            if not p.name.startswith(network + "-") or p.name.startswith("."):
                continue
            try:
                data = json.loads(p.read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("kind") == KIND and data.get("networkName") == network:
                out.append(data)
        return out
