"""Choosing a datastore: the one place that turns Calico's settings into a `Datastore`.

Every daemon, the CNI plugin and pycnictl open their datastore here, with Calico's names so one
configuration serves both: the `DATASTORE_TYPE` environment variable / `--datastore-type` flag /
CNI netconf key `datastore_type`, one of `etcdv3` (the default) or `kubernetes`; `etcd_endpoints`
(`ETCD_ENDPOINTS`, comma separated) for etcd; and `KUBECONFIG` / `--kubeconfig` / netconf
`kubernetes.kubeconfig` for the API server (none: `$KUBECONFIG`, else the pod's service account).

The clients are imported only for the kind chosen: the etcd client pulls in grpc (~0.3 s), which a
daemon on the Kubernetes API should not pay for, and the other way round.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pycni.errors import Invalid

if TYPE_CHECKING:  # argparse only types the CLI helpers; the CNI plugin's path does not load it
    import argparse

    from pycni.datastore import Datastore

ETCDV3 = "etcdv3"
KUBERNETES = "kubernetes"
KINDS = (ETCDV3, KUBERNETES)
DEFAULT_ETCD_ENDPOINTS = "http://127.0.0.1:2379"


def check_kind(kind: str, *, field: str = "datastore_type") -> str:
    """`kind` if it names a datastore we speak; `Invalid` naming `field` otherwise."""
    if kind not in KINDS:
        raise Invalid(
            f"{field}: unknown datastore type {kind!r} (expected {' or '.join(KINDS)})", field=field
        )
    return kind


def open_datastore(
    kind: str = ETCDV3,
    *,
    etcd_endpoints: Sequence[str] | str = DEFAULT_ETCD_ENDPOINTS,
    kubeconfig: str | None = None,
    timeout: float | None = None,
    field: str = "datastore_type",
) -> Datastore:
    """A connected `Datastore` of `kind`; `field` names the setting in the error for a bad kind.

    `timeout` bounds each request (the client's default when None). Bad endpoints, an unreadable
    kubeconfig or no cluster to fall back on raise `Invalid` too.
    """
    check_kind(kind, field=field)
    extra = {} if timeout is None else {"timeout": timeout}
    if kind == KUBERNETES:
        from pycni.datastore.kube import KubeDatastore

        return KubeDatastore.connect(kubeconfig or None, **extra)
    from pycni.datastore.etcd import EtcdDatastore

    return EtcdDatastore(etcd_endpoints, **extra)


def add_arguments(
    p: argparse.ArgumentParser,
    *,
    env: Mapping[str, str] | None = None,
    type_env: Sequence[str] = ("DATASTORE_TYPE",),
    kubeconfig_env: Sequence[str] = ("KUBECONFIG",),
    kubeconfig_flags: Sequence[str] = ("--kubeconfig",),
) -> None:
    """`--datastore-type` and `--kubeconfig`, defaulting to the first of the environment variables set.

    The kind is checked when the datastore is opened (`open_from_args`), so a bad value from the
    environment gets the same one-line `Invalid` as a bad flag.
    """
    e = os.environ if env is None else env

    def first(names: Sequence[str]) -> str:
        return next((e[n] for n in names if e.get(n)), "")

    p.add_argument("--datastore-type", default=first(type_env) or ETCDV3,
                   help=f"{' or '.join(KINDS)} (default ${type_env[0]} or {ETCDV3})")  # fmt: skip
    p.add_argument(*kubeconfig_flags, dest="kubeconfig", default=first(kubeconfig_env) or None,
                   help="kubeconfig for --datastore-type kubernetes (default $KUBECONFIG, else the "
                        "pod's service account)")  # fmt: skip


def open_from_args(args: argparse.Namespace, *, timeout: float | None = None) -> Datastore:
    """The datastore `add_arguments`' flags (and `--etcd-endpoints`) describe."""
    return open_datastore(
        args.datastore_type,
        etcd_endpoints=getattr(args, "etcd_endpoints", None) or DEFAULT_ETCD_ENDPOINTS,
        kubeconfig=args.kubeconfig,
        timeout=timeout,
        field="--datastore-type",
    )
