"""`pycnictl lab` without root: argument parsing, the matrix rendering, clear errors."""

from __future__ import annotations

import argparse
import io

import pytest
from rich.console import Console

from pycni.cli import lab as cli
from pycni.errors import PycniError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pycnictl")
    sub = p.add_subparsers(dest="command", required=True)
    cli.register(sub)
    return p


def test_up_arguments() -> None:
    args = parser().parse_args(
        [
            "lab",
            "up",
            "--nodes",
            "4",
            "--segments",
            "2",
            "--mode",
            "flannel-vxlan",
            "--name",
            "x",
            "--opt",
            "resync=1",
        ]
    )
    assert (args.nodes, args.segments, args.mode, args.name, args.opt) == (
        4,
        2,
        "flannel-vxlan",
        "x",
        ["resync=1"],
    )
    assert cli._parse_opts(["resync=1", "backend-type=vxlan"]) == {"resync": "1", "backend_type": "vxlan"}
    with pytest.raises(PycniError):
        cli._parse_opts(["novalue"])


def test_exec_keeps_the_command() -> None:
    args = parser().parse_args(["lab", "exec", "--name", "x", "n1/web", "--", "ip", "-j", "route"])
    assert args.node == "n1/web" and args.cmd[-3:] == ["ip", "-j", "route"]


def test_demo_defaults_to_its_own_lab_name() -> None:
    assert parser().parse_args(["lab", "demo"]).name == "demo"


def test_matrix_rendering_marks_failures() -> None:
    matrix = {"n1/a": {"n2/b": True}, "n2/b": {"n1/a": False}}
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(cli.render_matrix(matrix))
    text = out.getvalue()
    assert "n1/a" in text and "ok" in text and "FAIL" in text


def test_bad_lab_name_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["lab", "status", "--name", "Bad_Name"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "bad lab name" in err and "Traceback" not in err
