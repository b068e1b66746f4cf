"""pycnictl: the calicoctl-like command line (node status, ipam, pools, leases, and the lab).

Entry point only: each subcommand group lives in a `pycni.cli.<module>` with `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand groups; each module's register() adds its parsers and sets `func` on them.
COMMAND_MODULES = [
    "pycni.cli.lab",
    "pycni.cli.ipam",
    "pycni.cli.flannel",
    "pycni.cli.node",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pycnictl", description="pycni control: lab, node, ipam, pools, leases"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    args = parser.parse_args(argv)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
