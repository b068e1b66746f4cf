"""BlockAllocator: Calico-style block IPAM over the Datastore seam, every write a compare-and-swap.

Where addresses come from, in order (libcalico-go `ipam.go:autoAssign`):
  1. blocks affine to this node (confirmed affinities), lowest CIDR first;
  2. a new block claimed from an enabled pool that selects this node, when `auto_allocate_blocks`:
     affinity `pending` -> block created with `affinity: host:<node>` -> affinity `confirmed`.
     Pools are walked from a start block chosen by a hash of the node name, so nodes starting at the
     same moment rarely race for the same block (Calico seeds its random generator the same way);
  3. any other block with free addresses ("borrowing"), unless `strict_affinity` is set.

Every write quotes the revision it read (`Datastore.update(revision=)`, `create`, `delete(revision=)`).
A lost CAS drops the local copy, re-reads and recomputes; after `retries` losses `RetriesExhausted`
(a `Transient`) escapes, which the CNI reports as code 11 "try again later". Between attempts we
sleep a short, jittered, growing time, so 100 racing writers spread out instead of livelocking.

Crash safety, the handle invariant: for every allocation in a block, the handle record
`/calico/ipam/v2/handle/<id>` counts at least that allocation. Assignment therefore increments the
handle *before* the block CAS (and decrements it again if the CAS is lost); release frees the block
*before* dropping the block from the handle. A crash between the two steps leaves the handle
over-counting, never an address without a handle, so `release_by_handle` always finds everything and
also cleans up the over-count (it drops the block from the handle once the block holds nothing of
that handle). This is the order libcalico-go uses (`assignFromExistingBlock`, `releaseByHandle`).
"""

from __future__ import annotations

import functools
import ipaddress
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from pycni.datastore import Datastore, Versioned, calico
from pycni.datastore.calico import USE_TUNNEL, USE_WORKLOAD, IPPool
from pycni.errors import AlreadyExists, CasConflict, Invalid, PycniError, Transient
from pycni.ipam import keys
from pycni.ipam.block import AllocationAttribute, AllocationBlock, host_affinity
from pycni.ipam.keys import (
    STATE_CONFIRMED,
    STATE_PENDING,
    STATE_PENDING_DELETION,
    BlockAffinity,
    IPAMConfig,
    IPAMHandle,
)
from pycni.model import IPAddress, IPInterface, IPNetwork

log = structlog.get_logger(__name__)


DEFAULT_RETRIES = 100  # libcalico-go's datastoreRetries
EMPTY_BLOCK_MIN_RECLAIM_AGE = 60.0  # seconds; libcalico-go's EmptyBlockMinReclaimAge


class RetriesExhausted(Transient):
    """Every compare-and-swap attempt lost to a racing writer; the caller should try again later."""


class NoFreeAddresses(PycniError):
    """The eligible pools hold no free address (or no block may be claimed or borrowed)."""


@dataclass(frozen=True, slots=True)
class BlockUsage:
    cidr: IPNetwork
    node: str | None  # affine node, None when the block has no host affinity
    total: int
    in_use: int

    @property
    def free(self) -> int:
        return self.total - self.in_use


@dataclass(frozen=True, slots=True)
class PoolUsage:
    name: str
    cidr: IPNetwork
    disabled: bool
    total: int
    in_use: int
    blocks: tuple[BlockUsage, ...]

    @property
    def free(self) -> int:
        return self.total - self.in_use


def _fnv1_32(data: bytes) -> int:
    """FNV-1 32-bit, Go's `hash/fnv.New32` (Calico's seed for the per-host block order)."""
    h = 0x811C9DC5
    for b in data:
        h = (h * 0x01000193) & 0xFFFFFFFF
        h ^= b
    return h


def block_for(pool: IPPool, ip: IPAddress) -> IPNetwork:
    """The block CIDR that holds `ip` in `pool`."""
    return ipaddress.ip_network(f"{ip}/{pool.block_size}", strict=False)


def selects(pool: IPPool, labels: Callable[[], Mapping[str, str]]) -> bool:
    """Whether the pool's nodeSelector admits the node whose labels `labels()` returns.

    `all()` / empty and `!all()` need no labels; anything else is evaluated on the node's labels
    (its Calico Node resource) by the selector subset `pycni.calc.bgp.selector_matches` speaks:
    `has(k)`, `!has(k)`, `k == 'v'`, `k != 'v'`, `k in {...}`, joined by `&&` / `||`. A selector
    it cannot parse matches nothing (logged), the safe side for address assignment.
    """
    sel = pool.node_selector.strip()
    if sel in ("", "all()"):
        return True
    if sel == "!all()":
        return False
    from pycni.calc.bgp import selector_matches  # lazy: the one selector evaluator in pycni

    return selector_matches(sel, labels())


def block_order(pool: IPPool, node: str) -> Iterator[IPNetwork]:
    """Every block CIDR of `pool`, starting at a node-specific block and wrapping around."""
    n_blocks = 1 << (pool.block_size - pool.cidr.prefixlen)
    step = 1 << (pool.cidr.max_prefixlen - pool.block_size)
    if pool.block_size == pool.cidr.max_prefixlen:
        start = random.randrange(n_blocks)  # single-address blocks: no point in a stable start
    else:
        start = random.Random(_fnv1_32(node.encode())).randrange(n_blocks)
    base = int(pool.cidr.network_address)
    for i in range(n_blocks):
        idx = (start + i) % n_blocks
        yield ipaddress.ip_network((base + idx * step, pool.block_size))


def read_pools(ds: Datastore) -> list[IPPool]:
    """Every decodable IPPool, by name. A bad record is logged and skipped, never fatal."""
    return sorted(calico.list_resources(ds, IPPool), key=lambda p: p.name)


def _utc_rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_rfc3339(s: str | None) -> float | None:
    if not s:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class BlockAllocator:
    """Calico block IPAM for one node. Thread-safe: it holds no state besides its configuration."""

    def __init__(
        self,
        datastore: Datastore,
        *,
        node: str,
        retries: int = DEFAULT_RETRIES,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        backoff: float = 0.002,
        max_backoff: float = 0.1,
        rng: random.Random | None = None,
    ) -> None:
        if not node:
            raise Invalid("node name must not be empty", field="node")
        if retries < 1:
            raise Invalid("retries must be at least 1", field="retries")
        self._ds = datastore
        self.node = node
        self.retries = retries
        self._wall = wall_clock
        self._sleep = sleep
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._rng = rng or random.Random()
        self._affinity = host_affinity(node)

    # -- plumbing --------------------------------------------------------------------------------
    def _attempts(self, what: str, **ctx: object) -> Iterator[int]:
        """Yield attempt numbers; sleep with jittered back-off between; raise when they run out."""
        for i in range(self.retries):
            if i:
                delay = min(self._backoff * (2 ** min(i, 10)), self._max_backoff)
                self._sleep(delay * (0.5 + self._rng.random()))
            yield i
        log.warning("ipam retries exhausted", op=what, retries=self.retries, **ctx)
        raise RetriesExhausted(f"{what}: {self.retries} compare-and-swap attempts lost to racing writers")

    def _get_block(self, cidr: IPNetwork) -> tuple[AllocationBlock, int] | None:
        v = self._ds.get(keys.block_key(cidr))
        if v is None:
            return None
        return AllocationBlock.from_json(v.value), v.revision

    def _list_blocks(self, version: int | None = None) -> dict[IPNetwork, AllocationBlock | None]:
        """All blocks by CIDR; an undecodable block maps to None (it exists, but we will not use it)."""
        out: dict[IPNetwork, AllocationBlock | None] = {}
        for v in self._ds.list(keys.block_prefix(version)):
            cidr = keys.parse_block_key(v.key)
            if cidr is None:
                continue
            try:
                out[cidr] = AllocationBlock.from_json(v.value)
            except Invalid as e:
                log.warning("bad ipam block skipped", key=v.key, error=str(e))
                out[cidr] = None
        return out

    def _write_block(self, block: AllocationBlock, revision: int) -> None:
        """CAS the block back, or delete it when it is empty and nobody holds its affinity."""
        key = keys.block_key(block.cidr)
        if block.empty() and block.affinity is None:
            self._ds.delete(key, revision=revision)
            log.info("ipam block deleted", block=str(block.cidr))
        else:
            self._ds.update(key, block.to_json(), revision=revision)

    # -- configuration ---------------------------------------------------------------------------
    def config(self) -> IPAMConfig:
        v = self._ds.get(keys.IPAM_CONFIG_KEY)
        return IPAMConfig() if v is None else IPAMConfig.from_json(v.value)

    def set_config(self, cfg: IPAMConfig) -> None:
        if not cfg.strict_affinity and not cfg.auto_allocate_blocks:
            raise Invalid("auto_allocate_blocks=false requires strict_affinity=true (as in Calico)")
        if cfg.max_blocks_per_host and not cfg.strict_affinity:
            raise Invalid("maxBlocksPerHost requires strict_affinity=true (as in Calico)")
        self._ds.put(keys.IPAM_CONFIG_KEY, cfg.to_json())
        log.info("ipam config written", strict_affinity=cfg.strict_affinity,
                 auto_allocate_blocks=cfg.auto_allocate_blocks)

    def pools(self) -> list[IPPool]:
        return read_pools(self._ds)

    def _node_labels(self) -> Mapping[str, str]:
        """This node's labels from its Calico Node resource ({} when it has none yet)."""
        try:
            got = calico.get_resource(self._ds, calico.Node, self.node)
        except Invalid as e:
            log.warning("bad node resource, no labels for pool selectors", node=self.node, error=str(e))
            return {}
        return {} if got is None else dict(got[0].meta.labels)

    def _candidate_pools(self, requested: Sequence[str] | None, version: int, use: str) -> list[IPPool]:
        all_pools = [p for p in self.pools() if p.cidr.version == version and use in p.allowed_uses]
        if requested is None:
            labels = functools.cache(self._node_labels)  # read the Node at most once per call
            return [
                p for p in all_pools
                if not p.disabled and p.assignment_mode == "Automatic" and selects(p, labels)
            ]
        chosen: list[IPPool] = []
        for want in requested:
            match = [p for p in all_pools if p.name == want or str(p.cidr) == want]
            if not match:
                raise Invalid(f"IP pool {want!r} does not exist (for IPv{version} {use} addresses)",
                              field="pools")
            if match[0].disabled:
                raise Invalid(f"IP pool {want!r} is disabled", field="pools")
            chosen.append(match[0])
        return chosen

    # -- affinities ------------------------------------------------------------------------------
    def blocks_for_node(self, node: str | None = None, *, version: int | None = None) -> list[IPNetwork]:
        """The block CIDRs a node holds a confirmed affinity for, lowest first."""
        node = node or self.node
        out: list[IPNetwork] = []
        for v in self._ds.list(keys.affinity_prefix(node)):
            parsed = keys.parse_affinity_key(v.key)
            if parsed is None or parsed[0] != node:
                continue
            if version is not None and parsed[1].version != version:
                continue
            try:
                aff = BlockAffinity.from_json(v.value)
            except Invalid as e:
                log.warning("bad block affinity skipped", key=v.key, error=str(e))
                continue
            if aff.state == STATE_CONFIRMED and not aff.deleted:
                out.append(parsed[1])
        return sorted(out, key=lambda c: (c.version, int(c.network_address)))

    def _pending_affinity(self, cidr: IPNetwork) -> Versioned:
        """Create our affinity in `pending`, or adopt an existing one (re-marking a stale one pending)."""
        key = keys.affinity_key(self.node, cidr)
        for _ in self._attempts("claim affinity", block=str(cidr)):
            try:
                return self._ds.create(key, BlockAffinity(STATE_PENDING).to_json())
            except AlreadyExists:
                pass
            cur = self._ds.get(key)
            if cur is None:
                continue
            aff = BlockAffinity.from_json(cur.value)
            if aff.state == STATE_CONFIRMED:
                return cur
            try:
                return self._ds.update(key, BlockAffinity(STATE_PENDING).to_json(), revision=cur.revision)
            except CasConflict:
                continue
        raise AssertionError("unreachable")  # pragma: no cover

    def _confirm_affinity(self, cidr: IPNetwork, aff: Versioned | None) -> None:
        """Move our affinity to `confirmed`, whatever other claimers on this node did meanwhile.

        Another process of the same node may have re-marked it `pending` (a concurrent claim of the
        same block) or confirmed it already; both are fine once the block is ours.
        """
        key = keys.affinity_key(self.node, cidr)
        confirmed = BlockAffinity(STATE_CONFIRMED).to_json()
        for _ in self._attempts("confirm affinity", block=str(cidr)):
            try:
                if aff is None:
                    self._ds.create(key, confirmed)
                else:
                    state = BlockAffinity.from_json(aff.value).state
                    if state == STATE_CONFIRMED:
                        return
                    if state == STATE_PENDING_DELETION:  # being released by this node right now
                        log.info("block affinity being released, not confirming", block=str(cidr))
                        return
                    self._ds.update(key, confirmed, revision=aff.revision)
            except (CasConflict, AlreadyExists):
                aff = self._ds.get(key)
                continue
            log.info("block affinity confirmed", block=str(cidr), node=self.node)
            return

    def claim_affinity(self, cidr: IPNetwork | str) -> bool:
        """Claim `cidr` as this node's block (pending -> block create -> confirmed).

        True when the node holds the block afterwards (also when it already did); False when another
        node owns it (our pending affinity is removed again).
        """
        cidr = ipaddress.ip_network(cidr)
        aff = self._pending_affinity(cidr)
        blk = AllocationBlock.new(
            cidr, affinity=self._affinity, claim_time=_utc_rfc3339(self._wall()),
            sequence_number=int(self._wall() * 1e9),
        )
        try:
            self._ds.create(keys.block_key(cidr), blk.to_json())
            log.info("ipam block created", block=str(cidr), node=self.node)
        except AlreadyExists:
            got = self._get_block(cidr)
            if got is None or got[0].affinity != self._affinity:
                # Someone else's block (or it vanished under us): drop our pending claim.
                try:
                    self._ds.delete(keys.affinity_key(self.node, cidr), revision=aff.revision)
                except CasConflict:
                    pass
                log.info("block claim lost", block=str(cidr), node=self.node,
                         owner=None if got is None else got[0].host)
                return False
        self._confirm_affinity(cidr, aff)
        return True

    def release_affinity(
        self, cidr: IPNetwork | str, *, node: str | None = None, require_empty: bool = False,
        required_sequence: int | None = None,
    ) -> bool:
        """Give up `node`'s affinity for a block (libcalico-go `releaseBlockAffinity`).

        The affinity goes `pendingDeletion`; an empty block is deleted, a non-empty one loses its
        affinity (its addresses stay allocated, now borrowed); then the affinity key is deleted.
        Returns False when the node held no affinity (idempotent) or, with `require_empty`, when the
        block is in use.
        """
        cidr = ipaddress.ip_network(cidr)
        node = node or self.node
        akey = keys.affinity_key(node, cidr)
        for _ in self._attempts("release affinity", block=str(cidr)):
            aff = self._ds.get(akey)
            if aff is None:
                return False
            got = self._get_block(cidr)
            if got is None:
                try:
                    self._ds.delete(akey, revision=aff.revision)
                except CasConflict:
                    continue
                return True
            block, rev = got
            if required_sequence is not None and block.sequence_number != required_sequence:
                return False
            if block.affinity != host_affinity(node):
                try:  # stale affinity: the block is someone else's
                    self._ds.delete(akey, revision=aff.revision)
                except CasConflict:
                    continue
                return True
            if require_empty and not block.empty():
                return False
            try:
                doomed = BlockAffinity(STATE_PENDING_DELETION).to_json()
                aff = self._ds.update(akey, doomed, revision=aff.revision)
                if block.empty():
                    self._ds.delete(keys.block_key(cidr), revision=rev)
                    log.info("ipam block deleted", block=str(cidr))
                else:
                    b = block.copy()
                    b.affinity = None
                    b.affinity_claim_time = None
                    b.sequence_number += 1
                    self._ds.update(keys.block_key(cidr), b.to_json(), revision=rev)
                self._ds.delete(akey, revision=aff.revision)
            except CasConflict:
                continue
            log.info("block affinity released", block=str(cidr), node=node)
            return True
        raise AssertionError("unreachable")  # pragma: no cover

    # -- handles ---------------------------------------------------------------------------------
    def _increment_handle(self, handle_id: str, cidr: IPNetwork, n: int) -> None:
        key = keys.handle_key(handle_id)
        cur: Versioned | None = None
        for attempt in self._attempts("increment handle", handle=handle_id):
            if attempt:  # the first try assumes a new handle (the common CNI ADD): one round trip
                cur = self._ds.get(key)
            if cur is None:
                try:
                    self._ds.create(key, IPAMHandle({str(cidr): n}).to_json())
                    return
                except AlreadyExists:
                    continue
            h = IPAMHandle.from_json(cur.value)
            h.block[str(cidr)] = h.block.get(str(cidr), 0) + n
            try:
                self._ds.update(key, h.to_json(), revision=cur.revision)
                return
            except CasConflict:
                continue

    def _decrement_handle(self, handle_id: str, cidr: IPNetwork, n: int | None) -> None:
        """Take `n` addresses in `cidr` off the handle (None: the whole block); delete it when empty."""
        key = keys.handle_key(handle_id)
        for _ in self._attempts("decrement handle", handle=handle_id):
            cur = self._ds.get(key)
            if cur is None:
                return
            h = IPAMHandle.from_json(cur.value)
            left = 0 if n is None else h.block.get(str(cidr), 0) - n
            if left > 0:
                h.block[str(cidr)] = left
            else:
                h.block.pop(str(cidr), None)
            try:
                if h.empty():
                    self._ds.delete(key, revision=cur.revision)
                else:
                    self._ds.update(key, h.to_json(), revision=cur.revision)
                return
            except CasConflict:
                continue

    # -- assignment ------------------------------------------------------------------------------
    def _assign_from_block(
        self, cidr: IPNetwork, num: int, handle_id: str | None, attrs: Mapping[str, str] | None,
        *, own: bool,
    ) -> list[IPInterface]:
        """Up to `num` addresses from one block (CAS loop). `own`: only while it is still ours.

        The handle is credited before the block CAS (the crash-safety invariant); a lost CAS keeps
        the credit for the next attempt instead of undoing it, and only the difference is settled
        at the end, which saves two writes per lost race.
        """
        credit = 0  # addresses in this block the handle already counts for us
        ips: list[IPInterface] = []
        try:
            for _ in self._attempts("assign from block", block=str(cidr)):
                ips = []
                try:
                    got = self._get_block(cidr)
                except Invalid as e:
                    log.warning("bad ipam block skipped", block=str(cidr), error=str(e))
                    break
                if got is None:
                    break
                block, rev = got
                if (own and block.affinity != self._affinity) or block.num_free() == 0:
                    break
                b = block.copy()
                new = b.auto_assign(num, handle_id, attrs)
                b.sequence_number += 1
                if handle_id is not None and len(new) > credit:
                    self._increment_handle(handle_id, cidr, len(new) - credit)
                    credit = len(new)
                try:
                    self._ds.update(keys.block_key(cidr), b.to_json(), revision=rev)
                except CasConflict:
                    continue
                ips = new
                log.info("addresses assigned", block=str(cidr), ips=[str(i.ip) for i in ips],
                         handle=handle_id, node=self.node, borrowed=not own)
                break
        except RetriesExhausted:
            ips = []  # settle the credit below, then give up
            if handle_id is not None and credit:
                self._decrement_handle(handle_id, cidr, credit)
            raise
        if handle_id is not None and credit > len(ips):
            self._decrement_handle(handle_id, cidr, credit - len(ips))
        return ips

    def _find_claimable(self, pools: Sequence[IPPool], cfg: IPAMConfig, version: int) -> IPNetwork | None:
        """A block CIDR to claim: unclaimed, or ours with room; else an old empty block to reclaim."""
        existing = self._list_blocks(version)
        if cfg.max_blocks_per_host:
            mine = [c for c, b in existing.items() if b is not None and b.affinity == self._affinity]
            if len(mine) >= cfg.max_blocks_per_host:
                return None
        empties: list[tuple[IPNetwork, AllocationBlock]] = []
        for pool in pools:
            for cidr in block_order(pool, self.node):
                if cidr not in existing:
                    return cidr
                b = existing[cidr]
                if b is None:
                    continue
                if b.affinity == self._affinity and b.num_free():
                    return cidr
                if b.empty() and b.num_free() and b.host and b.host != self.node:
                    empties.append((cidr, b))
        now = self._wall()
        for cidr, b in empties:
            claimed = _parse_rfc3339(b.affinity_claim_time)
            if claimed is not None and now - claimed < EMPTY_BLOCK_MIN_RECLAIM_AGE:
                continue
            assert b.host is not None
            if self.release_affinity(
                cidr, node=b.host, require_empty=True, required_sequence=b.sequence_number
            ):
                log.info("empty block reclaimed", block=str(cidr), previous_node=b.host, node=self.node)
                return cidr
        return None

    def auto_assign(
        self, handle_id: str | None, attrs: Mapping[str, str] | None = None, *,
        pools: Sequence[str] | None = None, num: int = 1, version: int = 4, use: str | None = None,
    ) -> list[IPInterface]:
        """Assign `num` addresses to `handle_id`; returns them block-masked (e.g. 10.244.0.5/26).

        All or nothing: when fewer than `num` can be found, whatever was taken is released again and
        `NoFreeAddresses` is raised. `pools` are pool names or CIDRs; None means every enabled pool
        of the family whose nodeSelector admits this node. `use` is the pool's allowedUses entry the
        address is for: "Workload" by default, "Tunnel" for tunnel handles (`*-tunnel-addr-*`).
        """
        if num < 1:
            raise Invalid(f"num must be at least 1, not {num}", field="num")
        if use is None:
            use = USE_TUNNEL if handle_id and "-tunnel-addr-" in handle_id else USE_WORKLOAD
        cfg = self.config()
        candidates = self._candidate_pools(pools, version, use)
        if not candidates:
            raise NoFreeAddresses(f"no enabled IPv{version} pool for node {self.node}")

        def in_pools(c: IPNetwork) -> bool:
            return any(c.subnet_of(p.cidr) for p in candidates)  # type: ignore[arg-type]

        got: list[IPInterface] = []
        try:
            for cidr in self.blocks_for_node(version=version):
                if len(got) >= num:
                    break
                if in_pools(cidr):
                    got += self._assign_from_block(cidr, num - len(got), handle_id, attrs, own=True)
            if cfg.auto_allocate_blocks:
                for _ in range(self.retries):
                    if len(got) >= num:
                        break
                    new = self._find_claimable(candidates, cfg, version)
                    if new is None:
                        break
                    if not self.claim_affinity(new):
                        continue
                    got += self._assign_from_block(new, num - len(got), handle_id, attrs, own=True)
            if len(got) < num and not cfg.strict_affinity:
                others = sorted(self._list_blocks(version).items(), key=lambda kv: int(kv[0].network_address))
                for cidr, b in others:
                    if len(got) >= num:
                        break
                    if b is not None and b.num_free() and in_pools(cidr):
                        got += self._assign_from_block(cidr, num - len(got), handle_id, attrs, own=False)
        except BaseException:
            if got:
                self._undo(got)
            raise
        if len(got) < num:
            if got:
                self._undo(got)
            raise NoFreeAddresses(
                f"no free IPv{version} address for node {self.node} in pools "
                f"{', '.join(p.name for p in candidates)} (wanted {num}, found {len(got)})"
            )
        return got

    def _undo(self, ips: Sequence[IPInterface]) -> None:
        try:
            self.release_ips([i.ip for i in ips])
        except PycniError as e:  # the original error matters more; the handle record keeps the rest
            log.warning("ipam undo failed", ips=[str(i.ip) for i in ips], error=str(e))

    def assign_ip(
        self, ip: IPAddress | str, handle_id: str | None, attrs: Mapping[str, str] | None = None,
    ) -> IPInterface:
        """Assign one chosen address (the pool must be enabled); raises `AlreadyExists` when taken.

        When its block does not exist yet, this node claims it first (as libcalico-go's AssignIP).
        """
        ip = ipaddress.ip_address(ip)
        pool = next((p for p in self.pools() if not p.disabled and ip in p.cidr), None)
        if pool is None:
            raise Invalid(f"{ip} is not in any enabled IP pool", field="ip")
        cidr = block_for(pool, ip)
        for _ in self._attempts("assign ip", ip=str(ip)):
            got = self._get_block(cidr)
            if got is None:
                self.claim_affinity(cidr)
                continue
            block, rev = got
            cfg = self.config()
            if cfg.strict_affinity and block.affinity != self._affinity:
                owner = block.host or "no node"
                raise Invalid(f"{ip} is in block {cidr} of {owner} and strict affinity is on", field="ip")
            b = block.copy()
            iface = b.assign(ip, handle_id, attrs)
            b.sequence_number += 1
            if handle_id is not None:
                self._increment_handle(handle_id, cidr, 1)
            try:
                self._ds.update(keys.block_key(cidr), b.to_json(), revision=rev)
            except CasConflict:
                if handle_id is not None:
                    self._decrement_handle(handle_id, cidr, 1)
                continue
            log.info("address assigned", ip=str(ip), block=str(cidr), handle=handle_id, node=self.node)
            return iface
        raise AssertionError("unreachable")  # pragma: no cover

    # -- release ---------------------------------------------------------------------------------
    def release_ips(self, ips: Iterable[IPAddress | str]) -> list[IPAddress]:
        """Free addresses wherever they are; returns those that were not allocated (idempotent)."""
        wanted = [ipaddress.ip_address(i) for i in ips]
        if not wanted:
            return []
        blocks = list(self._list_blocks())
        by_block: dict[IPNetwork, list[IPAddress]] = {}
        not_allocated: list[IPAddress] = []
        for ip in wanted:
            cidr = next((c for c in blocks if ip in c), None)
            if cidr is None:
                not_allocated.append(ip)
            else:
                by_block.setdefault(cidr, []).append(ip)
        for cidr, group in by_block.items():
            for _ in self._attempts("release ips", block=str(cidr)):
                got = self._get_block(cidr)
                if got is None:
                    not_allocated += group
                    break
                block, rev = got
                b = block.copy()
                missing, by_handle = b.release(group)
                if len(missing) == len(group):
                    not_allocated += missing
                    break
                b.sequence_number += 1
                try:
                    self._write_block(b, rev)
                except CasConflict:
                    continue
                not_allocated += missing
                for h, n in by_handle.items():
                    self._decrement_handle(h, cidr, n)
                log.info("addresses released", block=str(cidr),
                         ips=[str(i) for i in group if i not in missing])
                break
        missing_set = set(not_allocated)
        return [ip for ip in dict.fromkeys(wanted) if ip in missing_set]  # in the caller's order

    def release_by_handle(self, handle_id: str) -> list[IPAddress]:
        """Free every address of `handle_id` and delete the handle; [] when there is none (idempotent)."""
        cur = self._ds.get(keys.handle_key(handle_id))
        if cur is None:
            log.debug("handle not found, nothing to release", handle=handle_id)
            return []
        h = IPAMHandle.from_json(cur.value)
        released: list[IPAddress] = []
        for c in sorted(h.block):
            try:
                cidr = ipaddress.ip_network(c)
            except ValueError:
                log.warning("bad block in handle", handle=handle_id, block=c)
                continue
            for _ in self._attempts("release by handle", handle=handle_id, block=c):
                got = self._get_block(cidr)
                if got is None:
                    break
                block, rev = got
                b = block.copy()
                ips = b.release_by_handle(handle_id)
                if not ips:
                    break
                b.sequence_number += 1
                try:
                    self._write_block(b, rev)
                except CasConflict:
                    continue
                released += ips
                log.info("addresses released", block=c, ips=[str(i) for i in ips], handle=handle_id)
                break
            self._decrement_handle(handle_id, cidr, None)
        return released

    # -- reading ---------------------------------------------------------------------------------
    def get_assignment(self, ip: IPAddress | str) -> AllocationAttribute | None:
        """The attributes (handle, pod, namespace, node) of an allocated address, or None."""
        ip = ipaddress.ip_address(ip)
        for cidr, b in self._list_blocks(ip.version).items():
            if ip in cidr and b is not None:
                return b.attribute_for(ip)
        return None

    def ips_by_handle(self, handle_id: str) -> list[IPAddress]:
        out: list[IPAddress] = []
        cur = self._ds.get(keys.handle_key(handle_id))
        if cur is None:
            return out
        for c in sorted(IPAMHandle.from_json(cur.value).block):
            got = self._get_block(ipaddress.ip_network(c))
            if got is not None:
                out += got[0].ips_by_handle(handle_id)
        return out

    def usage(self) -> list[PoolUsage]:
        """Per pool (disabled ones too): addresses total / in use, and each block inside it."""
        blocks = self._list_blocks()
        out: list[PoolUsage] = []
        for pool in self.pools():
            rows: list[BlockUsage] = []
            for cidr, b in sorted(blocks.items(), key=lambda kv: (kv[0].version, int(kv[0].network_address))):
                if cidr.version != pool.cidr.version or not cidr.subnet_of(pool.cidr):  # type: ignore[arg-type]
                    continue
                if b is None:
                    continue
                rows.append(BlockUsage(cidr=cidr, node=b.host, total=b.size, in_use=b.in_use()))
            out.append(PoolUsage(
                name=pool.name, cidr=pool.cidr, disabled=pool.disabled, total=pool.cidr.num_addresses,
                in_use=sum(r.in_use for r in rows), blocks=tuple(rows),
            ))
        return out
