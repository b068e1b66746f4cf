"""natOutgoing: the `cali-nat-outgoing` chain in the nat table (pure; `IptablesChains` programs it).

Calico's rule (felix/rules/nat.go) is one line with two ipsets:
`-m set --match-set cali40masq-ipam-pools src -m set ! --match-set cali40all-ipam-pools dst -j MASQUERADE`.
We express the same thing without ipsets, per natOutgoing pool P: `-s P -d Q -j RETURN` for every
pool Q (traffic between pods, on any node, keeps its source), then `-s P -j MASQUERADE` (or
`SNAT --to-source <natOutgoingAddress>`). Pools are few, so the chain stays short. The chain is
always desired (empty when no pool asks for NAT), so a restarted felix rewrites or empties it, and
it is reached by one jump at the top of nat POSTROUTING.
"""

from __future__ import annotations

from pycni.calc.felix import NatSpec
from pycni.dataplane.iptables import Chain

CHAIN = "cali-nat-outgoing"
JUMP = f"-m comment --comment cali:nat-outgoing -j {CHAIN}"


def chain_rules(spec: NatSpec) -> tuple[str, ...]:
    """The chain's rules, without `-A <chain>` (pure)."""
    rules: list[str] = []
    for p in spec.masq_pools:
        for q in spec.all_pools:
            rules.append(f"-s {p} -d {q} -j RETURN")
        if spec.to_address is not None:
            rules.append(f"-s {p} -j SNAT --to-source {spec.to_address}")
        else:
            rules.append(f"-s {p} -j MASQUERADE")
    return tuple(rules)


def nat_chain(spec: NatSpec) -> Chain:
    return Chain(table="nat", name=CHAIN, rules=chain_rules(spec), hook="POSTROUTING", jump=JUMP)
