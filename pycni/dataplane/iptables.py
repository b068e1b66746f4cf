"""IptablesChains: chains we own entirely, plus one jump to each from a built-in chain.

This is how flannel (`FLANNEL-POSTRTG`, `FLANNEL-FWD`) and Calico (`cali-nat-outgoing`) keep their
rules apart from everyone else's: the chain's content is ours alone and is rewritten as a whole; the
only thing we put into a shared chain is the jump. Programming goes through `iptables-restore
--noflush -w`, one transaction per table, so the chain is never seen half-written and other tables
and chains are untouched. Reading back goes through `iptables-save -t <table>`.

Drift detection compares renderings, not our rule text: iptables prints rules in its own canonical
form (option order, quoting), so right after programming we save the table and remember how our
chains and jumps look; a later resync that sees anything else (a rule deleted or added by hand, the
jump gone or duplicated, the chain flushed) rewrites the chains and restores exactly one jump, at
the top of the built-in chain.

It runs `iptables` in the current netns (daemons live in their node's namespace); tests and labs
pass `netns=` to prefix the commands with `nsenter --net=/run/netns/<netns>`. `cleanup()` removes
our jumps and chains. On Debian 12 `iptables` is iptables-nft, which is fine: restore and save keep
the same text format.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from pycni.dataplane.pyroute2_netlink import netns_path

log = structlog.get_logger(__name__)


class ChainSpec(Protocol):
    """What a desired chain looks like (`pycni.calc.flannel.IptChain` has exactly these fields)."""

    @property
    def table(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def rules(self) -> tuple[str, ...]: ...
    @property
    def hook(self) -> str: ...
    @property
    def jump(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Chain:
    """A chain we own: `rules` without `-A <name>`; `jump` is the rule in `hook` (without `-A <hook>`);
    an empty `hook` means no jump (the chain is reached from another chain of ours)."""

    table: str
    name: str
    rules: tuple[str, ...]
    hook: str = ""
    jump: str = ""


class IptablesError(Exception):
    pass


@dataclass
class _Table:
    """One table as `iptables-save` shows it: chain names and the rules of each chain."""

    chains: dict[str, list[str]]

    @classmethod
    def parse(cls, text: str) -> _Table:
        chains: dict[str, list[str]] = {}
        for line in text.splitlines():
            if line.startswith(":"):
                chains.setdefault(line[1:].split()[0], [])
            elif line.startswith("-A "):
                _, chain, *rest = line.split(" ", 2)
                chains.setdefault(chain, []).append(rest[0] if rest else "")
        return cls(chains)

    def jumps_to(self, hook: str, target: str) -> list[str]:
        pat = re.compile(rf"(^|\s)-[jg] {re.escape(target)}(\s|$)")
        return [r for r in self.chains.get(hook, []) if pat.search(r)]


def _as_chain(c: ChainSpec) -> Chain:
    return Chain(table=c.table, name=c.name, rules=tuple(c.rules), hook=c.hook or "", jump=c.jump or "")


class IptablesChains:
    """The Driver over our chains; see the module docstring."""

    def __init__(
        self,
        *,
        name: str = "iptables",
        netns: str | None = None,
        family: int = 4,
        sweep_prefixes: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.netns = netns
        self.family = family
        self.sweep_prefixes = tuple(sweep_prefixes)
        self.timeout = timeout
        self._desired: dict[tuple[str, str], Chain] = {}
        self._programmed: dict[tuple[str, str], Chain] | None = None  # what we last wrote
        self._observed: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
        self._owned: set[tuple[str, str]] = set()
        self._resync_needed = True
        self.last_wrote: list[str] = []  # tables rewritten by the last apply
        self._last_error: dict[str, str] = {}  # warn once per table and message, then DEBUG
        self._log = log.bind(driver=name)

    # -- commands --------------------------------------------------------------------------
    def _cmd(self, tool: str) -> list[str]:
        binary = f"{'ip6tables' if self.family == 6 else 'iptables'}-{tool}"
        prefix = ["nsenter", f"--net={netns_path(self.netns)}"] if self.netns else []
        return [*prefix, binary]

    def _run(self, args: list[str], stdin: str | None = None) -> str:
        try:
            p = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise IptablesError(f"{args[-1] if not stdin else ' '.join(args)}: {e}") from None
        if p.returncode != 0:
            raise IptablesError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def save(self, table: str) -> str:
        return self._run([*self._cmd("save"), "-t", table])

    def restore(self, text: str) -> None:
        self._run([*self._cmd("restore"), "--noflush", "-w", "5"], stdin=text)

    # -- Driver ----------------------------------------------------------------------------
    def set_desired(self, chains: Iterable[ChainSpec]) -> None:
        self._desired = {(c.table, c.name): _as_chain(c) for c in chains}

    def queue_resync(self) -> None:
        self._resync_needed = True

    def apply(self) -> bool:
        tables = sorted({t for t, _ in self._desired} | {t for t, _ in self._owned})
        changed = self._programmed != self._desired
        if not changed and not self._resync_needed:
            self.last_wrote = []
            self._log.debug("iptables applied", chains=len(self._desired))
            return True
        ok = True
        wrote: list[str] = []
        for table in tables:
            try:
                current = _Table.parse(self.save(table))
                text = self._render(table, current, force=changed)
                if text is not None:
                    self.restore(text)
                    wrote.append(table)
                self._observe(table, _Table.parse(self.save(table)) if text is not None else current)
                self._last_error.pop(table, None)
            except IptablesError as e:
                ok = False
                level = self._log.debug if self._last_error.get(table) == str(e) else self._log.warning
                self._last_error[table] = str(e)
                level("iptables apply failed", table=table, error=str(e))
        self.last_wrote = wrote
        if ok:
            self._programmed = dict(self._desired)
            self._owned = set(self._desired)
            self._resync_needed = False
        if wrote:
            self._log.info(
                "iptables applied",
                tables=wrote,
                chains=[n for _, n in sorted(self._desired)],
                drift=not changed,
            )
        else:
            self._log.debug("iptables applied", chains=len(self._desired))
        return ok

    def cleanup(self) -> None:
        """Remove our jumps and chains (those desired and those we programmed)."""
        mine = set(self._desired) | self._owned
        for table in sorted({t for t, _ in mine}):
            current = _Table.parse(self.save(table))
            lines = []
            for t, name in sorted(mine):
                if t == table and name in current.chains:
                    lines += self._removal(current, name)
            if lines:
                self.restore("\n".join([f"*{table}", *lines, "COMMIT", ""]))
                self._log.info(
                    "iptables chains removed", table=table, chains=[n for t, n in mine if t == table]
                )
        self._owned = set()
        self._programmed = None
        self._observed = {}

    remove_all = cleanup

    # -- rendering -------------------------------------------------------------------------
    def _removal(self, current: _Table, name: str) -> list[str]:
        lines = []
        for hook in current.chains:
            if hook == name:
                continue
            lines += [f"-D {hook} {r}" for r in current.jumps_to(hook, name)]
        return [*lines, f"-F {name}", f"-X {name}"]

    def _render(self, table: str, current: _Table, *, force: bool) -> str | None:
        """The restore input that makes `table` right, or None when it already is."""
        want = [c for (t, _), c in sorted(self._desired.items()) if t == table]
        seen = self._observed.get(table, {})
        lines: list[str] = []
        dirty = force
        for c in want:
            rules = tuple(current.chains.get(c.name, ())) if c.name in current.chains else None
            jumps = tuple(current.jumps_to(c.hook, c.name)) if c.hook else ()
            expected = seen.get(c.name)
            if rules is None or expected is None or (rules, jumps) != expected:
                dirty = True
        stale = [
            n
            for n in current.chains
            if (table, n) not in self._desired
            and ((table, n) in self._owned or any(n.startswith(p) for p in self.sweep_prefixes))
        ]
        if not dirty and not stale:
            return None
        for c in want:
            lines.append(f":{c.name} - [0:0]")
        for name in stale:
            lines += self._removal(current, name)
        for c in want:
            lines.append(f"-F {c.name}")
            lines += [f"-A {c.name} {r}" for r in c.rules]
            if c.hook:
                lines += [f"-D {c.hook} {r}" for r in current.jumps_to(c.hook, c.name)]
                lines.append(f"-I {c.hook} 1 {c.jump}")
        return "\n".join([f"*{table}", *lines, "COMMIT", ""])

    def _observe(self, table: str, current: _Table) -> None:
        self._observed[table] = {
            c.name: (
                tuple(current.chains.get(c.name, ())),
                tuple(current.jumps_to(c.hook, c.name)) if c.hook else (),
            )
            for (t, _), c in self._desired.items()
            if t == table
        }
