"""Atomic file replacement: a reader sees the old file or the new one, never half of either.

Everything a daemon writes for another process to read (flannel's `subnet.env` for the CNI plugin,
exabgp's config, felix's MTU file, the lab's records and CNI configs, the plugin binary) goes
through `write_atomic`: a temp file in the same directory (so the rename stays on one filesystem),
written, fsynced and chmodded, then `os.replace`d over the target, which POSIX makes atomic. This is
flannel's renameio and Calico's "write to temp, rename" in one place. Unchanged content is not
rewritten by default, so a reader polling the file is not disturbed by a resync.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def write_atomic(
    path: str | os.PathLike[str], text: str, *, mode: int = 0o644, if_changed: bool = True
) -> bool:
    """Replace `path` with `text` (mode `mode`), creating its directory; False when nothing was written.

    With `if_changed` (the default) a file that already holds exactly `text` is left alone; an
    unreadable one counts as different. On any failure the temp file is removed and the error raised.
    """
    path = os.fspath(path)
    if if_changed:
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    return False
        except (OSError, UnicodeDecodeError):
            pass
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True
