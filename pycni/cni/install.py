"""Install the CNI front as `<dest_dir>/pycni` (lab `node_start`, `make`, the deploy installer).

The front (`pycni/cni/front.py`) is copied with two constants filled in:
- its interpreter line: the fastest Python 3 on the machine for a stdlib-only script. Debian's
  /usr/bin/python3 is statically linked and starts in ~10 ms here, a venv python built with a
  shared libpython in ~13 ms; the front needs nothing from the venv, so it uses the former when
  present;
- FALLBACK_PYTHON: this venv's interpreter, which has pycni and its dependencies, for the
  in-process path when no agent listens.
The installed file is a three-line stub holding the front's code object, compiled by the very
interpreter that runs it (`precompiled`), which saves the per-start compile; `precompile=False`
writes the readable source instead. Written to a temp file and renamed, so kubelet never executes
a half-written plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from pycni.atomic import write_atomic

FRONT_SOURCE = Path(__file__).with_name("front.py")
FAST_PYTHONS = ("/usr/bin/python3",)


def fast_python() -> str:
    for p in FAST_PYTHONS:
        if os.access(p, os.X_OK):
            return p
    return sys.executable


def library_path() -> list[str]:
    """Where this interpreter finds pycni and its dependencies, for the in-process path's -IS."""
    root = str(Path(__file__).resolve().parents[2])
    paths = [root]
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths()[key]
        if p not in paths:
            paths.append(p)
    return paths


def render(
    fallback_python: str | None = None, shebang_python: str | None = None, default_socket: str | None = None
) -> str:
    text = FRONT_SOURCE.read_text()
    lines = text.split("\n")
    lines[0] = f"#!{shebang_python or fast_python()} -IS"  # one argument: the kernel passes the rest as one
    text = "\n".join(lines)
    text = text.replace(
        'FALLBACK_PYTHON = "/usr/bin/python3"', f"FALLBACK_PYTHON = {fallback_python or sys.executable!r}", 1
    )
    text = text.replace("FALLBACK_PATH: list = []", f"FALLBACK_PATH: list = {library_path()!r}", 1)
    if default_socket:
        text = text.replace(
            'DEFAULT_SOCKET = "/run/pycni/cni.sock"', f"DEFAULT_SOCKET = {default_socket!r}", 1
        )
    return text


_COMPILE = (
    "import marshal, sys; src = sys.stdin.read(); "
    "sys.stdout.buffer.write(marshal.dumps(compile(src, sys.argv[1], 'exec', optimize=2)))"
)


def precompiled(source: str, path: str, python: str) -> str | None:
    """A stub that execs the front's code object, marshalled by the interpreter that will run it.

    A script is compiled from source on every start (~1 ms here, 5-7 % of the front); a code
    object is unmarshalled in ~20 us. Compiled by `python` itself, so the bytecode always matches
    it; None (use the source) if that fails.
    """
    try:
        p = subprocess.run(
            [python, "-IS", "-c", _COMPILE, path],
            input=source.encode(),
            capture_output=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (
        f"#!{python} -IS\n"
        "# pycni CNI front: pycni/cni/front.py, precompiled by pycni.cni.install (read that file).\n"
        "import marshal\n"
        f"exec(marshal.loads({p.stdout!r}))\n"
    )


def install_plugin(
    dest_dir: Path, *, name: str = "pycni", default_socket: str | None = None, precompile: bool = True
) -> Path:
    """Write the front to `dest_dir/name` (mode 0755) and return its path."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    source = render(default_socket=default_socket)
    text = precompiled(source, str(dest), fast_python()) if precompile else None
    write_atomic(dest, text or source, mode=0o755, if_changed=False)
    return dest


def main() -> None:
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/opt/cni/bin")
    print(install_plugin(dest))


if __name__ == "__main__":
    main()
