"""Lab modes flannel-host-gw, flannel-vxlan and flannel-vxlan-direct: pycni-flanneld on every node.

`cluster_setup` writes net-conf.json to the lab's etcd at /coreos.com/network/config (Network
10.244.0.0/16, the backend of the mode). `node_start` runs `pycni-flanneld` inside the node with
flannel's flags (`--iface eth0`, `--subnet-file <node>/run/flannel/subnet.env`, `--ip-masq`) and
installs the node's CNI plugin: pycni in flannel mode (`{"type": "pycni", "mode": "flannel", ...}`,
served by flanneld's CNI socket) when `pycni.cni.install` is available, otherwise the reference
`bridge` + `host-local` plugins configured from subnet.env exactly as flannel's CNI meta-plugin
would delegate (cni0, isDefaultGateway, FLANNEL_MTU, the FLANNEL_SUBNET range, a route to
FLANNEL_NETWORK). `node_stop` stops flanneld and deletes the node's lease, as decommissioning a
node does, so the others drop its routes at once instead of after the 24 h TTL.

Lab options (`lab up ... -o key=value` / `Lab.up(**opts)`): `ttl` (lease TTL in seconds),
`renew_margin` (minutes), `resync` (seconds), `ip_masq` (default true), `tx_csum_off`,
`plugin` ("pycni" | "bridge", default: pycni when available).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import structlog

from pycni.atomic import write_atomic
from pycni.datastore.flannel import config_key, subnet_key
from pycni.errors import Invalid
from pycni.flannel import subnet_env
from pycni.lab import modes
from pycni.lab.modes import REFERENCE_CNI_DIR

if TYPE_CHECKING:
    from pycni.lab.lab import Lab, LabNode

log = structlog.get_logger(__name__)

NETWORK = "10.244.0.0/16"
HEALTHZ_PORT = 8471
PROC = "flanneld"


def _daemon_argv() -> list[str]:
    """The interpreter first, so the process's cmdline is exactly what the lab records."""
    script = os.path.join(os.path.dirname(sys.executable), "pycni-flanneld")
    if os.path.exists(script):
        return [sys.executable, script]
    return [sys.executable, "-m", "pycni_daemons.flanneld"]


def _truthy(v: Any) -> bool:
    return str(v).lower() in ("1", "true", "yes", "on")


def _pycni_plugin_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("pycni.cni.install") is not None
    except ImportError:
        return False


def _probe(url: str) -> list[str]:
    """argv that exits 0 when `url` answers 200 (curl if present, else the stdlib)."""
    if shutil.which("curl"):
        return ["curl", "-sf", "-m", "1", url]
    code = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)"
    return [sys.executable, "-c", code, url]


class FlannelMode:
    def __init__(self, name: str, backend: dict[str, Any]) -> None:
        self.name = name
        self.backend = backend
        # DirectRouting only shows its point across two L2 segments: direct inside, vxlan across.
        self.demo_shape: dict[str, Any] = {"segments": 2} if backend.get("DirectRouting") else {}

    # -- helpers ---------------------------------------------------------------------------
    def net_conf(self) -> dict[str, Any]:
        return {"Network": NETWORK, "Backend": dict(self.backend)}

    @staticmethod
    def subnet_file(node: LabNode) -> str:
        return os.path.join(node.dir, "run/flannel/subnet.env")

    def _plugin(self, lab: Lab) -> str:
        want = str(lab.opts.get("plugin", ""))
        if want:
            return want
        return "pycni" if _pycni_plugin_available() else "bridge"

    def available(self) -> str | None:
        if not _pycni_plugin_available() and not os.path.exists(os.path.join(REFERENCE_CNI_DIR, "bridge")):
            return "needs pycni.cni (flannel mode) or the reference CNI plugins"
        return None

    # -- Mode ------------------------------------------------------------------------------
    def cluster_setup(self, lab: Lab) -> None:
        lab.etcd_put(config_key(), json.dumps(self.net_conf()))

    def node_start(self, lab: Lab, node: LabNode) -> None:
        o = lab.opts
        lab.sysctl(node.netns, "net.ipv4.ip_forward", "1")
        bindir = os.path.join(node.dir, "opt/cni/bin")
        os.makedirs(bindir, exist_ok=True)
        if self._plugin(lab) == "pycni":
            from pathlib import Path

            from pycni.cni.install import install_plugin

            install_plugin(Path(bindir))
        for p in ("bridge", "host-local", "loopback", "portmap"):
            dst = os.path.join(bindir, p)
            if os.path.exists(os.path.join(REFERENCE_CNI_DIR, p)) and not os.path.lexists(dst):
                os.symlink(os.path.join(REFERENCE_CNI_DIR, p), dst)
        argv = [
            *_daemon_argv(),
            "--etcd-endpoints", lab.etcd_endpoint,
            "--iface", "eth0",
            "--subnet-file", self.subnet_file(node),
            "--healthz-ip", "127.0.0.1",
            "--healthz-port", str(HEALTHZ_PORT),
            "--ip-masq", "true" if _truthy(o.get("ip_masq", True)) else "false",
        ]
        if "ttl" in o:
            argv += ["--subnet-lease-ttl", str(o["ttl"])]
        if "renew_margin" in o:
            argv += ["--subnet-lease-renew-margin", str(o["renew_margin"])]
        if "resync" in o:
            argv += ["--resync-interval", str(o["resync"])]
        if _truthy(o.get("tx_csum_off", False)):
            argv += ["--vxlan-tx-csum-off"]
        if self._plugin(lab) == "pycni":
            argv += ["--cni-socket", os.path.join(node.dir, "run/pycni.sock")]
        lab.spawn(node, PROC, argv, env={"NODENAME": node.name})

    def node_stop(self, lab: Lab, node: LabNode) -> None:
        lab.kill(node, PROC, signal.SIGTERM)
        sn = subnet_env.previous_subnet(self.subnet_file(node))
        if sn is not None:
            lab.etcdctl("del", subnet_key(sn), check=False)

    def cni_config(self, lab: Lab, node: LabNode) -> dict[str, Any]:
        if self._plugin(lab) == "pycni":
            return {
                "cniVersion": "1.0.0",
                "name": "cbr0",
                "plugins": [{
                    "type": "pycni",
                    "mode": "flannel",
                    "subnetFile": self.subnet_file(node),
                    "dataDir": os.path.join(node.dir, "var/lib/cni/flannel"),
                    "agentSocket": os.path.join(node.dir, "run/pycni.sock"),
                    "delegate": {"hairpinMode": True, "isDefaultGateway": True},
                }],
            }
        return self._bridge_conf(node)

    def _bridge_conf(self, node: LabNode) -> dict[str, Any]:
        """What flannel's CNI plugin would delegate, from subnet.env (a placeholder until it exists)."""
        try:
            env = subnet_env.parse(self.subnet_file(node))
        except Invalid:
            return {"cniVersion": "1.0.0", "name": "cbr0", "plugins": [{"type": "bridge", "bridge": "cni0"}]}
        return {
            "cniVersion": "1.0.0",
            "name": "cbr0",
            "plugins": [{
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "isDefaultGateway": True,
                "hairpinMode": True,
                "ipMasq": not env.ipmasq,
                "mtu": env.mtu,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(env.subnet)}]],
                    "routes": [{"dst": str(env.network)}],
                    "dataDir": os.path.join(node.dir, "var/lib/cni/networks"),
                },
            }],
        }

    def wait_ready(self, lab: Lab, node: LabNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if lab.pid(node, PROC) is None:
                tail = ""
                try:
                    with open(os.path.join(node.dir, "log", f"{PROC}.log")) as f:
                        tail = "".join(f.readlines()[-5:])
                except OSError:
                    pass
                raise Invalid(f"{node.name}: pycni-flanneld exited:\n{tail}")
            if os.path.exists(self.subnet_file(node)):
                cp = lab.exec(node, _probe(f"http://127.0.0.1:{HEALTHZ_PORT}/healthz"), check=False)
                if cp.returncode == 0:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name}: pycni-flanneld not ready after {timeout} s")
            time.sleep(0.1)
        if self._plugin(lab) != "pycni":
            path = os.path.join(node.dir, "etc/cni/net.d", f"10-{self.name}.conflist")
            write_atomic(path, json.dumps(self._bridge_conf(node), indent=2), if_changed=False)


modes.register("flannel-host-gw", lambda: FlannelMode("flannel-host-gw", {"Type": "host-gw"}))
modes.register("flannel-vxlan", lambda: FlannelMode("flannel-vxlan", {"Type": "vxlan"}))
modes.register("flannel-vxlan-direct",
               lambda: FlannelMode("flannel-vxlan-direct", {"Type": "vxlan", "DirectRouting": True}))
