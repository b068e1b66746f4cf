"""The lab's addressing and naming plan: pure functions, no I/O (see docs/lab-contract.md).

Everything a lab creates is derived from its name and a node index, so a crashed lab can be found
and removed from its record alone, and several labs (one per parallel worker or test) coexist:

* netns: `<name>-hub` (underlay bridges), `<name>-etcd`, `<name>-rtr` (segments > 1),
  nodes `<name>-n<i>`, pods `<name>-n<i>-<pod>`.
* underlay: segment s is `10.99.<s>.0/24` (bridge `br<s>` in the hub); node i (1-based) sits on
  segment `(i-1) % K` at `10.99.<s>.<10+i>`; the router is `.254` on every segment; etcd is
  `10.99.0.250:2379`.
* interface names inside the hub are short (`v-n<i>`, `v-etcd`, `r<s>`) because the hub is private
  to one lab: they only need to be unique there and fit IFNAMSIZ (15).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from pycni.errors import Invalid

UNDERLAY = ipaddress.IPv4Network("10.99.0.0/16")
ETCD_IP = ipaddress.IPv4Address("10.99.0.250")
ETCD_PORT = 2379
ROUTER_HOST = 254
MAX_NODES = 200
MAX_SEGMENTS = 16
RUN_ROOT = "/run/pycni-lab"

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z][a-z0-9]*)*$")
_POD_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_NODE_RE = re.compile(r"^n([1-9][0-9]*)$")


def check_lab_name(name: str) -> str:
    """A lab name: lowercase words joined by '-', none of them shaped like a node name (n<i>).

    The second rule keeps one lab's namespaces from matching another lab's sweep pattern
    (lab `x` would otherwise own `x-n1-hub`, the hub of a lab called `x-n1`).
    """
    if not _NAME_RE.match(name) or len(name) > 24:
        raise Invalid(f"bad lab name {name!r}: use lowercase letters/digits joined by '-', at most 24 chars")
    if any(_NODE_RE.match(part) or part in ("hub", "etcd", "rtr") for part in name.split("-")[1:]):
        raise Invalid(f"bad lab name {name!r}: a part after the first may not be n<i>, hub, etcd or rtr")
    return name


def check_pod_name(pod: str) -> str:
    if not _POD_RE.match(pod):
        raise Invalid(f"bad pod name {pod!r}: lowercase letters, digits and '-', at most 32 chars")
    return pod


def node_index(node: str) -> int:
    m = _NODE_RE.match(node)
    if not m:
        raise Invalid(f"bad node name {node!r}: expected n<i> (n1, n2, ...)")
    return int(m.group(1))


def node_name(index: int) -> str:
    return f"n{index}"


def segment_of(index: int, segments: int) -> int:
    return (index - 1) % segments


def segment_net(seg: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.99.{seg}.0/24")


def node_ip(index: int, segments: int) -> ipaddress.IPv4Address:
    if not 1 <= index <= MAX_NODES:
        raise Invalid(f"node index {index} out of range 1..{MAX_NODES}")
    return ipaddress.IPv4Address(f"10.99.{segment_of(index, segments)}.{10 + index}")


def router_ip(seg: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"10.99.{seg}.{ROUTER_HOST}")


def bridge_name(seg: int) -> str:
    return f"br{seg}"


def hub_port(what: str) -> str:
    """The hub-side veth name for a node (`n3`), `etcd`, or a router leg (`r<s>` given as `r0`)."""
    return what if what.startswith("r") and what[1:].isdigit() else f"v-{what}"


def netns_hub(lab: str) -> str:
    return f"{lab}-hub"


def netns_etcd(lab: str) -> str:
    return f"{lab}-etcd"


def netns_router(lab: str) -> str:
    return f"{lab}-rtr"


def netns_node(lab: str, node: str) -> str:
    return f"{lab}-{node}"


def netns_pod(lab: str, node: str, pod: str) -> str:
    return f"{lab}-{node}-{pod}"


def netns_pattern(lab: str) -> re.Pattern[str]:
    """Every netns name lab `lab` may create (used to sweep leftovers a crash did not record)."""
    return re.compile(rf"^{re.escape(lab)}-(hub|etcd|rtr|n[1-9][0-9]*(-[a-z0-9-]+)?)$")


def lab_dir(lab: str, root: str = RUN_ROOT) -> str:
    return f"{root}/{lab}"


def etcd_endpoint() -> str:
    return f"http://{ETCD_IP}:{ETCD_PORT}"


@dataclass(frozen=True)
class NodePlan:
    """Where node i of a K-segment lab lives."""

    index: int
    name: str
    segment: int
    ip: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address | None  # the router on its segment, when K > 1

    @classmethod
    def of(cls, index: int, segments: int) -> NodePlan:
        seg = segment_of(index, segments)
        return cls(
            index, node_name(index), seg, node_ip(index, segments), router_ip(seg) if segments > 1 else None
        )


def plan_nodes(count: int, segments: int) -> list[NodePlan]:
    if not 1 <= count <= MAX_NODES:
        raise Invalid(f"--nodes must be 1..{MAX_NODES}, got {count}")
    if not 1 <= segments <= MAX_SEGMENTS:
        raise Invalid(f"--segments must be 1..{MAX_SEGMENTS}, got {segments}")
    return [NodePlan.of(i, segments) for i in range(1, count + 1)]


def bridge_pod_cidr(index: int) -> ipaddress.IPv4Network:
    """The built-in `bridge` mode's pod range for node i (flannel-like /24 per node)."""
    return ipaddress.IPv4Network(f"10.244.{index}.0/24")
