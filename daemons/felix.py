"""pycni-felix entry point: flags, logging, exit code. The work is `pycni.calico.felix.run`.

Flags follow the lab's conventions (`--etcd-endpoints`, `--nodename`, `--datastore-type`,
`--kubeconfig`); calico-node's environment (DATASTORE_TYPE, KUBECONFIG, NODENAME, IP, AS,
CALICO_IPV4POOL_*, FELIX_*) is honoured too, flags winning. Exit codes: 0 on a
clean stop, 1 on a lost datastore at start, 2 on bad configuration (one line naming the field).
"""

from __future__ import annotations

import argparse
import os
import sys

from pycni import log as pycni_log
from pycni.datastore import factory


def parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="pycni-felix", description="felix-like route agent and calico-node start-up"
    )
    p.add_argument("--etcd-endpoints", default=env.get("ETCD_ENDPOINTS", factory.DEFAULT_ETCD_ENDPOINTS))
    factory.add_arguments(p, env=env)
    p.add_argument("--nodename", default=env.get("NODENAME") or env.get("HOSTNAME") or os.uname().nodename)
    p.add_argument(
        "--ip",
        default=env.get("IP") or None,
        help="this node's underlay address with prefix (10.99.0.11/24) or 'autodetect'",
    )
    p.add_argument("--startup", action="store_true", help="run calico-node start-up only, then exit")
    p.add_argument(
        "--cni-socket",
        default=env.get("PYCNI_CNI_SOCKET") or None,
        help="serve the CNI plugin's fast path on this unix socket",
    )
    p.add_argument(
        "--mtu-file",
        default=env.get("FELIX_MTUFILE", "/var/lib/calico/mtu"),
        help="where to write the workload MTU for the CNI plugin ('' = do not)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="health port (default FELIX_HEALTHPORT or 9099; 0 = off)",
    )
    p.add_argument("--health-host", default=None)
    p.add_argument(
        "--resync-interval",
        type=float,
        default=None,
        help="re-read the kernel this often, seconds (default FELIX_ROUTEREFRESHINTERVAL or 30)",
    )
    p.add_argument("--log-level", default=env.get("FELIX_LOGSEVERITYSCREEN", "info"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    pycni_log.configure(level=args.log_level)
    from pycni.calico.felix import FelixOptions, run

    opts = FelixOptions(
        nodename=args.nodename,
        etcd_endpoints=args.etcd_endpoints,
        datastore_type=args.datastore_type,
        kubeconfig=args.kubeconfig,
        ip=args.ip,
        startup_only=args.startup,
        cni_socket=args.cni_socket,
        mtu_file=args.mtu_file or None,
        health_port=args.health_port,
        health_host=args.health_host,
        resync_interval=args.resync_interval,
    )
    return run(opts)


if __name__ == "__main__":
    sys.exit(main())
