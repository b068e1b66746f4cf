"""`pycnictl ipam ...` and `pycnictl pool ...`: calicoctl's IPAM and IPPool commands, on our datastore.

    pycnictl ipam show [--show-blocks] [--ip IP]     usage per pool (and block), or one address
    pycnictl ipam release --ip IP [--ip IP ...]      free addresses whatever holds them
    pycnictl ipam configure [--strict-affinity B] [--auto-allocate-blocks B] [--max-blocks-per-host N]
    pycnictl pool list [-o wide|json]
    pycnictl pool add NAME --cidr CIDR [--block-size N] [--ipip-mode M] [--vxlan-mode M]
                                       [--nat-outgoing] [--disabled] [--node-selector SEL]
    pycnictl pool delete NAME

The tables copy calicoctl's (`GROUPING | CIDR | IPS TOTAL | IPS IN USE | IPS FREE`), and everything
is read and written in Calico's own etcd layout, so the two tools can be used side by side. The
datastore is `--datastore-type` (default `$DATASTORE_TYPE`, else etcdv3): etcd at `--etcd-endpoints`
(default `$ETCD_ENDPOINTS`, else http://127.0.0.1:2379), or the Kubernetes API through
`--kubeconfig` (default `$KUBECONFIG`, else the pod's service account); tests inject another one
with `set_datastore_factory`. An error the operator can fix prints one line and exits 2; releasing
an address that was not assigned exits 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TextIO, cast

from rich import box
from rich.console import Console
from rich.table import Table

from pycni.datastore import Datastore, calico, factory
from pycni.errors import AlreadyExists, Invalid, NotFound, PycniError
from pycni.ipam.allocator import BlockAllocator, read_pools
from pycni.ipam.keys import IPAMConfig

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
CLI_NODE = "pycnictl"  # the allocator needs a node name; the CLI never claims or assigns

DatastoreFactory = Callable[[argparse.Namespace], Datastore]
_factory: DatastoreFactory | None = None


def set_datastore_factory(factory: DatastoreFactory | None) -> None:
    """Make every command use `factory(args)` instead of etcd (tests; None restores etcd)."""
    global _factory
    _factory = factory


def open_datastore(args: argparse.Namespace) -> Datastore:
    """The datastore `--datastore-type`, `--etcd-endpoints` and `--kubeconfig` name."""
    if _factory is not None:
        return _factory(args)
    endpoints = getattr(args, "etcd_endpoints", None) or os.environ.get("ETCD_ENDPOINTS") or DEFAULT_ENDPOINTS
    return factory.open_datastore(
        getattr(args, "datastore_type", None) or factory.ETCDV3,
        etcd_endpoints=endpoints,
        kubeconfig=getattr(args, "kubeconfig", None),
        field="--datastore-type",
    )


def add_datastore_arguments(p: argparse.ArgumentParser) -> None:
    """`--datastore-type`, `--etcd-endpoints`, `--kubeconfig` (every datastore command has them)."""
    factory.add_arguments(p)
    p.add_argument("--etcd-endpoints", default=None,
                   help="etcd client URLs, comma separated (default: $ETCD_ENDPOINTS or "
                        f"{DEFAULT_ENDPOINTS})")  # fmt: skip


def _console() -> Console:
    return Console(file=sys.stdout, width=200, soft_wrap=True, highlight=False)


def _err(msg: str) -> None:
    Console(file=sys.stderr, width=200, highlight=False).print(f"[red]error:[/red] {msg}")


class _Stderr:
    """Whatever `sys.stderr` is at write time (a logger configured once must not pin a stream)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _run(fn: Callable[[argparse.Namespace, Datastore], int]) -> Callable[[argparse.Namespace], int]:
    """Open the datastore, run, close; turn our errors into one line and exit code 2."""

    def wrapped(args: argparse.Namespace) -> int:
        from pycni.log import configure

        # stdout is for tables; the library's log lines go to stderr, and only with -v below WARNING.
        configure(level="info" if getattr(args, "verbose", False) else "warning", json=False,
                  stream=cast(TextIO, _Stderr()))
        try:
            ds = open_datastore(args)
        except PycniError as e:
            _err(str(e))
            return 2
        try:
            return fn(args, ds)
        except PycniError as e:
            _err(str(e))
            return 2
        finally:
            ds.close()

    return wrapped


def _pct(n: int, total: int) -> str:
    return f"{n} ({(100.0 * n / total) if total else 0:.0f}%)"


def _bool_arg(v: str) -> bool:
    low = v.lower()
    if low in ("true", "yes", "1", "on"):
        return True
    if low in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {v!r}")


# -- ipam ---------------------------------------------------------------------------------------
def cmd_ipam_show(args: argparse.Namespace, ds: Datastore) -> int:
    a = BlockAllocator(ds, node=CLI_NODE)
    out = _console()
    if args.ip:
        ip = ipaddress.ip_address(args.ip)
        attr = a.get_assignment(ip)
        if attr is None:
            out.print(f"IP {ip} is not currently assigned")
            return 0
        out.print(f"IP {ip} is in use")
        out.print(f"Handle ID: {attr.handle_id}")
        for k, v in sorted((attr.secondary or {}).items()):
            out.print(f"  {k}: {v}")
        return 0
    usage = a.usage()
    table = Table(box=box.ASCII, show_lines=True)
    for col in ("GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"):
        table.add_column(col, justify="left")
    if args.show_blocks:
        table.add_column("AFFINITY")
    for p in usage:
        row = ["IP Pool", str(p.cidr), str(p.total), _pct(p.in_use, p.total), _pct(p.free, p.total)]
        table.add_row(*row, *([""] if args.show_blocks else []))
        if args.show_blocks:
            for b in p.blocks:
                table.add_row("Block", str(b.cidr), str(b.total), _pct(b.in_use, b.total),
                              _pct(b.free, b.total), f"host:{b.node}" if b.node else "none")
    if not usage:
        out.print("No IP pools configured.")
        return 0
    out.print(table)
    return 0


def cmd_ipam_release(args: argparse.Namespace, ds: Datastore) -> int:
    a = BlockAllocator(ds, node=CLI_NODE)
    try:
        ips = [ipaddress.ip_address(i) for i in args.ip]
    except ValueError as e:
        raise Invalid(str(e), field="ip") from None
    missing = set(a.release_ips(ips))
    out = _console()
    for ip in ips:
        if ip in missing:
            out.print(f"IP address {ip} is not assigned")
        else:
            out.print(f"Successfully released IP address {ip}")
    return 1 if missing else 0


def cmd_ipam_configure(args: argparse.Namespace, ds: Datastore) -> int:
    a = BlockAllocator(ds, node=CLI_NODE)
    cur = a.config()
    new = IPAMConfig(
        strict_affinity=cur.strict_affinity if args.strict_affinity is None else args.strict_affinity,
        auto_allocate_blocks=(cur.auto_allocate_blocks if args.auto_allocate_blocks is None
                              else args.auto_allocate_blocks),
        max_blocks_per_host=cur.max_blocks_per_host if args.max_blocks_per_host is None
        else args.max_blocks_per_host,
    )
    if new != cur:
        a.set_config(new)
    _console().print(f"StrictAffinity: {str(new.strict_affinity).lower()}\n"
                     f"AutoAllocateBlocks: {str(new.auto_allocate_blocks).lower()}\n"
                     f"MaxBlocksPerHost: {new.max_blocks_per_host}")
    return 0


# -- pools --------------------------------------------------------------------------------------
def cmd_pool_list(args: argparse.Namespace, ds: Datastore) -> int:
    pools = read_pools(ds)
    out = _console()
    if args.output == "json":
        out.print_json(json.dumps([json.loads(calico.encode(p)) for p in pools]))
        return 0
    table = Table(box=box.SIMPLE_HEAD)
    cols = ["NAME", "CIDR", "SELECTOR"]
    if args.output == "wide":
        cols = ["NAME", "CIDR", "BLOCKSIZE", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "SELECTOR"]
    for c in cols:
        table.add_column(c)
    for p in pools:
        if args.output == "wide":
            table.add_row(p.name, str(p.cidr), str(p.block_size), str(p.nat_outgoing).lower(), p.ipip_mode,
                          p.vxlan_mode, str(p.disabled).lower(), p.node_selector)
        else:
            table.add_row(p.name, str(p.cidr), p.node_selector)
    out.print(table)
    return 0


def cmd_pool_add(args: argparse.Namespace, ds: Datastore) -> int:
    calico.validate_name(args.name)
    spec = {
        "cidr": args.cidr,
        "ipipMode": args.ipip_mode,
        "vxlanMode": args.vxlan_mode,
        "natOutgoing": args.nat_outgoing,
        "disabled": args.disabled,
        "nodeSelector": args.node_selector,
    }
    if args.block_size is not None:
        spec["blockSize"] = args.block_size
    try:
        ipaddress.ip_network(args.cidr)
    except ValueError:
        raise Invalid(f"--cidr {args.cidr!r} is not a network address with a prefix length (host bits set?)",
                      field="cidr") from None
    pool = calico.IPPool.from_spec(calico.new_meta(args.name), spec)
    for other in read_pools(ds):
        if other.cidr.version == pool.cidr.version and other.cidr.overlaps(pool.cidr):  # type: ignore[arg-type]
            raise Invalid(f"{pool.cidr} overlaps IP pool {other.name} ({other.cidr})", field="cidr")
    try:
        calico.create_resource(ds, pool)
    except AlreadyExists:
        raise Invalid(f"IP pool {args.name} already exists") from None
    _console().print(f"Successfully created 1 'IPPool' resource(s): {args.name} ({pool.cidr})")
    return 0


def cmd_pool_delete(args: argparse.Namespace, ds: Datastore) -> int:
    """As libcalico-go deletes a pool: disable it, release its blocks' affinities, then delete it.

    Addresses still allocated stay allocated (their blocks lose their affinity and are deleted when
    the last address is released); no new address comes from the pool once it is disabled.
    """
    got = calico.get_resource(ds, calico.IPPool, args.name)
    if got is None:
        raise NotFound(f"IP pool {args.name} does not exist")
    pool, _rev = got
    if not pool.disabled:
        calico.apply_resource(ds, replace(pool, disabled=True))
    a = BlockAllocator(ds, node=CLI_NODE)
    released = 0
    for p in a.usage():
        if p.name != pool.name:
            continue
        for b in p.blocks:
            if b.node and a.release_affinity(b.cidr, node=b.node):
                released += 1
    calico.delete_resource(ds, calico.IPPool, args.name)
    _console().print(f"Successfully deleted 1 'IPPool' resource(s): {args.name}"
                     + (f" (released {released} block affinities)" if released else ""))
    return 0


# -- wiring -------------------------------------------------------------------------------------
def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_datastore_arguments(common)
    common.add_argument("-v", "--verbose", action="store_true", help="log datastore changes to stderr")
    return common


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = _common()

    ipam = subparsers.add_parser("ipam", help="IP address management: show usage, release addresses")
    isub = ipam.add_subparsers(dest="ipam_command", required=True)
    p = isub.add_parser("show", parents=[common], help="addresses in use per IP pool (and block)")
    p.add_argument("--show-blocks", action="store_true", help="also list every block and its affinity")
    p.add_argument("--ip", help="show who holds one address")
    p.set_defaults(func=_run(cmd_ipam_show))
    p = isub.add_parser("release", parents=[common], help="release addresses (whatever holds them)")
    p.add_argument("--ip", action="append", required=True, help="address to release (repeatable)")
    p.set_defaults(func=_run(cmd_ipam_release))
    p = isub.add_parser("configure", parents=[common], help="show or change the IPAM configuration")
    p.add_argument("--strict-affinity", "--strictaffinity", type=_bool_arg, default=None, metavar="BOOL")
    p.add_argument("--auto-allocate-blocks", type=_bool_arg, default=None, metavar="BOOL")
    p.add_argument("--max-blocks-per-host", type=int, default=None, metavar="N")
    p.set_defaults(func=_run(cmd_ipam_configure))

    pool = subparsers.add_parser("pool", help="IP pools (Calico IPPool resources)")
    psub = pool.add_subparsers(dest="pool_command", required=True)
    p = psub.add_parser("list", parents=[common], help="list IP pools")
    p.add_argument("-o", "--output", choices=["table", "wide", "json"], default="table")
    p.set_defaults(func=_run(cmd_pool_list))
    p = psub.add_parser("add", parents=[common], help="create an IP pool")
    p.add_argument("name")
    p.add_argument("--cidr", required=True)
    p.add_argument("--block-size", type=int, default=None, help="block prefix length (default 26 / 122)")
    p.add_argument("--ipip-mode", choices=calico.ENCAP_MODES, default=calico.ENCAP_NEVER)
    p.add_argument("--vxlan-mode", choices=calico.ENCAP_MODES, default=calico.ENCAP_NEVER)
    p.add_argument("--nat-outgoing", action="store_true")
    p.add_argument("--disabled", action="store_true")
    p.add_argument("--node-selector", default=calico.DEFAULT_NODE_SELECTOR)
    p.set_defaults(func=_run(cmd_pool_add))
    p = psub.add_parser("delete", parents=[common], help="delete an IP pool (its blocks lose their affinity)")
    p.add_argument("name")
    p.set_defaults(func=_run(cmd_pool_delete))
