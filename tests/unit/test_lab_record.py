"""The lab record: atomic saves, changes that survive an error, shape checks, PID matching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from pycni.errors import Invalid
from pycni.lab import modes
from pycni.lab.record import RecordFile, empty_record, proc_cmdline, proc_matches, proc_stat


def test_mutate_saves_and_reloads(tmp_path: os.PathLike[str]) -> None:
    rf = RecordFile(os.path.join(tmp_path, "lab"))
    assert rf.load() is None
    with rf.mutate(empty_record("lab", "/repo")) as rec:
        rec["netns"].append("lab-hub")
    loaded = rf.load()
    assert loaded is not None and loaded["netns"] == ["lab-hub"] and loaded["repo"] == "/repo"
    assert not [f for f in os.listdir(rf.dir) if ".tmp" in f]


def test_mutate_keeps_what_was_recorded_before_an_error(tmp_path: os.PathLike[str]) -> None:
    rf = RecordFile(str(tmp_path))
    rf.save(empty_record("lab", "/repo"))
    with pytest.raises(RuntimeError), rf.mutate() as rec:
        rec["netns"].append("lab-n1")
        raise RuntimeError("crash while creating lab-n1")
    loaded = rf.load()
    assert loaded is not None and loaded["netns"] == ["lab-n1"]


def test_mutate_without_record_is_a_clear_error(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(Invalid, match="no lab record"), RecordFile(str(tmp_path)).mutate():
        pass


@pytest.mark.parametrize(
    "content", ["{", "[]", '{"version": 99, "name": "x"}', '{"version": 1, "name": "x", "netns": {}}']
)
def test_bad_record_is_a_clear_error(tmp_path: os.PathLike[str], content: str) -> None:
    rf = RecordFile(str(tmp_path))
    with open(rf.path, "w") as f:
        f.write(content)
    with pytest.raises(Invalid):
        rf.load()


def test_record_is_plain_json(tmp_path: os.PathLike[str]) -> None:
    rf = RecordFile(str(tmp_path))
    rf.save(empty_record("lab", "/repo"))
    with open(rf.path) as f:
        data = json.load(f)
    assert set(data) >= {"version", "name", "repo", "netns", "nodes", "pods", "processes", "files", "state"}


def test_proc_matches_only_the_same_process() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    child = subprocess.Popen(argv)
    try:
        st = proc_stat(child.pid)
        assert st is not None
        for _ in range(100):  # until exec is done and the cmdline is the child's
            if proc_cmdline(child.pid) == argv:
                break
            time.sleep(0.01)
        entry = {"pid": child.pid, "starttime": st[1], "argv": argv, "wrapper": ["nsenter", *argv]}
        assert proc_matches(entry)
        assert not proc_matches(dict(entry, starttime=st[1] + 1))  # a recycled PID
        assert not proc_matches(dict(entry, argv=["etcd"], wrapper=None))  # someone else's process
    finally:
        child.kill()
        child.wait()
    assert not proc_matches(entry)
    assert not proc_matches({"pid": 1, "argv": []})


def test_bridge_mode_is_registered_and_unknown_modes_are_clear() -> None:
    assert modes.names()[0] == "bridge"
    m = modes.get("bridge")
    assert isinstance(m, modes.Mode)
    with pytest.raises(Invalid, match="unknown lab mode"):
        modes.get("no-such-mode")


def test_unreadable_cmdline_falls_back_to_start_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from pycni.lab import record

    st = proc_stat(os.getpid())
    assert st is not None
    monkeypatch.setattr(record, "proc_cmdline", lambda pid: [])
    assert proc_matches({"pid": os.getpid(), "starttime": st[1], "argv": ["x"]})
    assert not proc_matches({"pid": os.getpid(), "starttime": None, "argv": ["x"]})
    assert not proc_matches({"pid": os.getpid(), "starttime": st[1] + 1, "argv": ["x"]})
