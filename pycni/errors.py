"""The error taxonomy shared by every layer.

Callers decide by class, never by message: `Transient` errors are retried (a CAS conflict, an
unreachable datastore, a kernel EBUSY); `Invalid` errors are the operator's to fix and are reported
once; `NotFound` / `AlreadyExists` carry datastore and kernel facts that callers branch on.
The CNI skeleton maps these onto the spec's error codes (see `pycni.cni.skel`).
"""

from __future__ import annotations


class PycniError(Exception):
    """Base of every error pycni raises on purpose."""


class Transient(PycniError):
    """Worth retrying: the same call may succeed a moment later."""


class CasConflict(Transient):
    """A compare-and-swap lost: the key changed (or appeared) since it was read."""


class Unavailable(Transient):
    """The datastore (or another dependency) could not be reached."""


class AlreadyExists(PycniError):
    """create-if-absent found the key (or the kernel object) already there."""


class NotFound(PycniError):
    """The key or kernel object does not exist."""


class Invalid(PycniError):
    """Bad configuration or a bad record: fixing it is the operator's job."""

    def __init__(self, msg: str, *, field: str | None = None) -> None:
        super().__init__(msg)
        self.field = field


class LeaseExpired(PycniError):
    """The TTL lease behind a key is gone (revoked or expired)."""
