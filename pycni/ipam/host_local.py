"""host-local IPAM with the reference plugin's on-disk layout, so either can take over from the other.

Layout (containernetworking/plugins: plugins/ipam/host-local/backend/disk/backend.go), under
`<dataDir>/<network name>/`:
- one file per allocated address, named after it (`10.244.1.7`), created with O_EXCL (the
  filesystem is both the lock and the database), holding `<containerID>\\r\\n<ifname>`;
- `last_reserved_ip.<rangeIdx>`: the last address handed out in that range (round-robin resumes
  after it, so a freed address is not reused at once; a fresh pod never inherits a dead pod's
  conntrack entries or ARP caches);
- `lock`: flock'd for every mutation (go-filemutex), shared with the Go plugin.

Allocation: ranges are tried in order; the gateway (default `.1`), network and broadcast addresses
are skipped; /31 and /32 are rejected as too small, as the reference does. Release matches
`id\\r\\nifname`, and for files written by old plugins that stored only the id, the id alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pycni.errors import Invalid, PycniError

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
LINE_BREAK = "\r\n"


class Exhausted(PycniError):
    """No free address is left in any range."""


class DuplicateAllocation(PycniError):
    """This container/ifname already holds an address in the range (the reference refuses too)."""


@dataclass(frozen=True, slots=True)
class Range:
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    range_start: ipaddress.IPv4Address | ipaddress.IPv6Address
    range_end: ipaddress.IPv4Address | ipaddress.IPv6Address
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Range:
        try:
            subnet = ipaddress.ip_network(str(d["subnet"]), strict=False)
        except (KeyError, ValueError) as e:
            raise Invalid(f"host-local range needs a valid subnet: {e}", field="subnet") from None
        if subnet.num_addresses < 4:
            raise Invalid(f"Network {subnet} too small to allocate from", field="subnet")
        first = subnet.network_address + 1
        last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
        try:
            start = ipaddress.ip_address(str(d["rangeStart"])) if d.get("rangeStart") else first
            end = ipaddress.ip_address(str(d["rangeEnd"])) if d.get("rangeEnd") else last
            gw = ipaddress.ip_address(str(d["gateway"])) if d.get("gateway") else first
        except ValueError as e:
            raise Invalid(f"host-local range: {e}") from None
        for what, a in (("rangeStart", start), ("rangeEnd", end)):
            if a not in subnet:
                raise Invalid(f"{what} {a} not in network {subnet}", field=what)
        if int(start) > int(end):
            raise Invalid(f"rangeStart {start} is after rangeEnd {end}")
        return cls(subnet, start, end, gw)

    def addresses_after(
        self, last: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    ) -> Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Every candidate once, starting after `last` (round-robin) and wrapping around."""
        start_i, end_i = int(self.range_start), int(self.range_end)
        n = end_i - start_i + 1
        first = start_i
        if last is not None and start_i <= int(last) <= end_i:
            first = int(last) + 1
            if first > end_i:
                first = start_i
        cls = type(self.range_start)
        for k in range(n):
            i = first + k
            if i > end_i:
                i -= n
            a = cls(i)
            if a == self.gateway:
                continue
            yield a


@dataclass(frozen=True, slots=True)
class Allocation:
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    range_index: int


class HostLocalStore:
    """One network's directory: reserve, release, look up; every mutation under the flock."""

    def __init__(self, data_dir: str | os.PathLike[str], network: str) -> None:
        if not network or "/" in network or network in (".", ".."):
            raise Invalid(f"invalid network name {network!r}", field="name")
        self.dir = Path(data_dir) / network
        self._d = str(self.dir)

    @contextmanager
    def locked(self) -> Iterator[None]:
        try:
            fd = os.open(f"{self._d}/lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = os.open(f"{self._d}/lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    # -- primitives (call under `locked()`) -----------------------------------------------
    def _reserve(
        self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, cid: str, ifname: str, idx: int
    ) -> bool:
        try:
            fd = os.open(f"{self._d}/{ip}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        try:
            os.write(fd, f"{cid}{LINE_BREAK}{ifname}".encode())
        finally:
            os.close(fd)
        self._write(f"last_reserved_ip.{idx}", str(ip))
        return True

    def _write(self, name: str, text: str) -> None:
        # Overwrite in place, then cut to length (the reference truncates first, os.WriteFile): we
        # hold the lock, and a torn last_reserved_ip only moves where the round-robin resumes.
        # Not O_TRUNC: on ext4 a truncate to zero arms auto_da_alloc, which starts writeback at
        # close(), ~0.15 ms per ADD here; a shrinking ftruncate() does not.
        fd = os.open(f"{self._d}/{name}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            data = text.encode()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def _last_reserved(self, idx: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(_read(f"{self._d}/last_reserved_ip.{idx}").strip())
        except (OSError, ValueError):
            return None

    def _owner(self, name: str) -> tuple[str, str] | None:
        try:  # bytes, not text: a text read would translate the "\r\n" separator away
            text = _read(f"{self._d}/{name}")
        except OSError:
            return None
        cid, _, ifname = text.partition(LINE_BREAK)
        return cid.strip(), ifname.strip()

    def _ip_files(self) -> list[str]:
        # An address file's name starts with a digit (v4) or a hex digit / ':' (v6); everything
        # else (lock, last_reserved_ip.N, temp files) is skipped without parsing.
        out = []
        for name in os.listdir(self._d):
            if name[0] in "lL.":
                continue
            try:
                ipaddress.ip_address(name)
            except ValueError:
                continue
            out.append(name)
        return out

    # -- API ---------------------------------------------------------------------------------
    def allocate(
        self, ranges: list[Range], cid: str, ifname: str, *, check_duplicate: bool = True
    ) -> list[Allocation]:
        """One address per range (a reference "rangeset" each); all-or-nothing.

        `check_duplicate` refuses a second address for the same (cid, ifname) in a range, as the
        reference does; it reads every allocation file, O(pods). Callers that already fail a
        second ADD of one attachment another way (the CNI plugin: the pod's interface exists) may
        skip it.
        """
        with self.locked():
            mine = set(self._find(cid, ifname)) if check_duplicate else set()
            got: list[Allocation] = []
            try:
                for idx, r in enumerate(ranges):
                    if any(ipaddress.ip_address(m) in r.subnet for m in mine):
                        raise DuplicateAllocation(
                            f"{cid}/{ifname} already has an address in {r.subnet}, "
                            "duplicate allocation is not allowed"
                        )
                    for ip in r.addresses_after(self._last_reserved(idx)):
                        if self._reserve(ip, cid, ifname, idx):
                            got.append(
                                Allocation(ipaddress.ip_interface((ip, r.subnet.prefixlen)), r.gateway, idx)
                            )
                            break
                    else:
                        raise Exhausted(
                            f"no IP addresses available in range set: {r.range_start}-{r.range_end}"
                        )
            except BaseException:
                for a in got:
                    self._unlink(str(a.address.ip))
                raise
            return got

    def _find(self, cid: str, ifname: str) -> list[str]:
        out = []
        for name in self._ip_files():
            owner = self._owner(name)
            if owner is None:
                continue
            oc, oi = owner
            if oc == cid and (oi == ifname or oi == ""):
                out.append(name)
        return out

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(f"{self._d}/{name}")
        except FileNotFoundError:
            pass

    def _mine(self, name: str, cid: str, ifname: str) -> bool:
        owner = self._owner(name)
        return owner is not None and owner[0] == cid and owner[1] in (ifname, "")

    def release(self, cid: str, ifname: str, hint: Iterable[str] = ()) -> list[str]:
        """Release every address held by (cid, ifname); idempotent; returns what was freed.

        `hint` (the addresses the ADD result recorded) is checked first: when one of them is ours
        the attachment's files are known and the O(pods) scan of every file is skipped.
        """
        with contextlib.suppress(FileNotFoundError), self.locked_existing():
            freed = [h for h in hint if self._mine(h, cid, ifname)]
            if not freed:
                freed = self._find(cid, ifname)
            for name in freed:
                self._unlink(name)
            return freed
        return []

    @contextmanager
    def locked_existing(self) -> Iterator[None]:
        """Like `locked()`, but FileNotFoundError when the directory does not exist (nothing to do)."""
        fd = os.open(f"{self._d}/lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def lookup(self, cid: str, ifname: str, hint: Iterable[str] = ()) -> list[str]:
        """Addresses held by (cid, ifname); with `hint`, only those of the hinted that are ours."""
        hint = list(hint)
        if hint:
            return [h for h in hint if self._mine(h, cid, ifname)]
        if not self.dir.is_dir():
            return []
        return self._find(cid, ifname)

    def allocations(self) -> dict[str, tuple[str, str]]:
        """address -> (containerID, ifname) for every file in the directory."""
        if not self.dir.is_dir():
            return {}
        out = {}
        for name in self._ip_files():
            owner = self._owner(name)
            if owner is not None:
                out[name] = owner
        return out

    def release_except(self, valid: Iterable[tuple[str, str]]) -> list[str]:
        """GC: free every address whose (cid, ifname) is not in `valid`."""
        keep = set(valid)
        if not self.dir.is_dir():
            return []
        freed = []
        with self.locked():
            for name, (cid, ifn) in self.allocations().items():
                if (cid, ifn) not in keep and not (ifn == "" and any(c == cid for c, _ in keep)):
                    self._unlink(name)
                    freed.append(name)
        return freed

    def free_count(self, ranges: list[Range]) -> int:
        used = set(self._ip_files()) if self.dir.is_dir() else set()
        n = 0
        for r in ranges:
            size = int(r.range_end) - int(r.range_start) + 1
            if r.gateway is not None and int(r.range_start) <= int(r.gateway) <= int(r.range_end):
                size -= 1
            n += size - sum(1 for u in used if ipaddress.ip_address(u) in r.subnet)
        return n


def parse_ranges(ipam: dict[str, object]) -> list[Range]:
    """`ranges: [[{subnet,...}]]` (first entry of each set) or the legacy top-level `subnet`."""
    ranges: list[Range] = []
    raw = ipam.get("ranges")
    if isinstance(raw, list) and raw:
        for rs in raw:
            if not isinstance(rs, list) or not rs or not isinstance(rs[0], dict):
                raise Invalid(
                    "host-local: each entry of ranges must be a non-empty list of ranges", field="ranges"
                )
            ranges.append(Range.from_json(rs[0]))
    elif ipam.get("subnet"):
        ranges.append(Range.from_json(dict(ipam)))
    else:
        raise Invalid("host-local: no IP ranges specified", field="ranges")
    return ranges


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)
