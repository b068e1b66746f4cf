"""Calico naming and the WorkloadEndpoint record the plugin writes for felix.

Names follow Calico exactly, so felix, calicoctl and operators' habits agree with us:
- host veth: `cali` + the first 11 hex digits of sha1("<namespace>.<pod>") in Kubernetes
  (calico:cni-plugin/pkg/dataplane/linux: `VethNameForWorkload`), `cali` + containerID[:11] for
  other orchestrators. A hash of the *pod*, not of the container, so a restarted sandbox of the same
  pod gets the same interface and felix's policy programming carries over;
- endpoint name: `<node>-k8s-<pod>-<iface>`, each part with '-' escaped to '--'
  (libcalico-go/lib/names/workloadendpoint.go), so the name can be split back unambiguously;
- key: `/calico/resources/v3/projectcalico.org/workloadendpoints/<namespace>/<name>`; the value is
  the whole v3 object, as Calico's etcdv3 backend stores it (see `pycni.datastore.calico`).
"""

from __future__ import annotations

import json
import os
import time
from _sha1 import sha1  # the builtin: hashlib would load OpenSSL (~40 ms in-process)
from collections.abc import Sequence

from pycni.constants import CALI_PREFIX

WEP_PREFIX = "/calico/resources/v3/projectcalico.org/workloadendpoints/"


def host_veth_name(
    args: dict[str, str], container_id: str, prefix: str = CALI_PREFIX, ifname: str = "eth0"
) -> str:
    """Calico's name for the pod's eth0. A second interface of the same pod (multus) must not take
    the same host name, so any other ifname joins the hashed key (our choice; Calico's k8s mode
    wires one interface per pod)."""
    ns, pod = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
    if ns and pod:
        key = f"{ns}.{pod}" if ifname == "eth0" else f"{ns}.{pod}.{ifname}"
        return prefix + sha1(key.encode()).hexdigest()[:11]
    if ifname != "eth0":
        return prefix + sha1(f"{container_id}.{ifname}".encode()).hexdigest()[:11]
    return prefix + container_id[:11]


def _esc(s: str) -> str:
    return s.replace("-", "--")


def wep_name(node: str, pod: str, iface: str = "eth0", orchestrator: str = "k8s") -> str:
    return f"{_esc(node)}-{orchestrator}-{_esc(pod)}-{_esc(iface)}"


def wep_key(namespace: str, name: str) -> str:
    return f"{WEP_PREFIX}{namespace}/{name}"


def _uuid4() -> str:
    """A random (version 4) UUID like the apiserver stamps, without importing uuid (~20 ms)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def wep_value(
    *,
    name: str,
    namespace: str,
    node: str,
    pod: str,
    container_id: str,
    endpoint: str,
    interface_name: str,
    mac: str,
    ip_networks: Sequence[str],
) -> str:
    obj = {
        "kind": "WorkloadEndpoint",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": _uuid4(),
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "labels": {
                "projectcalico.org/namespace": namespace,
                "projectcalico.org/orchestrator": "k8s",
                "projectcalico.org/serviceaccount": "default",
            },
        },
        "spec": {
            "orchestrator": "k8s",
            "node": node,
            "containerID": container_id,
            "pod": pod,
            "endpoint": endpoint,
            "serviceAccountName": "default",
            "ipNetworks": list(ip_networks),
            "profiles": [f"kns.{namespace}", f"ksa.{namespace}.default"],
            "interfaceName": interface_name,
            "mac": mac,
        },
    }
    return json.dumps(obj, separators=(",", ":"))
