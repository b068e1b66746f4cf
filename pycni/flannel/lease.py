"""LeaseManager: this node's subnet lease, acquired, renewed and watched exactly as flanneld does it.

Acquisition follows flannel's local_manager.go `tryAcquireLease`, so a mixed cluster of real
flanneld and pycni-flanneld agrees on who owns what:

1. list the leases; one whose PublicIP is ours and that fits the config (SubnetLen, within
   SubnetMin..SubnetMax) is reused: a TTL lease is rewritten with a fresh TTL, a reservation (a key
   with no etcd lease, written by an operator) is rewritten *without* a TTL, as flannel keeps ttl=0.
   Ours that do not fit the config any more are deleted;
2. otherwise the subnet of the previous run's subnet.env is recreated if nobody holds it;
3. otherwise one of the first 100 free subnets from SubnetMin is picked at random.
Every write is a create-if-absent or a CAS, so two nodes racing for one subnet cannot both win; the
loser lists again (up to RACE_RETRIES times).

Renewal is flannel's too: at `expiration - margin` the key is rewritten under a new TTL (a new etcd
lease plus a Put, not a keepalive). All timing reads the injected clock; `tick()` renews when due
and the daemon calls it from a small thread, tests call it after advancing a FakeClock.

Losing the lease (the key deleted, expired while we were stuck, or rewritten with another node's
PublicIP) is unrecoverable in place: routes, pods and subnet.env all hang off the subnet. flannel
shuts down ("Lease has been revoked"); so do we: `lost` is set and the `on_lost` callback fires, and
the daemon exits non-zero so its supervisor restarts it and it acquires afresh.
"""

from __future__ import annotations

import ipaddress
import random
import threading
from collections.abc import Callable
from dataclasses import replace

import structlog

from pycni.datastore import Datastore, Update, Versioned
from pycni.datastore.flannel import (
    DEFAULT_PREFIX,
    RACE_RETRIES,
    SUBNET_TTL,
    Lease,
    LeaseAttrs,
    NetConfig,
    decode_lease,
    subnet_key,
    subnets_prefix,
)
from pycni.errors import AlreadyExists, CasConflict, Invalid, PycniError, Transient
from pycni.testing.clock import Clock, SystemClock

log = structlog.get_logger(__name__)

MAX_CANDIDATES = 100  # flannel collects up to 100 free subnets and picks one at random


class OutOfSubnets(PycniError):
    pass


class LeaseManager:
    def __init__(
        self,
        ds: Datastore,
        cfg: NetConfig,
        attrs: LeaseAttrs,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Clock | None = None,
        ttl: float = SUBNET_TTL,
        renew_margin: float = 3600.0,
        prev_subnet: ipaddress.IPv4Network | None = None,
        rng: random.Random | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self._ds = ds
        self.cfg = cfg
        self.attrs = attrs
        self._prefix = prefix
        self._clock = clock or SystemClock()
        self.ttl = ttl
        # A margin at least as long as the TTL would renew continuously: cap it at half the TTL.
        self.renew_margin = min(renew_margin, ttl / 2)
        self._prev = prev_subnet
        self._rng = rng or random.Random()
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self.lease: Lease | None = None
        self.lost: str | None = None
        self.renewals = 0

    # -- acquisition -----------------------------------------------------------------------
    def _records(self) -> list[tuple[Versioned, Lease]]:
        out = []
        for v in self._ds.list(subnets_prefix(self._prefix)):
            try:
                out.append((v, decode_lease(v.key, v.value)))
            except Invalid as e:
                log.warning("bad lease record ignored", key=v.key, error=str(e))
        return out

    def _held(self, v: Versioned, lease: Lease, reservation: bool) -> Lease:
        exp = None if reservation else self._clock.now() + self.ttl
        return replace(lease, key=v.key, revision=v.revision, etcd_lease=v.lease, expiration=exp)

    def acquire(self) -> Lease:
        """Acquire (or take back) this node's lease; raises OutOfSubnets or Transient."""
        value = self.attrs.to_json()
        for attempt in range(RACE_RETRIES):
            records = self._records()
            # 1. an existing lease or reservation with our PublicIP
            for v, lease in records:
                if lease.attrs.public_ip != self.attrs.public_ip:
                    continue
                if not self.cfg.compatible(lease.subnet):
                    log.info("lease deleted", subnet=str(lease.subnet), reason="incompatible with config")
                    try:
                        self._ds.delete(v.key, revision=v.revision)
                    except CasConflict:
                        pass
                    continue
                reservation = v.lease == 0
                try:
                    nv = self._ds.update(v.key, value, revision=v.revision,
                                         ttl=None if reservation else self.ttl)
                except CasConflict:
                    break  # changed under us: list again
                self.lease = self._held(nv, replace(lease, attrs=self.attrs), reservation)
                log.info("lease reused", subnet=str(lease.subnet), reservation=reservation)
                return self.lease
            else:
                taken = [lease.subnet for _, lease in records]

                def free(sn: ipaddress.IPv4Network, taken: list[ipaddress.IPv4Network] = taken) -> bool:
                    return not any(sn.overlaps(t) for t in taken)

                # 2. the subnet of the previous run, if still free
                chosen: ipaddress.IPv4Network | None = None
                if self._prev is not None and self.cfg.compatible(self._prev) and free(self._prev):
                    chosen = self._prev
                    why = "previous subnet.env"
                else:
                    # 3. a random one of the first free subnets
                    cands: list[ipaddress.IPv4Network] = []
                    for sn in self.cfg.candidate_subnets():
                        if free(sn):
                            cands.append(sn)
                            if len(cands) >= MAX_CANDIDATES:
                                break
                    if not cands:
                        raise OutOfSubnets(f"out of subnets in {self.cfg.network}")
                    chosen = self._rng.choice(cands)
                    why = "free"
                key = subnet_key(chosen, self._prefix)
                try:
                    nv = self._ds.create(key, value, ttl=self.ttl)
                except AlreadyExists:
                    log.info("subnet race lost, retrying", subnet=str(chosen), attempt=attempt + 1)
                    continue
                self.lease = self._held(nv, Lease(chosen, self.attrs, key=key), False)
                log.info("lease acquired", subnet=str(chosen), source=why, ttl=self.ttl)
                return self.lease
        raise Transient(f"could not acquire a subnet lease after {RACE_RETRIES} races")

    # -- renewal ---------------------------------------------------------------------------
    def renew_at(self) -> float | None:
        """Clock time the next renewal is due (None: nothing to renew, e.g. a reservation)."""
        lease = self.lease
        if lease is None or lease.expiration is None or self.lost:
            return None
        return lease.expiration - self.renew_margin

    def tick(self) -> bool:
        """Renew if due; returns True when a renewal was written. Sets `lost` when it cannot be."""
        due = self.renew_at()
        if due is None or self._clock.now() < due:
            return False
        self.renew()
        return True

    def renew(self) -> None:
        with self._lock:
            lease = self.lease
            if lease is None or self.lost:
                return
            value = self.attrs.to_json()
            for _ in range(RACE_RETRIES):
                cur = self._ds.get(lease.key)
                if cur is None:
                    self._lose("lease expired or was revoked before renewal")
                    return
                try:
                    attrs = LeaseAttrs.from_json(cur.value)
                except Invalid:
                    attrs = None
                if attrs is None or attrs.public_ip != self.attrs.public_ip:
                    self._lose(f"lease was taken over: {cur.value}")
                    return
                try:
                    nv = self._ds.update(lease.key, value, revision=cur.revision, ttl=self.ttl)
                except CasConflict:
                    continue
                self.lease = replace(lease, revision=nv.revision, etcd_lease=nv.lease,
                                     expiration=self._clock.now() + self.ttl)
                self.renewals += 1
                log.info("lease renewed", subnet=str(lease.subnet), ttl=self.ttl, renewals=self.renewals)
                return
            raise Transient("lease renewal kept losing CAS races")

    # -- watching --------------------------------------------------------------------------
    def observe(self, update: Update) -> None:
        """Feed every datastore update here (from the watch): notices our own lease vanishing."""
        lease = self.lease
        if lease is None or update.key != lease.key or self.lost:
            return
        if update.value is None:
            self._lose("lease has been revoked (deleted or expired)")
            return
        try:
            attrs = LeaseAttrs.from_json(update.value)
        except Invalid:
            self._lose(f"lease was overwritten with an invalid value: {update.value}")
            return
        if attrs.public_ip != self.attrs.public_ip:
            self._lose(f"lease was taken by {attrs.public_ip}")

    def _lose(self, why: str) -> None:
        self.lost = why
        lease = self.lease
        log.critical("lease lost", subnet=str(lease.subnet) if lease else None, reason=why)
        if self._on_lost is not None:
            self._on_lost(why)
