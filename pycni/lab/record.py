"""The lab's record file: what a lab made, written *before* it is made, so `down` can undo it all.

`/run/pycni-lab/<name>/record.json` lists every netns, process (PID, start time, argv) and file of
the lab. Each change is a read-modify-write under an flock on `<dir>/.lock`, then an atomic rename,
so separate `pycnictl lab ...` invocations (and a `kill -9` at any moment) leave a record that is
a superset of what exists. `down` trusts nothing else: a process is killed only if its PID still
has the recorded start time and command line, so a recycled PID is never hit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from pycni.atomic import write_atomic
from pycni.errors import Invalid

RECORD_VERSION = 1


def empty_record(name: str, repo: str) -> dict[str, Any]:
    return {
        "version": RECORD_VERSION,
        "name": name,
        "repo": repo,
        "created": time.time(),
        "state": "creating",
        "mode": None,
        "segments": 1,
        "opts": {},
        "netns": [],
        "nodes": {},
        "pods": {},
        "processes": [],
        "files": [],
    }


def validate(rec: Any, path: str) -> dict[str, Any]:
    """Check the shape of a loaded record; a clear error instead of a KeyError three calls later."""
    if (
        not isinstance(rec, dict)
        or rec.get("version") != RECORD_VERSION
        or not isinstance(rec.get("name"), str)
    ):
        raise Invalid(f"{path}: not a pycni lab record (version {RECORD_VERSION})")
    for key, typ in (("netns", list), ("nodes", dict), ("pods", dict), ("processes", list), ("files", list)):
        if not isinstance(rec.get(key), typ):
            raise Invalid(f"{path}: field {key!r} should be a {typ.__name__}")
    return rec


class RecordFile:
    """Load/save one lab's record with an exclusive lock around each change."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.path = os.path.join(directory, "record.json")
        self.lock_path = os.path.join(directory, ".lock")

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def load(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as e:
            raise Invalid(f"{self.path}: unreadable record: {e}") from e
        return validate(data, self.path)

    def save(self, rec: dict[str, Any]) -> None:
        write_atomic(self.path, json.dumps(rec, indent=1, sort_keys=True), if_changed=False)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def mutate(self, default: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Yield the current record for in-place change; save it when the block ends (even by error,
        so what was recorded before a failure stays recorded)."""
        with self.locked():
            rec = self.load()
            if rec is None:
                if default is None:
                    raise Invalid(f"no lab record at {self.path}")
                rec = default
            try:
                yield rec
            finally:
                self.save(rec)


# ---------------------------------------------------------------- processes named in a record


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a live PID, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(")") + 2 :].split()
    return rest[0], int(rest[19])


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def proc_matches(entry: dict[str, Any]) -> bool:
    """Is the recorded process still the one we started (same start time and command line)?

    The command line is either the daemon's argv or, for the instant before nsenter execs, the
    nsenter wrapper's; both are recorded.
    """
    pid = int(entry.get("pid", 0))
    if pid <= 1:
        return False
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    if entry.get("starttime") is not None and st[1] != entry["starttime"]:
        return False
    cmd = proc_cmdline(pid)
    if not cmd:
        # Under User-Mode-Linux, /proc/<pid>/cmdline of a busy process sometimes reads empty (the
        # guest kernel could not read the other process's memory just then). Identity then rests on
        # PID + start time, which no recycled PID shares.
        return entry.get("starttime") is not None
    return cmd in (entry.get("argv"), entry.get("wrapper"))


def proc_alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")
