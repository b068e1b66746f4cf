"""Per-pod masquerade for flannel mode when flanneld does not masquerade (FLANNEL_IPMASQ=false).

The flannel CNI plugin sets its bridge delegate's `ipMasq` to `!FLANNEL_IPMASQ`: whoever does not
masquerade centrally must do it per pod. The rules mirror the reference bridge plugin's
(plugins/pkg/ip/ipmasq_iptables_linux.go): a chain per attachment, entered from nat POSTROUTING for
the pod's source address, that returns for traffic staying inside the pod networks and masquerades
the rest except multicast. Applied with `iptables-restore --noflush` (one exec, atomic), as flannel
and Calico do; never `iptables` per rule.
"""

from __future__ import annotations

import ipaddress
import subprocess
from _sha1 import sha1  # the builtin: hashlib would load OpenSSL (~40 ms in-process)
from collections.abc import Sequence

from pycni.cni.log import get_logger

log = get_logger("pycni.cni.masq")


def chain_name(network: str, cid: str, ifname: str) -> str:
    return "PYCNI-" + sha1(f"{network}/{cid}/{ifname}".encode()).hexdigest()[:16].upper()


def _comment(network: str, cid: str) -> str:
    return f"pycni name: {network} id: {cid}"


def setup(
    network: str, cid: str, ifname: str, ip: ipaddress.IPv4Address, inside: Sequence[ipaddress.IPv4Network]
) -> None:
    ch = chain_name(network, cid, ifname)
    c = _comment(network, cid)
    lines = ["*nat", f":{ch} - [0:0]", f"-F {ch}"]
    for net in inside:
        lines.append(f'-A {ch} -d {net} -m comment --comment "{c}" -j RETURN')
    lines.append(f'-A {ch} ! -d 224.0.0.0/4 -m comment --comment "{c}" -j MASQUERADE')
    lines.append(f'-A POSTROUTING -s {ip}/32 -m comment --comment "{c}" -j {ch}')
    lines.append("COMMIT")
    _restore("\n".join(lines) + "\n")
    log.info("masquerade set", chain=ch, ip=str(ip))


def teardown(network: str, cid: str, ifname: str) -> bool:
    """Remove the jump and the chain if present; idempotent."""
    ch = chain_name(network, cid, ifname)
    saved = _nat_rules()
    if saved is None or f":{ch} " not in saved:
        return False
    lines = ["*nat"]
    for line in saved.splitlines():
        if line.startswith("-A POSTROUTING") and f"-j {ch}" in line:
            lines.append("-D" + line[2:])
    lines += [f"-F {ch}", f"-X {ch}", "COMMIT"]
    _restore("\n".join(lines) + "\n")
    log.info("masquerade removed", chain=ch)
    return True


def present(network: str, cid: str, ifname: str) -> bool:
    saved = _nat_rules()
    return saved is not None and f"-j {chain_name(network, cid, ifname)}" in saved


def _nat_rules() -> str | None:
    """`iptables-save -t nat`, or None when it cannot be read."""
    try:
        argv = ["iptables-save", "-t", "nat"]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def _restore(text: str) -> None:
    p = subprocess.run(
        ["iptables-restore", "-w", "5", "--noflush"], input=text, capture_output=True, text=True
    )
    if p.returncode != 0:
        raise OSError(f"iptables-restore failed: {p.stderr.strip()}")
