"""The lab's addressing plan and names (pure): what docs/lab-contract.md promises, checked."""

from __future__ import annotations

import ipaddress

import pytest

from pycni.errors import Invalid
from pycni.lab import plan


def test_single_segment_addresses() -> None:
    nodes = plan.plan_nodes(3, 1)
    assert [n.name for n in nodes] == ["n1", "n2", "n3"]
    assert [str(n.ip) for n in nodes] == ["10.99.0.11", "10.99.0.12", "10.99.0.13"]
    assert {n.segment for n in nodes} == {0}
    assert all(n.gateway is None for n in nodes)


def test_segments_round_robin_and_router() -> None:
    nodes = plan.plan_nodes(5, 2)
    assert [n.segment for n in nodes] == [0, 1, 0, 1, 0]
    assert [str(n.ip) for n in nodes] == [
        "10.99.0.11",
        "10.99.1.12",
        "10.99.0.13",
        "10.99.1.14",
        "10.99.0.15",
    ]
    assert [str(n.gateway) for n in nodes] == ["10.99.0.254", "10.99.1.254"] * 2 + ["10.99.0.254"]
    for n in nodes:
        assert n.ip in plan.segment_net(n.segment)
        assert n.ip in plan.UNDERLAY


def test_no_address_collides_with_router_or_etcd() -> None:
    nodes = plan.plan_nodes(plan.MAX_NODES, 1)
    ips = {n.ip for n in nodes}
    assert len(ips) == plan.MAX_NODES
    assert plan.ETCD_IP not in ips and plan.router_ip(0) not in ips
    assert plan.etcd_endpoint() == "http://10.99.0.250:2379"


@pytest.mark.parametrize(("count", "segments"), [(0, 1), (plan.MAX_NODES + 1, 1), (3, 0), (3, 17)])
def test_bad_sizes_are_clear_errors(count: int, segments: int) -> None:
    with pytest.raises(Invalid):
        plan.plan_nodes(count, segments)


def test_names() -> None:
    assert plan.netns_hub("lab") == "lab-hub"
    assert plan.netns_etcd("lab") == "lab-etcd"
    assert plan.netns_router("lab") == "lab-rtr"
    assert plan.netns_node("lab", "n2") == "lab-n2"
    assert plan.netns_pod("lab", "n2", "web") == "lab-n2-web"
    assert (
        plan.hub_port("n12") == "v-n12" and plan.hub_port("etcd") == "v-etcd" and plan.hub_port("r3") == "r3"
    )
    assert all(len(plan.hub_port(f"n{i}")) <= 15 for i in (1, plan.MAX_NODES))
    assert plan.node_index("n17") == 17 and plan.node_name(17) == "n17"
    assert plan.bridge_pod_cidr(4) == ipaddress.IPv4Network("10.244.4.0/24")


@pytest.mark.parametrize("name", ["lab", "pyt-lab", "demo", "pyt-dp2", "a1-b2"])
def test_good_lab_names(name: str) -> None:
    assert plan.check_lab_name(name) == name


@pytest.mark.parametrize("name", ["", "Lab", "1lab", "lab_x", "lab-", "x-n1", "x-hub", "a" * 25, "lab;rm"])
def test_bad_lab_names(name: str) -> None:
    with pytest.raises(Invalid):
        plan.check_lab_name(name)


@pytest.mark.parametrize("pod", ["", "-a", "A", "a b", "a/b", "x" * 33])
def test_bad_pod_names(pod: str) -> None:
    with pytest.raises(Invalid):
        plan.check_pod_name(pod)


def test_sweep_pattern_is_this_labs_only() -> None:
    pat = plan.netns_pattern("pyt")
    for ns in ("pyt-hub", "pyt-etcd", "pyt-rtr", "pyt-n1", "pyt-n12-web", "pyt-n1-pod-2"):
        assert pat.match(ns), ns
    for ns in ("pyt-lab-hub", "pyt-lab-n1", "pytx-n1", "other-n1", "pyt-n0", "pyt-foo", "lab-pyt-hub"):
        assert not pat.match(ns), ns
