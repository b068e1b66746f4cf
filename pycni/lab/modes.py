"""Lab modes: how a lab turns nodes into a pod network (bridge, flannel-*, calico-*).

A mode is any object with the `Mode` protocol's members; `register(name, factory)` adds one and
`get(name)` builds it. `pycni.lab.modes_flannel` and `pycni.lab.modes_calico` register their modes
when imported; `load_modes()` imports them only if they exist, so the lab works before they do.

The built-in `bridge` mode needs nothing of pycni's own: Debian's reference `bridge` + `host-local`
plugins (from /usr/lib/cni) give each node `cni0` with 10.244.<i>.0/24, and the mode itself writes
host-gw-style static routes between nodes (and on the router when there are several segments).
It is the lab's self-test and the yardstick the other modes are compared against.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import structlog

from pycni.errors import Invalid
from pycni.lab import plan

if TYPE_CHECKING:
    from pycni.lab.lab import Lab, LabNode

log = structlog.get_logger(__name__)

REFERENCE_CNI_DIR = "/usr/lib/cni"


@runtime_checkable
class Mode(Protocol):
    name: str

    def cluster_setup(self, lab: Lab) -> None: ...

    def node_start(self, lab: Lab, node: LabNode) -> None: ...

    def node_stop(self, lab: Lab, node: LabNode) -> None: ...

    def cni_config(self, lab: Lab, node: LabNode) -> dict[str, Any]: ...

    def wait_ready(self, lab: Lab, node: LabNode, timeout: float) -> None: ...


#: Optional member: `available() -> str | None` returns why the mode cannot run here (for example
#: "needs the ipip module: run it in the UML lane"), or None. `lab demo` skips unavailable modes.

_REGISTRY: dict[str, Callable[[], Mode]] = {}
OPTIONAL_MODULES = ("pycni.lab.modes_flannel", "pycni.lab.modes_calico")


def register(name: str, factory: Callable[[], Mode]) -> None:
    _REGISTRY[name] = factory


def names() -> list[str]:
    """Registered mode names, `bridge` first, then in registration order."""
    load_modes()
    return list(_REGISTRY)


def get(name: str) -> Mode:
    load_modes()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise Invalid(f"unknown lab mode {name!r}; known: {', '.join(_REGISTRY)}") from None
    return factory()


def unavailable_reason(mode: Mode) -> str | None:
    fn = getattr(mode, "available", None)
    return fn() if callable(fn) else None


_loaded = False
load_errors: dict[str, str] = {}


def load_modes() -> None:
    """Import the optional mode modules that exist; a broken one is reported, not fatal."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in OPTIONAL_MODULES:
        if importlib.util.find_spec(mod) is None:
            continue
        try:
            importlib.import_module(mod)
        except Exception as e:  # someone else's module: report, keep the lab usable
            load_errors[mod] = f"{type(e).__name__}: {e}"
            log.warning("lab mode module failed to import", module=mod, error=str(e))


# ---------------------------------------------------------------------------- bridge mode


class BridgeMode:
    """Reference plugins + static routes: every node a /24 on `cni0`, routed host-gw style."""

    name = "bridge"
    plugins = ("bridge", "host-local", "loopback")

    def available(self) -> str | None:
        if not os.path.exists(os.path.join(REFERENCE_CNI_DIR, "bridge")):
            return f"needs the reference CNI plugins in {REFERENCE_CNI_DIR} (containernetworking-plugins)"
        return None

    def cluster_setup(self, lab: Lab) -> None:
        return None

    def node_start(self, lab: Lab, node: LabNode) -> None:
        why = self.available()
        if why:
            raise Invalid(why)
        bindir = os.path.join(node.dir, "opt/cni/bin")
        for p in self.plugins:
            dst = os.path.join(bindir, p)
            if not os.path.lexists(dst):
                os.symlink(os.path.join(REFERENCE_CNI_DIR, p), dst)
        lab.sysctl(node.netns, "net.ipv4.ip_forward", "1")
        self.sync_routes(lab)

    def node_stop(self, lab: Lab, node: LabNode) -> None:
        self.sync_routes(lab, leaving=node.name)

    def cni_config(self, lab: Lab, node: LabNode) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "lab-bridge",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(plan.bridge_pod_cidr(node.index))}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": os.path.join(node.dir, "var/lib/cni/networks"),
                    },
                }
            ],
        }

    def wait_ready(self, lab: Lab, node: LabNode, timeout: float) -> None:
        # Nothing runs on the node: ready once the plugin is installed.
        deadline = time.monotonic() + timeout
        while not os.path.exists(os.path.join(node.dir, "opt/cni/bin/bridge")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name}: bridge plugin not installed")
            time.sleep(0.05)

    def sync_routes(self, lab: Lab, leaving: str | None = None) -> None:
        """Replace the static pod routes on every node (and the router) to match the node list."""
        nodes = [n for n in lab.nodes if n.name != leaving]
        for n in nodes:
            cmds = []
            for other in nodes:
                if other.name == n.name:
                    continue
                via = other.ip if other.segment == n.segment else plan.router_ip(n.segment)
                cmds.append(f"route replace {plan.bridge_pod_cidr(other.index)} via {via} dev eth0")
            if leaving is not None:
                gone = plan.bridge_pod_cidr(plan.node_index(leaving))
                cmds.append(f"route del {gone}")
            lab.ip_batch(n.netns, cmds, ignore_errors=leaving is not None)
        if lab.segments > 1:
            cmds = [f"route replace {plan.bridge_pod_cidr(o.index)} via {o.ip}" for o in nodes]
            if leaving is not None:
                cmds.append(f"route del {plan.bridge_pod_cidr(plan.node_index(leaving))}")
            lab.ip_batch(plan.netns_router(lab.name), cmds, ignore_errors=leaving is not None)


register("bridge", BridgeMode)
