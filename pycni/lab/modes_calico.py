"""Lab modes calico-bgp, calico-vxlan, calico-ipip, calico-crosssubnet: pycni-felix (+ pycni-bgpd).

`cluster_setup` writes what an operator would with calicoctl before the nodes start: the pool
`default-ipv4-ippool` (10.244.0.0/16, /26 blocks, natOutgoing, the mode's IPIP/VXLAN setting) and
`BGPConfiguration default` (AS 64512, node-to-node mesh unless route reflectors are asked for).
With `route_reflectors=K` the first K nodes get cluster ID 224.0.0.1 and the label
`route-reflector=true`, the mesh is off, and one BGPPeer `peer-with-route-reflectors` (every node
peers with `route-reflector == 'true'`) wires the rest, as Calico's docs do it.

`node_start` installs the pycni plugin into the node's `opt/cni/bin`, starts `pycni-felix` (which
runs calico-node's start-up: registers the Node with the node's underlay address, allocates tunnel
addresses; then programs routes and serves the CNI socket `<node dir>/run/pycni.sock`); in the
BGP modes `wait_ready` then starts `pycni-bgpd` once felix has registered the Node, and waits for
its sessions (so every node's felix starts in parallel, and bgpd always follows felix).
calico-vxlan runs felix only: VXLAN routes come from the datastore, no BGP needed. `node_stop`
stops the daemons and decommissions the node in the datastore (Node, its WorkloadEndpoints, its
block affinities and blocks, its tunnel handles), as kube-controllers does when a Node goes, so
every other node withdraws its routes.

Modes:
- calico-bgp: no encapsulation; bgpd learns and programs the routes (one segment, or a router
  that knows the pods, which the lab's router does not: use one segment).
- calico-vxlan: vxlanMode Always; felix only.
- calico-ipip: ipipMode Always (needs the ipip module: the UML lane); felix + bgpd.
- calico-crosssubnet: ipipMode CrossSubnet by default (`encap=vxlan` for vxlanMode CrossSubnet,
  which runs without ipip); meant for `--segments 2`: direct inside a segment, tunnelled across.

Options (`Lab.up(**opts)`): `route_reflectors` (int), `encap` ("ipip" | "vxlan", crosssubnet only),
`resync` (felix route refresh seconds), `pool` (CIDR), `mtu` (workload MTU override), `bgp`
(false: felix only, even in the BGP modes; IPIP routes are felix's anyway).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from pycni.constants import IPIP_OVERHEAD, VXLAN_OVERHEAD
from pycni.datastore import calico as c
from pycni.errors import Invalid
from pycni.lab import modes

if TYPE_CHECKING:
    from pycni.lab.lab import Lab, LabNode

log = structlog.get_logger(__name__)

POOL_CIDR = "10.244.0.0/16"
RR_CLUSTER_ID = "224.0.0.1"
HEALTH_PORT = 9099
FELIX = "felix"
BGPD = "bgpd"
UNDERLAY_MTU = 1500


def _daemon_argv(script: str, module: str) -> list[str]:
    path = os.path.join(os.path.dirname(sys.executable), script)
    if os.path.exists(path):
        return [sys.executable, path]
    return [sys.executable, "-m", module]


def ipip_available() -> bool:
    """Whether this kernel can make tunl0 (the ipip module is loaded or loadable)."""
    if os.path.isdir("/sys/module/ipip"):
        return True
    try:
        import subprocess

        subprocess.run(["modprobe", "-q", "ipip"], capture_output=True, timeout=10, check=False)
    except (OSError, Exception):
        return False
    return os.path.isdir("/sys/module/ipip")


def bgpd_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("pycni_daemons.bgpd") is not None
    except ImportError:
        return False


def plugin_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("pycni.cni.install") is not None
    except ImportError:
        return False


class CalicoMode:
    def __init__(
        self,
        name: str,
        *,
        ipip: str = c.ENCAP_NEVER,
        vxlan: str = c.ENCAP_NEVER,
        bgp: bool = True,
        crosssubnet: bool = False,
    ) -> None:
        self.name = name
        self.ipip = ipip
        self.vxlan = vxlan
        self.bgp = bgp
        self.crosssubnet = crosssubnet
        # CrossSubnet needs two segments to show anything; on this kernel (no ipip) the demo uses
        # the VXLAN flavour, the IPIP one runs in the UML lane's tests.
        self.demo_shape: dict[str, object] = {"segments": 2, "encap": "vxlan"} if crosssubnet else {}

    # -- per-lab choices ---------------------------------------------------------------------
    def _encaps(self, lab: Lab) -> tuple[str, str]:
        if self.crosssubnet and str(lab.opts.get("encap", "ipip")) == "vxlan":
            return c.ENCAP_NEVER, c.ENCAP_CROSS_SUBNET
        return self.ipip, self.vxlan

    def _uses_bgp(self, lab: Lab) -> bool:
        ipip, vxlan = self._encaps(lab)
        wanted = str(lab.opts.get("bgp", "true")).lower() not in ("0", "false", "no", "off")
        return self.bgp and wanted and vxlan == c.ENCAP_NEVER

    def _rr_count(self, lab: Lab) -> int:
        try:
            return int(lab.opts.get("route_reflectors", 0) or 0)
        except (TypeError, ValueError):
            raise Invalid(
                f"route_reflectors={lab.opts.get('route_reflectors')!r}: expected a number"
            ) from None

    def workload_mtu(self, lab: Lab) -> int:
        if "mtu" in lab.opts:
            return int(lab.opts["mtu"])
        ipip, vxlan = self._encaps(lab)
        if vxlan != c.ENCAP_NEVER:
            return UNDERLAY_MTU - VXLAN_OVERHEAD
        if ipip != c.ENCAP_NEVER:
            return UNDERLAY_MTU - IPIP_OVERHEAD
        return UNDERLAY_MTU

    def available(self) -> str | None:
        if not plugin_available():
            return "needs the pycni CNI plugin (pycni.cni.install)"
        if self.ipip != c.ENCAP_NEVER and not self.crosssubnet and not ipip_available():
            return "needs the ipip module (tunl0): run it in the UML lane (scripts/uml-run)"
        if self.bgp and self.vxlan == c.ENCAP_NEVER and not self.crosssubnet and not bgpd_available():
            return "needs pycni-bgpd (pycni_daemons.bgpd)"
        return None

    # -- Mode ----------------------------------------------------------------------------------
    def cluster_setup(self, lab: Lab) -> None:
        ipip, vxlan = self._encaps(lab)
        if ipip != c.ENCAP_NEVER and not ipip_available():
            raise Invalid(f"mode {self.name} with IPIP needs the ipip module: run it in the UML lane")
        pool = c.IPPool.from_spec(
            c.new_meta(c.DEFAULT_POOL_NAME),
            {
                "cidr": str(lab.opts.get("pool", POOL_CIDR)),
                "blockSize": 26,
                "ipipMode": ipip,
                "vxlanMode": vxlan,
                "natOutgoing": True,
                "nodeSelector": "all()",
            },
        )
        lab.etcd_put(c.key_for(pool), c.encode(pool))
        rr = self._rr_count(lab)
        bgpc = c.BGPConfiguration.from_spec(
            c.new_meta("default"),
            {"asNumber": c.DEFAULT_AS, "nodeToNodeMeshEnabled": rr == 0, "logSeverityScreen": "Info"},
        )
        lab.etcd_put(c.key_for(bgpc), c.encode(bgpc))
        if rr:
            peer = c.BGPPeer.from_spec(
                c.new_meta("peer-with-route-reflectors"),
                {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"},
            )
            lab.etcd_put(c.key_for(peer), c.encode(peer))
        log.info("calico cluster configured", mode=self.name, ipip=ipip, vxlan=vxlan, route_reflectors=rr)

    def _mtu_file(self, node: LabNode) -> str:
        return os.path.join(node.dir, "var/lib/calico/mtu")

    def node_start(self, lab: Lab, node: LabNode) -> None:
        from pycni.cni.install import install_plugin  # type: ignore[import-not-found,unused-ignore]

        bindir = os.path.join(node.dir, "opt/cni/bin")
        os.makedirs(bindir, exist_ok=True)
        install_plugin(Path(bindir))
        # Real nodes have a default gateway, and Calico's proxy-ARP depends on it: the kernel
        # answers a pod's ARP for 169.254.1.1 only if it has a route to that address through
        # another interface. The lab's nodes only know 10.99.0.0/16, so give them one.
        from pycni.lab import plan

        lab.ip_batch(
            node.netns, [f"route replace default via {plan.router_ip(node.segment)} dev eth0 onlink"]
        )
        os.makedirs(os.path.join(node.dir, "run"), exist_ok=True)
        # Only felix here, so the nodes' felixes start in parallel; bgpd follows in wait_ready,
        # once this node's felix has registered the Node bgpd needs.
        self.start_felix(lab, node)

    def start_felix(self, lab: Lab, node: LabNode) -> int:
        """Spawn pycni-felix on a node (also used by tests to restart it)."""
        try:
            os.unlink(self._mtu_file(node))  # wait_ready waits for felix to write it again
        except FileNotFoundError:
            pass
        env = {"NODENAME": node.name, "NO_DEFAULT_POOLS": "true"}
        if node.index <= self._rr_count(lab):
            env["CALICO_ROUTE_REFLECTOR_CLUSTER_ID"] = RR_CLUSTER_ID
            env["CALICO_NODE_LABELS"] = "route-reflector=true"
        argv = [
            *_daemon_argv("pycni-felix", "pycni_daemons.felix"),
            "--etcd-endpoints",
            lab.etcd_endpoint,
            "--nodename",
            node.name,
            "--ip",
            f"{node.ip}/24",
            "--cni-socket",
            os.path.join(node.dir, "run/pycni.sock"),
            "--mtu-file",
            self._mtu_file(node),
            "--health-port",
            str(HEALTH_PORT),
            "--health-host",
            "127.0.0.1",
        ]
        if "resync" in lab.opts:
            argv += ["--resync-interval", str(lab.opts["resync"])]
        return lab.spawn(node, FELIX, argv, env=env)

    def start_bgpd(self, lab: Lab, node: LabNode) -> int:
        """Spawn pycni-bgpd on a node (after felix registered the Node)."""
        bargv = [
            *_daemon_argv("pycni-bgpd", "pycni_daemons.bgpd"),
            "--etcd-endpoints",
            lab.etcd_endpoint,
            "--nodename",
            node.name,
            "--run-dir",
            os.path.join(node.dir, "run/bgp"),
            "--iface",
            "eth0",
        ]
        if "resync" in lab.opts:
            bargv += ["--resync-interval", str(lab.opts["resync"])]
        return lab.spawn(node, BGPD, bargv, env={"NODENAME": node.name})

    def _wait_node_registered(self, lab: Lab, node: LabNode, timeout: float) -> None:
        """bgpd needs this Node's address: wait until felix's start-up has written it."""
        key = c.resource_key(c.Node, node.name)
        deadline = time.monotonic() + timeout
        while lab.etcd_get(key) is None:
            if lab.pid(node, FELIX) is None:
                raise Invalid(
                    f"{node.name}: pycni-felix exited during start-up; see {node.dir}/log/{FELIX}.log"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name}: Node resource not registered after {timeout}s")
            time.sleep(0.1)

    def node_stop(self, lab: Lab, node: LabNode) -> None:
        for proc in (BGPD, FELIX):
            if lab.pid(node, proc) is not None:
                lab.kill(node, proc, signal.SIGTERM)
        decommission(lab, node.name)

    def cni_config(self, lab: Lab, node: LabNode) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "plugins": [
                {
                    "type": "pycni",
                    "mode": "calico",
                    "nodename": node.name,
                    "datastore_type": "etcdv3",
                    "etcd_endpoints": lab.etcd_endpoint,
                    "mtu": self.workload_mtu(lab),
                    "mtu_file": self._mtu_file(node),
                    "ipam": {"type": "calico-ipam", "assign_ipv4": "true"},
                    "agentSocket": os.path.join(node.dir, "run/pycni.sock"),
                    "cacheDir": os.path.join(node.dir, "var/lib/cni/cache"),
                }
            ],
        }

    def wait_ready(self, lab: Lab, node: LabNode, timeout: float) -> None:
        """Ready when felix has applied its first in-sync spec (it writes the MTU file then)."""
        deadline = time.monotonic() + timeout
        path = self._mtu_file(node)
        while not os.path.exists(path):
            if lab.pid(node, FELIX) is None:
                raise Invalid(f"{node.name}: pycni-felix is not running; see {node.dir}/log/{FELIX}.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name}: pycni-felix not ready after {timeout}s")
            time.sleep(0.05)
        if self._uses_bgp(lab):
            if lab.pid(node, BGPD) is None:
                self._wait_node_registered(lab, node, max(1.0, deadline - time.monotonic()))
                self.start_bgpd(lab, node)
            self._wait_bgp(lab, node, deadline)

    def _wait_bgp(self, lab: Lab, node: LabNode, deadline: float) -> None:
        """Ready when bgpd says so and its sessions with every node already running bgpd are up.

        Nodes become ready in order, so the last one checks its sessions with all the others and
        every pair of the mesh has been seen established by one of its two ends.
        """
        from pycni.bgp.status import query

        sock = os.path.join(node.dir, "run/bgp/status.sock")
        doc: dict[str, Any] | None = None
        while True:
            if lab.pid(node, BGPD) is None:
                raise Invalid(f"{node.name}: pycni-bgpd is not running; see {node.dir}/log/{BGPD}.log")
            doc = query(sock) if os.path.exists(sock) else None
            others = {n.ip for n in lab.nodes if n.name != node.name and lab.pid(n, BGPD) is not None}
            if doc and doc.get("live", True):
                state = {str(p.get("address")): p.get("state") for p in doc.get("peers", [])}
                mine = [v for k, v in state.items() if k in others]
                if (not others or mine) and all(v == "up" for v in mine):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name}: BGP sessions not established: {json.dumps(doc)}")
            time.sleep(0.2)


def decommission(lab: Lab, nodename: str) -> None:
    """Remove a node from the Calico datastore as kube-controllers would when its Node goes."""
    lab.etcdctl("del", c.resource_key(c.Node, nodename), check=False)
    for key, value in lab.etcd_get_prefix(c.WEPS_PREFIX).items():
        try:
            w = c.decode(key, value, c.WorkloadEndpoint)
        except Invalid:
            continue
        if isinstance(w, c.WorkloadEndpoint) and w.node == nodename:
            lab.etcdctl("del", key, check=False)
    lab.etcdctl("del", "--prefix", f"/calico/ipam/v2/host/{nodename}/", check=False)
    for key, value in lab.etcd_get_prefix("/calico/ipam/v2/assignment/").items():
        try:
            if json.loads(value).get("affinity") == f"host:{nodename}":
                lab.etcdctl("del", key, check=False)
        except (ValueError, AttributeError):
            continue
    for kind in ("ipip", "vxlan"):
        lab.etcdctl("del", f"/calico/ipam/v2/handle/{kind}-tunnel-addr-{nodename}", check=False)
    log.info("node decommissioned", node=nodename)


modes.register("calico-bgp", lambda: CalicoMode("calico-bgp"))
modes.register("calico-vxlan", lambda: CalicoMode("calico-vxlan", vxlan=c.ENCAP_ALWAYS, bgp=False))
modes.register("calico-ipip", lambda: CalicoMode("calico-ipip", ipip=c.ENCAP_ALWAYS))
modes.register(
    "calico-crosssubnet",
    lambda: CalicoMode("calico-crosssubnet", ipip=c.ENCAP_CROSS_SUBNET, crosssubnet=True),
)
