"""`pycni.atomic.write_atomic`: replace by rename, skip unchanged content, leave no temp file behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pycni.atomic import write_atomic


def test_writes_creates_the_directory_and_skips_unchanged(tmp_path: Path) -> None:
    p = tmp_path / "run" / "flannel" / "subnet.env"
    assert write_atomic(str(p), "A=1\n") is True
    assert p.read_text() == "A=1\n" and stat.S_IMODE(p.stat().st_mode) == 0o644
    ino = p.stat().st_ino
    assert write_atomic(p, "A=1\n") is False  # unchanged: the same file, untouched
    assert p.stat().st_ino == ino
    assert write_atomic(p, "A=1\n", if_changed=False) is True  # forced: a new file renamed over
    assert p.stat().st_ino != ino
    assert write_atomic(p, "A=2\n", mode=0o600) is True
    assert p.read_text() == "A=2\n" and stat.S_IMODE(p.stat().st_mode) == 0o600
    assert os.listdir(p.parent) == ["subnet.env"]


def test_a_failed_replace_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "x").write_text("")  # a non-empty directory cannot be replaced by a file
    with pytest.raises(OSError):
        write_atomic(target, "text")
    assert sorted(os.listdir(tmp_path)) == ["taken"]
