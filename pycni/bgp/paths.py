"""Where a node's bgpd keeps its run-time files, shared by the daemon and `pycnictl node status`.

The default is `/run/pycni/bgpd/<nodename>/`. Labs run several nodes with the same names (`n1`) in
different network namespaces on one machine, so outside the host's own namespace the directory
also carries the namespace's inode: `/run/pycni/bgpd/<nodename>@netns-<inode>/`. Both sides
compute the same path from inside the same namespace, so `pycnictl node status` run in a node's
namespace finds its bgpd without flags. `--run-dir` overrides it (labs should pass their node dir).
"""

from __future__ import annotations

import os

RUN_ROOT = "/run/pycni/bgpd"


def _netns_inode(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def default_run_dir(nodename: str) -> str:
    mine, host = _netns_inode("self"), _netns_inode("1")
    if mine is None or host is None or mine == host:
        return os.path.join(RUN_ROOT, nodename)
    return os.path.join(RUN_ROOT, f"{nodename}@netns-{mine}")


def status_socket(run_dir: str) -> str:
    return os.path.join(run_dir, "status.sock")
