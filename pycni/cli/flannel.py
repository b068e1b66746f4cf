"""`pycnictl lease ...` and `pycnictl flannel-config ...`: flannel's leases and net-conf in etcd.

    pycnictl lease list [-o wide|json]                 every lease: subnet, PublicIP, backend, VtepMAC, kind
    pycnictl lease reserve SUBNET --public-ip IP       a reservation (a key with no TTL), flannel's way
    pycnictl lease delete SUBNET                       remove a lease or reservation
    pycnictl flannel-config show | set FILE|-          read or write (validated) net-conf.json

Everything is read and written in flannel's layout (`<prefix>/subnets/10.244.1.0-24`,
`<prefix>/config`), so `etcdctl` and a real flanneld see the same thing. The datastore is chosen as
for `pycnictl ipam` (`--datastore-type`, `--etcd-endpoints`, `--kubeconfig`), keys under
`--etcd-prefix`; tests inject another datastore with `pycni.cli.ipam.set_datastore_factory`.
Operator errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys

from rich import box
from rich.table import Table

from pycni.cli.ipam import _console, _err, _run, add_datastore_arguments
from pycni.datastore import Datastore
from pycni.datastore.flannel import (
    DEFAULT_PREFIX,
    LeaseAttrs,
    config_key,
    decode_lease,
    parse_config,
    subnet_key,
    subnets_prefix,
)
from pycni.errors import AlreadyExists, Invalid


def _subnet(s: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(s, strict=True)
    except ValueError as e:
        raise Invalid(f"bad subnet {s!r}: {e}", field="SUBNET") from None


def cmd_list(args: argparse.Namespace, ds: Datastore) -> int:
    rows: list[dict[str, object]] = []
    for v in ds.list(subnets_prefix(args.etcd_prefix)):
        try:
            lease = decode_lease(v.key, v.value)
        except Invalid as e:
            rows.append({"subnet": v.key.rsplit("/", 1)[-1], "error": str(e)})
            continue
        a = lease.attrs
        rows.append({"subnet": str(lease.subnet), "public_ip": str(a.public_ip), "backend": a.backend_type,
                     "vtep_mac": a.vtep_mac or "", "kind": "lease" if v.lease else "reservation",
                     "etcd_lease": f"{v.lease:x}" if v.lease else "", "revision": v.revision})
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    t = Table(box=box.SIMPLE)
    cols = ["SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "KIND"]
    if args.output == "wide":
        cols += ["ETCD LEASE", "REVISION"]
    for c in cols:
        t.add_column(c)
    for r in rows:
        if "error" in r:
            t.add_row(str(r["subnet"]), f"[red]invalid: {r['error']}[/red]", "", "", "")
            continue
        cells = [str(r[k]) for k in ("subnet", "public_ip", "backend", "vtep_mac", "kind")]
        if args.output == "wide":
            cells += [str(r["etcd_lease"]), str(r["revision"])]
        t.add_row(*cells)
    _console().print(t)
    return 0


def cmd_reserve(args: argparse.Namespace, ds: Datastore) -> int:
    sn = _subnet(args.subnet)
    try:
        ip = ipaddress.IPv4Address(args.public_ip)
    except ValueError:
        raise Invalid(f"bad --public-ip {args.public_ip!r}", field="PublicIP") from None
    try:
        ds.create(subnet_key(sn, args.etcd_prefix), LeaseAttrs(ip).to_json())
    except AlreadyExists:
        raise Invalid(f"{sn} is already leased or reserved", field="SUBNET") from None
    print(f"reserved {sn} for {ip}")
    return 0


def cmd_delete(args: argparse.Namespace, ds: Datastore) -> int:
    sn = _subnet(args.subnet)
    if not ds.delete(subnet_key(sn, args.etcd_prefix)):
        _err(f"no lease for {sn}")
        return 1
    print(f"deleted {sn}")
    return 0


def cmd_config_show(args: argparse.Namespace, ds: Datastore) -> int:
    v = ds.get(config_key(args.etcd_prefix))
    if v is None:
        _err(f"no network config at {config_key(args.etcd_prefix)}")
        return 1
    print(v.value)
    return 0


def cmd_config_set(args: argparse.Namespace, ds: Datastore) -> int:
    text = sys.stdin.read() if args.file == "-" else open(args.file).read()
    parse_config(text)  # refuse what flanneld would refuse
    ds.put(config_key(args.etcd_prefix), text.strip())
    print(f"wrote {config_key(args.etcd_prefix)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = argparse.ArgumentParser(add_help=False)
    add_datastore_arguments(common)
    common.add_argument("--etcd-prefix", default=DEFAULT_PREFIX)

    lease = subparsers.add_parser("lease", help="flannel subnet leases")
    sub = lease.add_subparsers(dest="lease_command", required=True)
    p = sub.add_parser("list", parents=[common], help="list leases and reservations")
    p.add_argument("-o", "--output", choices=["table", "wide", "json"], default="table")
    p.set_defaults(func=_run(cmd_list))
    p = sub.add_parser("reserve", parents=[common], help="reserve a subnet for a PublicIP (no TTL)")
    p.add_argument("subnet")
    p.add_argument("--public-ip", required=True)
    p.set_defaults(func=_run(cmd_reserve))
    p = sub.add_parser("delete", parents=[common], help="delete a lease or reservation")
    p.add_argument("subnet")
    p.set_defaults(func=_run(cmd_delete))

    cfg = subparsers.add_parser("flannel-config", help="flannel net-conf.json in etcd")
    csub = cfg.add_subparsers(dest="config_command", required=True)
    p = csub.add_parser("show", parents=[common])
    p.set_defaults(func=_run(cmd_config_show))
    p = csub.add_parser("set", parents=[common])
    p.add_argument("file", help="net-conf.json, or - for stdin")
    p.set_defaults(func=_run(cmd_config_set))
