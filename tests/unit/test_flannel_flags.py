"""pycni-flanneld flags: flannel's names, FLANNELD_* environment, flags over environment."""

from __future__ import annotations

import pytest
from pycni_daemons.flanneld import parser


def test_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLANNELD_ETCD_ENDPOINTS", "http://10.0.0.1:2379")
    monkeypatch.setenv("FLANNELD_IP_MASQ", "true")
    monkeypatch.setenv("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "30")
    monkeypatch.setenv("FLANNELD_HEALTHZ_PORT", "8471")
    a = parser().parse_args([])
    assert a.etcd_endpoints == "http://10.0.0.1:2379" and a.ip_masq is True
    assert a.subnet_lease_renew_margin == 30.0 and a.healthz_port == 8471
    assert a.etcd_prefix == "/coreos.com/network" and a.subnet_file == "/run/flannel/subnet.env"
    a = parser().parse_args(["--etcd-endpoints", "http://x:1", "--ip-masq=false", "--iface", "eth1",
                             "--iface", "10.0.0.5", "--vxlan-tx-csum-off"])
    assert a.etcd_endpoints == "http://x:1" and a.ip_masq is False and a.iface == ["eth1", "10.0.0.5"]
    assert a.vxlan_tx_csum_off is True


def test_defaults_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("FLANNELD_ETCD_ENDPOINTS", "FLANNELD_IP_MASQ"):
        monkeypatch.delenv(k, raising=False)
    a = parser().parse_args([])
    assert a.etcd_endpoints == "http://127.0.0.1:4001,http://127.0.0.1:2379"
    assert a.ip_masq is False and a.vxlan_tx_csum_off is False and a.healthz_port == 0
