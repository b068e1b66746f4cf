"""`pycnictl node status`: the BGP peer table of this node's bgpd, exactly as `calicoctl node status`.

calicoctl reads BIRD's control socket; we read bgpd's status socket (`--status-socket`, default
under /run/pycni/bgpd/, see `pycni.bgp.paths`). Exit status 0 when bgpd answered, 1 when it did not
("Calico process is not running.", as calicoctl prints).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

from pycni.bgp.paths import default_run_dir, status_socket
from pycni.bgp.status import format_status, query


def _status(args: argparse.Namespace) -> int:
    path = args.status_socket or status_socket(args.run_dir or default_run_dir(args.nodename))
    doc = query(path)
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_status(doc))
    return 0 if doc is not None else 1


def register(subparsers: Any) -> None:
    node = subparsers.add_parser("node", help="this node's daemons (BGP status)")
    sub = node.add_subparsers(dest="node_command", required=True)
    p = sub.add_parser("status", help="BGP peers of this node's pycni-bgpd (calicoctl node status)")
    p.add_argument("--nodename", default=os.environ.get("NODENAME") or socket.gethostname())
    p.add_argument("--run-dir", default="", help="bgpd's --run-dir, if it was given one")
    p.add_argument("--status-socket", default="", help="bgpd's status socket (overrides --run-dir)")
    p.add_argument("--json", action="store_true", help="the raw status document")
    p.set_defaults(func=_status)
