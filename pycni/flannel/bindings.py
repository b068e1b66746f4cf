"""How a FlannelSpec reaches the kernel: neighbours -> FDB -> routes -> iptables, as Agent bindings.

Each table is a reconciling driver over the Netlink seam with a DeltaTracker: it owns a well-defined
set of kernel objects and nothing else, so a sweep can never touch someone else's state:
- neighbours: the permanent entries on `flannel.<VNI>` (the device is ours alone);
- FDB: the entries with a remote `dst` on `flannel.<VNI>`;
- routes: every route in the main table with protocol RTPROT_FLANNELD;
- iptables: the chains FLANNEL-POSTRTG (nat) and FLANNEL-FWD (filter) and the jumps to them.
A dump happens on the first apply and on every queued resync (the Agent queues one after each
IN_SYNC and every resync interval, which is how a route or neighbour deleted by hand comes back).
A failed write stays pending and makes `apply()` return False, so the Agent retries it.

The shared drivers of `pycni.dataplane` (RouteTable, NeighTable, FdbTable, IptablesChains) are
used when present; `_KeyedTable` and `_ChainsDriver` below are the same idea for the flannel
daemon alone, and carry it until then.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog

from pycni.agent import Binding
from pycni.calc.flannel import FlannelSpec, IptChain
from pycni.constants import RTPROT_FLANNELD
from pycni.dataplane.delta import DeltaTracker
from pycni.dataplane.netlink import Fdb, Neigh, Netlink, NetlinkError, Route

if TYPE_CHECKING:
    from pycni.flannel.daemon import Flanneld

log = structlog.get_logger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _KeyedTable(Generic[K, V]):
    """A DeltaTracker over one kind of kernel object, with injected dump/write/remove."""

    def __init__(self, name: str, dump: Callable[[], dict[K, V]], write: Callable[[V], None],
                 remove: Callable[[V], bool]) -> None:
        self.name = name
        self._dump = dump
        self._write = write
        self._remove = remove
        self._t: DeltaTracker[K, V] = DeltaTracker()
        self._resync = True

    def set_desired(self, desired: dict[K, V]) -> None:
        self._t.replace_desired(desired)

    def queue_resync(self) -> None:
        self._resync = True

    def apply(self) -> bool:
        if self._resync:
            try:
                self._t.replace_dataplane(self._dump())
            except NetlinkError as e:
                if e.errno != errno.ENODEV:
                    raise
                self._t.replace_dataplane({})  # the device is not there (yet): nothing of ours is
            self._resync = False
        ok = True
        for k, v in self._t.pending_deletions():
            try:
                self._remove(v)
                self._t.on_dataplane_deleted(k)
                log.info(f"{self.name} deleted", obj=_show(v))
            except NetlinkError as e:
                ok = False
                log.warning(f"{self.name} delete failed", obj=_show(v), error=str(e), errno=e.errno)
        for k, v in self._t.pending_updates():
            try:
                self._write(v)
                self._t.on_dataplane_set(k, v)
                log.info(f"{self.name} replaced", obj=_show(v))
            except NetlinkError as e:
                ok = False
                log.warning(f"{self.name} replace failed", obj=_show(v), error=str(e), errno=e.errno)
                if e.errno == errno.ENODEV:
                    self._resync = True
        return ok and self._t.in_sync()


def _show(v: Any) -> str:
    if isinstance(v, Route):
        s = f"{v.dst}"
        if v.gateway:
            s += f" via {v.gateway}"
        if v.oif:
            s += f" dev {v.oif}"
        return s + (" onlink" if v.onlink else "")
    if isinstance(v, Neigh):
        return f"{v.dst} lladdr {v.lladdr} dev {v.ifname}"
    if isinstance(v, Fdb):
        return f"{v.lladdr} dst {v.dst} dev {v.ifname}"
    return str(v)


def route_table(nl: Netlink) -> _KeyedTable[Any, Route]:
    def dump() -> dict[Any, Route]:
        return {r.key: r for r in nl.routes(proto=RTPROT_FLANNELD)}

    return _KeyedTable("route", dump, nl.route_replace, nl.route_delete)


def neigh_table(nl: Netlink, dev: str) -> _KeyedTable[Any, Neigh]:
    def dump() -> dict[Any, Neigh]:
        return {n.key: n for n in nl.neighs(dev) if n.permanent}

    return _KeyedTable("neighbour", dump, nl.neigh_replace, nl.neigh_delete)


def fdb_table(nl: Netlink, dev: str) -> _KeyedTable[Any, Fdb]:
    def dump() -> dict[Any, Fdb]:
        return {f.key: f for f in nl.fdbs(dev) if not f.dst.is_unspecified}

    return _KeyedTable("fdb", dump, nl.fdb_replace, nl.fdb_delete)


# -- iptables -------------------------------------------------------------------------------
def _run(argv: list[str], stdin: str | None = None) -> str:
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise NetlinkError(f"{argv[0]} failed: {r.stderr.strip()}", errno=errno.EIO)
    return r.stdout


class _ChainsDriver:
    """Chains we own entirely, rewritten through `iptables-restore --noflush` when they drift."""

    name = "iptables"

    def __init__(self, run: Callable[[list[str], str | None], str] = _run) -> None:
        self._run = run
        self._want: tuple[IptChain, ...] = ()
        self._owned: set[tuple[str, str]] = set()  # chains ever desired (removed when undesired)
        self._resync = True
        self._in_sync = False

    def set_desired(self, chains: tuple[IptChain, ...]) -> None:
        if chains != self._want:
            self._in_sync = False
        self._want = chains
        self._owned |= {(c.table, c.name) for c in chains}

    def queue_resync(self) -> None:
        self._resync = True

    @staticmethod
    def _parse(save: str) -> dict[str, list[str]]:
        rules: dict[str, list[str]] = {}
        for line in save.splitlines():
            if line.startswith(":"):
                rules.setdefault(line[1:].split()[0], [])
            elif line.startswith("-A "):
                chain, _, rule = line[3:].partition(" ")
                rules.setdefault(chain, []).append(rule)
        return rules

    def _restore(self, table: str, lines: list[str]) -> None:
        self._run(["iptables-restore", "--noflush", "-w"], f"*{table}\n" + "\n".join(lines) + "\nCOMMIT\n")

    def _norm(self, rule: str) -> str:
        return rule.replace('"', "").replace("  ", " ").strip()

    def apply(self) -> bool:
        if not self._resync and self._in_sync:
            return True
        tables = sorted({c.table for c in self._want} | {t for t, _ in self._owned})
        for table in tables:
            have = self._parse(self._run(["iptables-save", "-t", table], None))
            want = [c for c in self._want if c.table == table]
            lines: list[str] = []
            for c in want:
                cur = [self._norm(r) for r in have.get(c.name, [])]
                if c.name not in have or cur != [self._norm(r) for r in c.rules]:
                    lines.append(f":{c.name} - [0:0]")  # declared under --noflush: flushed
                    lines += [f"-A {c.name} {r}" for r in c.rules]
                jumps = [self._norm(r) for r in have.get(c.hook, [])]
                if self._norm(c.jump) not in jumps:
                    lines.append(f"-I {c.hook} 1 {c.jump}")
            for t, name in sorted(self._owned):
                if t == table and name not in {c.name for c in want} and name in have:
                    for r in have.get("POSTROUTING", []) + have.get("FORWARD", []):
                        if r.endswith(f"-j {name}"):
                            hook = "POSTROUTING" if r in have.get("POSTROUTING", []) else "FORWARD"
                            lines.append(f"-D {hook} {r}")
                    lines += [f"-F {name}", f"-X {name}"]
            if lines:
                self._restore(table, lines)
                log.info("iptables chains written", table=table, lines=len(lines))
        self._resync = False
        self._in_sync = True
        return True

    def remove_all(self) -> None:
        """Delete our chains and the jumps to them (clean shutdown)."""
        for (table, name) in sorted(self._owned):
            have = self._parse(self._run(["iptables-save", "-t", table], None))
            if name not in have:
                continue
            lines = []
            for hook in ("POSTROUTING", "FORWARD"):
                for r in have.get(hook, []):
                    if r.endswith(f"-j {name}"):
                        lines.append(f"-D {hook} {r}")
            lines += [f"-F {name}", f"-X {name}"]
            self._restore(table, lines)
            log.info("iptables chain removed", table=table, chain=name)
        self._in_sync = False


def iptables_available() -> bool:
    return shutil.which("iptables-restore") is not None and shutil.which("iptables-save") is not None


def table_bindings(d: Flanneld) -> list[Binding[FlannelSpec]]:
    """The drivers after the vxlan device, in application order."""
    assert d.config is not None
    nl = d.nl
    out: list[Binding[FlannelSpec]] = []
    if d.config.backend.type == "vxlan":
        dev = d.config.backend.device
        nt = neigh_table(nl, dev)
        ft = fdb_table(nl, dev)
        out.append(Binding(nt, lambda s: nt.set_desired(dict(s.neighs))))
        out.append(Binding(ft, lambda s: ft.set_desired(dict(s.fdbs))))
    rt = route_table(nl)
    out.append(Binding(rt, lambda s: rt.set_desired(dict(s.routes))))
    if (d.opts.ip_masq or d.opts.iptables_forward_rules) and iptables_available():
        ch = _ChainsDriver()
        d._iptables = ch
        out.append(Binding(ch, lambda s: ch.set_desired(s.chains)))
    return out
