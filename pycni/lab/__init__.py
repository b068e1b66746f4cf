"""The multi-node lab in network namespaces (see docs/lab-contract.md and docs/lab.md).

`from pycni.lab import Lab`: nodes as namespaces on underlay bridges in a hub namespace, etcd in
its own namespace, pods wired by the node's CNI plugin as kubelet would, all recorded so `down`
removes everything even after a crash. Modes (`pycni.lab.modes`) decide what runs on the nodes.
"""

from __future__ import annotations

from pycni.lab.lab import REPO_DIR, Lab, LabError, LabNode, LabPod, all_labs
from pycni.lab.modes import Mode, register

__all__ = ["Lab", "LabError", "LabNode", "LabPod", "Mode", "REPO_DIR", "all_labs", "register"]
