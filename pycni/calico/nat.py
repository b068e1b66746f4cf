"""natOutgoing: the `cali-nat-outgoing` chain in the nat table, reconciled through iptables-restore.

Calico's rule (felix/rules/nat.go) is one line with two ipsets:
`-m set --match-set cali40masq-ipam-pools src -m set ! --match-set cali40all-ipam-pools dst -j MASQUERADE`.
We express the same thing without ipsets, per natOutgoing pool P: `-s P -d Q -j RETURN` for every
pool Q (traffic between pods, on any node, keeps its source), then `-s P -j MASQUERADE` (or
`SNAT --to-source <natOutgoingAddress>`). Pools are few, so the chain stays short.

The chain is hooked from nat POSTROUTING by one jump rule. `apply()` reads the table back with
`iptables-save -t nat` (on resync) and rewrites the chain only when it differs, with
`iptables-restore --noflush`, so other tables' and chains' rules are never touched. An empty spec
empties the chain and removes the jump.
"""

from __future__ import annotations

import shutil
import subprocess

import structlog

from pycni.calc.felix import NatSpec

log = structlog.get_logger(__name__)

CHAIN = "cali-nat-outgoing"
JUMP = f'-A POSTROUTING -m comment --comment "cali:nat-outgoing" -j {CHAIN}'


def chain_rules(spec: NatSpec) -> list[str]:
    """The chain's rules in `iptables-save` syntax (pure)."""
    rules: list[str] = []
    for p in spec.masq_pools:
        for q in spec.all_pools:
            rules.append(f"-A {CHAIN} -s {p} -d {q} -j RETURN")
        if spec.to_address is not None:
            rules.append(f"-A {CHAIN} -s {p} -j SNAT --to-source {spec.to_address}")
        else:
            rules.append(f"-A {CHAIN} -s {p} -j MASQUERADE")
    return rules


def _normalise(line: str) -> str:
    return " ".join(line.replace('"', "").split())


class NatDriver:
    name = "nat-outgoing"

    def __init__(
        self,
        *,
        iptables_save: str = "iptables-save",
        iptables_restore: str = "iptables-restore",
        netns: str | None = None,
    ) -> None:
        """`netns`: run the tools inside that named namespace (tests); None: our own namespace."""
        wrap = ["nsenter", f"--net=/run/netns/{netns}", "--"] if netns else []
        self._save = [*wrap, shutil.which(iptables_save) or iptables_save]
        self._restore = [*wrap, shutil.which(iptables_restore) or iptables_restore]
        self._want: list[str] = []
        self._have: tuple[list[str], bool] | None = None  # (chain rules, jump present); None: unknown

    def set_desired(self, spec: NatSpec) -> None:
        self._want = chain_rules(spec)

    def queue_resync(self) -> None:
        self._have = None

    def _read(self) -> tuple[list[str], bool, bool]:
        out = subprocess.run(
            [*self._save, "-t", "nat"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        rules = [ln for ln in out.splitlines() if ln.startswith(f"-A {CHAIN} ")]
        chain_exists = any(ln.startswith(f":{CHAIN} ") for ln in out.splitlines())
        jump = any(ln.startswith("-A POSTROUTING ") and ln.endswith(f"-j {CHAIN}") for ln in out.splitlines())
        return rules, jump, chain_exists

    def apply(self) -> bool:
        want_jump = bool(self._want)
        try:
            if self._have is None:
                rules, jump, exists = self._read()
                if not exists and not self._want:
                    self._have = ([], False)
                    return True
                self._have = (rules, jump)
            rules, jump = self._have
            if [_normalise(r) for r in rules] == [_normalise(r) for r in self._want] and jump == want_jump:
                return True
            lines = ["*nat", f":{CHAIN} - [0:0]"]  # declaring the chain with --noflush empties it
            if jump and not want_jump:
                lines.append(JUMP.replace("-A POSTROUTING", "-D POSTROUTING", 1))
            lines += self._want
            if want_jump and not jump:
                lines.append(JUMP)
            lines.append("COMMIT")
            subprocess.run(
                [*self._restore, "--noflush", "-w", "5"],
                input="\n".join(lines) + "\n",
                text=True,
                capture_output=True,
                timeout=10,
                check=True,
            )
            log.info("nat-outgoing chain written", rules=len(self._want), jump=want_jump)
            self._have = (list(self._want), want_jump)
            return True
        except (OSError, subprocess.SubprocessError) as e:
            err = getattr(e, "stderr", "") or str(e)
            log.warning("nat-outgoing chain not written", error=str(err).strip()[:300])
            self._have = None
            return False
