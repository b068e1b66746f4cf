"""`pycnictl lab ...`: drive the multi-node lab (up, down, exec, pod add/del, ping, status, demo).

A thin layer over `pycni.lab.Lab`: argument parsing, rich tables, exit codes. Every command finds
its lab from the record under /run/pycni-lab/<name>, so commands can come from separate shells.
Errors the operator can fix print one line and exit 2; a failed ping matrix or demo exits 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from pycni.errors import PycniError
from pycni.lab import REPO_DIR, Lab, all_labs
from pycni.lab import modes as lab_modes

DEFAULT_NAME = os.environ.get("PYCNI_LAB_NAME", "lab")
console = Console()
err_console = Console(stderr=True)


def _configure_logging(verbose: bool) -> None:
    from pycni.log import configure

    configure(level="info" if verbose else "warning", json=False, stream=sys.stderr)


def _parse_opts(pairs: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise PycniError(f"--opt expects key=value, got {pair!r}")
        k, v = pair.split("=", 1)
        opts[k.replace("-", "_")] = v
    return opts


# ---------------------------------------------------------------------------- rendering


def render_matrix(matrix: dict[str, dict[str, bool]], title: str = "pod ping matrix") -> Table:
    keys = list(matrix)
    table = Table(title=title, show_lines=False)
    table.add_column("from \\ to", style="bold")
    for k in keys:
        table.add_column(k, justify="center")
    for src in keys:
        cells = []
        for dst in keys:
            if src == dst:
                cells.append("[dim]·[/dim]")
            else:
                cells.append("[green]ok[/green]" if matrix[src].get(dst) else "[bold red]FAIL[/bold red]")
        table.add_row(src, *cells)
    return table


def render_nodes(lab: Lab) -> Table:
    st = lab.status()
    table = Table(title=f"lab {lab.name}: mode {st.get('mode')}, etcd {st.get('etcd')}")
    for col in ("node", "netns", "underlay", "segment", "processes", "pods"):
        table.add_column(col)
    for n in st.get("nodes", []):
        procs = " ".join(
            f"{k}:{'[green]up[/green]' if v else '[red]dead[/red]'}" for k, v in n["processes"].items()
        )
        table.add_row(
            n["name"],
            n["netns"] if n["netns_present"] else f"[red]{n['netns']} (missing)[/red]",
            n["ip"],
            str(n["segment"]),
            procs or "-",
            " ".join(n["pods"]) or "-",
        )
    return table


def print_routes(lab: Lab) -> None:
    for n in lab.nodes:
        console.print(f"[bold]{n.name}[/bold] ({n.netns}) routes:")
        for line in lab.routes(n):
            console.print(f"    {line}", highlight=False)


# ---------------------------------------------------------------------------- commands


def cmd_up(args: argparse.Namespace) -> int:
    lab = Lab(args.name)
    t0 = time.monotonic()
    lab.up(
        nodes=args.nodes,
        segments=args.segments,
        mode=args.mode,
        keep_on_failure=args.keep_on_failure,
        **_parse_opts(args.opt),
    )
    console.print(render_nodes(lab))
    console.print(f"lab {lab.name} up in {time.monotonic() - t0:.2f}s")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if args.all:
        names = all_labs(repo=None if args.any_repo else REPO_DIR, in_use=args.in_use)
        for busy in sorted(set(all_labs(repo=None if args.any_repo else REPO_DIR)) - set(names)):
            console.print(f"lab {busy}: its creator is still running, left alone (--in-use to remove it)")
    else:
        names = [args.name]
    for name in names:
        t0 = time.monotonic()
        removed = Lab(name).down()
        console.print(f"lab {name} down: removed {len(removed)} items in {time.monotonic() - t0:.2f}s")
    if args.all and not names:
        console.print("no labs to remove")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    lab = Lab(args.name)
    argv = list(args.cmd)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise PycniError("exec needs a command: pycnictl lab exec NODE -- CMD ...")
    ns = lab.netns_of(args.node)
    return subprocess.call(["nsenter", f"--net=/run/netns/{ns}", "--", *argv])


def cmd_pod_add(args: argparse.Namespace) -> int:
    lab = Lab(args.name)
    result = lab.pod_add(args.node, args.pod)
    ips = ", ".join(ip["address"] for ip in result.get("ips", []))
    console.print(f"pod {args.node}/{args.pod}: {ips or 'no address'}")
    return 0


def cmd_pod_del(args: argparse.Namespace) -> int:
    Lab(args.name).pod_del(args.node, args.pod)
    console.print(f"pod {args.node}/{args.pod} deleted")
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    lab = Lab(args.name)
    lab.record  # noqa: B018 - raises a clear error when the lab is not up
    matrix = lab.ping_matrix()
    if len(matrix) < 2:
        console.print("fewer than two pods: nothing to ping (add some with `pycnictl lab pod add NODE NAME`)")
        return 0
    console.print(render_matrix(matrix))
    ok = Lab.matrix_ok(matrix)
    total = sum(len(r) for r in matrix.values())
    good = sum(sum(r.values()) for r in matrix.values())
    console.print(f"{good}/{total} pairs answered" + ("" if ok else " [bold red]FAILED[/bold red]"))
    return 0 if ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    lab = Lab(args.name)
    st = lab.status()
    if args.json:
        import json

        print(json.dumps(st, indent=2, default=str))
        return 0
    if st["state"] == "down":
        console.print(f"lab {lab.name} is down")
        return 0
    console.print(render_nodes(lab))
    others = [p for p in st["processes"] if p.get("node") not in {n["name"] for n in st["nodes"]}]
    for p in others:
        console.print(
            f"{p['key']}: pid {p['pid']} {'[green]alive[/green]' if p['alive'] else '[red]dead[/red]'}"
        )
    console.print(f"state {st['state']}, segments {st['segments']}, record {lab.dir}/record.json")
    return 0


def cmd_modes(args: argparse.Namespace) -> int:
    for name in lab_modes.names():
        why = lab_modes.unavailable_reason(lab_modes.get(name))
        console.print(f"{name}" + (f"  [yellow](unavailable: {why})[/yellow]" if why else ""))
    for mod, err in lab_modes.load_errors.items():
        console.print(f"[red]{mod} failed to import: {err}[/red]")
    return 0


def _demo_in_uml(name: str, nodes: int, pods_per_node: int, mode: str) -> str:
    """Run one mode's demo inside User-Mode-Linux (a mode that needs ipip, which this kernel lacks)."""
    console.rule(f"mode {mode} (inside User-Mode-Linux: scripts/uml-run)")
    argv = [
        os.path.join(REPO_DIR, "scripts", "uml-run"),
        sys.executable,
        "-m",
        "pycni_daemons.ctl",
        "lab",
        "demo",
        "--name",
        name,
        "--nodes",
        str(nodes),
        "--pods",
        str(pods_per_node),
        "--modes",
        mode,
        "--no-uml",
    ]
    rc = subprocess.call(argv)
    return "ok (in UML)" if rc == 0 else f"FAIL (in UML, exit {rc})"


def run_demo(name: str, nodes: int, pods_per_node: int, only: list[str] | None, use_uml: bool = True) -> int:
    """Each available mode in turn: up, pods, nodes + routes + ping matrix, down. 0 only if all pass.
    Modes that say they need the UML lane run inside it (unless use_uml is False)."""
    names = only or lab_modes.names()
    results: dict[str, str] = {}
    for mod, err in lab_modes.load_errors.items():
        results[mod] = f"FAIL (import error: {err})"
    uml_run = os.path.join(REPO_DIR, "scripts", "uml-run")
    for mode in names:
        why = lab_modes.unavailable_reason(lab_modes.get(mode))
        if (
            why
            and use_uml
            and "uml" in why.lower()
            and os.environ.get("PYCNI_IN_UML") != "1"
            and os.access(uml_run, os.X_OK)
        ):
            results[mode] = _demo_in_uml(name, nodes, pods_per_node, mode)
            continue
        if why:
            console.print(f"[yellow]skipping mode {mode}: {why}[/yellow]")
            results[mode] = f"skipped ({why})"
            continue
        console.rule(f"mode {mode}")
        lab = Lab(name)
        lab.down()  # a leftover from an interrupted demo
        t0 = time.monotonic()
        try:
            # A mode may ask for its own demo shape, e.g. `demo_shape = {"segments": 2}`.
            shape = dict(getattr(lab_modes.get(mode), "demo_shape", None) or {})
            segments = int(shape.pop("segments", 1))
            lab.up(nodes=int(shape.pop("nodes", nodes)), segments=segments, mode=mode, **shape)
            t_up = time.monotonic() - t0
            for n in lab.nodes:
                for i in range(pods_per_node):
                    lab.pod_add(n.name, f"pod{i + 1}")
            console.print(render_nodes(lab))
            print_routes(lab)
            matrix = lab.ping_matrix()
            console.print(render_matrix(matrix, title=f"{mode}: pod ping matrix"))
            ok = Lab.matrix_ok(matrix) and len(matrix) >= 2
            results[mode] = f"{'ok' if ok else 'FAIL'} (up {t_up:.1f}s, {len(matrix)} pods)"
        except PycniError as e:
            err_console.print(f"[bold red]mode {mode} failed: {e}[/bold red]")
            results[mode] = f"FAIL ({e})"
        finally:
            lab.down()
    console.rule("demo summary")
    for mode, res in results.items():
        style = "green" if res.startswith("ok") else ("yellow" if res.startswith("skipped") else "bold red")
        console.print(f"[{style}]{mode}: {res}[/{style}]")
    return 1 if any(r.startswith("FAIL") for r in results.values()) else 0


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args.name, args.nodes, args.pods, args.modes, use_uml=not args.no_uml)


# ---------------------------------------------------------------------------- wiring


def _wrap(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        _configure_logging(args.verbose)
        try:
            return int(fn(args) or 0)
        except PycniError as e:
            err_console.print(f"[bold red]error:[/bold red] {e}", highlight=False)
            return 2
        except KeyboardInterrupt:
            err_console.print("interrupted")
            return 130

    return run


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--name", default=DEFAULT_NAME, help="lab name (default: %(default)s, env PYCNI_LAB_NAME)"
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log lab steps (INFO) on stderr")

    lab = subparsers.add_parser("lab", help="multi-node lab in network namespaces")
    sub = lab.add_subparsers(dest="lab_command", required=True)

    p = sub.add_parser("up", parents=[common], help="create nodes, underlay, etcd and start the mode")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--segments", type=int, default=1, help="underlay L2 segments joined by a router")
    p.add_argument(
        "--mode", default="bridge", help="bridge (built in) or a registered mode (see `lab modes`)"
    )
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="mode option (repeatable)")
    p.add_argument("--keep-on-failure", action="store_true", help="leave a half-built lab for inspection")
    p.set_defaults(func=_wrap(cmd_up))

    p = sub.add_parser("down", parents=[common], help="remove everything the lab made (idempotent)")
    p.add_argument("--all", action="store_true", help="every lab started from this repository")
    p.add_argument("--any-repo", action="store_true", help="with --all: labs from any repository")
    p.add_argument("--in-use", action="store_true", help="with --all: also labs whose creator still runs")
    p.set_defaults(func=_wrap(cmd_down))

    p = sub.add_parser(
        "exec", parents=[common], help="run a command in a node (n1), hub, etcd, rtr or pod (n1/web)"
    )
    p.add_argument("node")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(func=_wrap(cmd_exec))

    pod = sub.add_parser("pod", help="add or delete a pod (runs the node's CNI plugin)")
    psub = pod.add_subparsers(dest="pod_command", required=True)
    for verb, fn in (("add", cmd_pod_add), ("del", cmd_pod_del)):
        p = psub.add_parser(verb, parents=[common])
        p.add_argument("node")
        p.add_argument("pod")
        p.set_defaults(func=_wrap(fn))

    p = sub.add_parser("ping", parents=[common], help="all-pairs pod ping matrix (exit 1 if any pair fails)")
    p.set_defaults(func=_wrap(cmd_ping))

    p = sub.add_parser("status", parents=[common], help="nodes, addresses, mode, processes, pods")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_wrap(cmd_status))

    p = sub.add_parser("modes", parents=[common], help="list registered modes")
    p.set_defaults(func=_wrap(cmd_modes))

    p = sub.add_parser(
        "demo", parents=[common], help="up each available mode, add pods, show routes + pings, down"
    )
    p.set_defaults(name="demo")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--pods", type=int, default=2, help="pods per node")
    p.add_argument("--modes", nargs="*", help="only these modes")
    p.add_argument(
        "--no-uml",
        action="store_true",
        help="skip modes that need the UML lane instead of running them there",
    )
    p.set_defaults(func=_wrap(cmd_demo))
