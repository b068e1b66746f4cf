"""pycni-flanneld entry point: flags (flannel's names, FLANNELD_* env), logging, wiring, exit code.

No logic lives here: `pycni.flannel.daemon.Flanneld` does the work. Exit codes: 0 on a clean stop,
1 on bad configuration (one line naming the field) or a lost lease, 2 on bad flags.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import structlog

from pycni import log as pycni_log
from pycni.datastore import factory
from pycni.datastore.flannel import DEFAULT_PREFIX
from pycni.errors import Invalid, PycniError

ENV_PREFIX = "FLANNELD_"


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def _env_bool(name: str, default: bool) -> bool:
    v = _env(name, "")
    return default if v == "" else v.lower() in ("1", "true", "yes", "on")


def _bool_flag(p: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    p.add_argument(f"--{name}", nargs="?", const=True, default=_env_bool(name, default),
                   type=lambda s: s.lower() in ("1", "true", "yes", "on"), help=help)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pycni-flanneld", description="flannel-compatible subnet lease manager")
    p.add_argument("--etcd-endpoints", default=_env("etcd-endpoints", "http://127.0.0.1:4001,http://127.0.0.1:2379"))
    p.add_argument("--etcd-prefix", default=_env("etcd-prefix", DEFAULT_PREFIX))
    factory.add_arguments(p, type_env=("FLANNELD_DATASTORE_TYPE", "DATASTORE_TYPE"),
                          kubeconfig_env=("FLANNELD_KUBECONFIG_FILE", "KUBECONFIG"),
                          kubeconfig_flags=("--kubeconfig-file", "--kubeconfig"))
    p.add_argument("--iface", action="append", default=None,
                   help="interface (name or IP) to use for inter-host traffic (repeatable)")
    p.add_argument("--iface-regex", default=_env("iface-regex", ""),
                   help="regex matched against interface names and addresses")
    p.add_argument("--iface-can-reach", default=_env("iface-can-reach", ""),
                   help="use the interface the kernel would use to reach this address")
    p.add_argument("--public-ip", default=_env("public-ip", ""))
    _bool_flag(p, "ip-masq", False, "set up IP masquerade for traffic leaving the flannel network")
    _bool_flag(p, "ip-masq-fully-random-disable", False, "do not use --random-fully in MASQUERADE rules")
    _bool_flag(p, "iptables-forward-rules", True, "add FLANNEL-FWD accept rules")
    p.add_argument("--iptables-resync", type=float, default=float(_env("iptables-resync", "5")))
    p.add_argument("--subnet-file", default=_env("subnet-file", "/run/flannel/subnet.env"))
    p.add_argument("--subnet-lease-renew-margin", type=float,
                   default=float(_env("subnet-lease-renew-margin", "60")),
                   help="renew the lease this many minutes before it expires (fractions allowed)")
    p.add_argument("--subnet-lease-ttl", type=float, default=float(_env("subnet-lease-ttl", str(24 * 3600))),
                   help="lease TTL in seconds (flannel: 24 h; shorter only for tests)")
    p.add_argument("--healthz-ip", default=_env("healthz-ip", "0.0.0.0"))
    p.add_argument("--healthz-port", type=int, default=int(_env("healthz-port", "0")),
                   help="serve /healthz on this port (0 = off)")
    p.add_argument("--resync-interval", type=float, default=float(_env("resync-interval", "10")),
                   help="re-read the kernel this often (seconds) to repair drift")
    _bool_flag(p, "vxlan-tx-csum-off", False,
               "disable TX checksum offload on the vxlan device (only for kernels that need it; "
               "costs ~70%% of throughput)")
    p.add_argument("--cni-socket", default=_env("cni-socket", ""),
                   help="host the CNI fast-path server on this unix socket")
    p.add_argument("--nodename", default=os.environ.get("NODENAME", _env("nodename", "")))
    p.add_argument("--config-wait", type=float, default=0.0, help="give up waiting for the config after N s")
    p.add_argument("--log-level", default=_env("log-level", "info"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    pycni_log.configure(level=args.log_level)
    log = structlog.get_logger("pycni-flanneld")
    from pycni.flannel.daemon import FatalError, Options, run

    iface = args.iface if args.iface is not None else [s for s in _env("iface", "").split(",") if s]
    opts = Options(
        etcd_endpoints=args.etcd_endpoints, etcd_prefix=args.etcd_prefix,
        datastore_type=args.datastore_type, kubeconfig=args.kubeconfig, iface=iface,
        iface_regex=args.iface_regex, iface_can_reach=args.iface_can_reach,
        public_ip=args.public_ip, ip_masq=args.ip_masq,
        ip_masq_random_fully=not args.ip_masq_fully_random_disable,
        iptables_forward_rules=args.iptables_forward_rules, iptables_resync=args.iptables_resync,
        subnet_file=args.subnet_file, subnet_lease_renew_margin=args.subnet_lease_renew_margin,
        subnet_lease_ttl=args.subnet_lease_ttl, healthz_ip=args.healthz_ip, healthz_port=args.healthz_port,
        resync_interval=args.resync_interval, vxlan_tx_csum_off=args.vxlan_tx_csum_off,
        cni_socket=args.cni_socket, config_wait=args.config_wait,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal received, stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return run(opts, stop)
    except Invalid as e:
        field = f" (field {e.field})" if e.field else ""
        log.error("invalid configuration", error=str(e), field=e.field)
        print(f"pycni-flanneld: invalid configuration{field}: {e}", file=sys.stderr)
        return 1
    except FatalError as e:
        log.error("cannot start", error=str(e))
        print(f"pycni-flanneld: {e}", file=sys.stderr)
        return 1
    except PycniError as e:
        log.error("failed", error=str(e), kind=type(e).__name__)
        print(f"pycni-flanneld: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
