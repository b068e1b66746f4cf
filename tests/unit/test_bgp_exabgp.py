"""exabgp contract: golden JSON events from 5.0.15, command text, rendered config, status table."""

from __future__ import annotations

import ipaddress
import os

import pytest

from pycni.atomic import write_atomic
from pycni.bgp import exabgp_api as api
from pycni.bgp.exabgp_conf import SpeakerSettings, render
from pycni.bgp.status import format_status, peer_row
from pycni.calc.bgp import KIND_GLOBAL, KIND_MESH, BgpPeer
from pycni.errors import Invalid

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "exabgp")
ip = ipaddress.ip_address
net = ipaddress.ip_network


def golden() -> list[str]:
    with open(os.path.join(FIX, "exabgp-5.0.15-events.jsonl")) as f:
        return [line for line in f if line.strip()]


def test_golden_events_decode() -> None:
    events = [e for line in golden() for e in api.decode(line)]
    states = [(str(e.peer), e.state) for e in events if isinstance(e, api.PeerState)]
    assert ("10.99.0.13", "up") in states and ("10.99.0.13", "connected") in states
    down = [e for e in events if isinstance(e, api.PeerState) and e.state == "down"]
    assert down and down[0].reason.startswith("notification received")
    ann = {(str(e.peer), str(e.prefix)): e.attrs for e in events if isinstance(e, api.RouteAnnounce)}
    assert ann[("10.99.0.14", "10.250.4.0/24")].next_hop == ip("10.99.0.14")
    assert ann[("10.99.0.14", "10.250.4.0/24")].origin == "incomplete"
    assert ann[("10.99.0.13", "10.250.3.0/24")].local_pref == 100
    wd = [(str(e.peer), str(e.prefix)) for e in events if isinstance(e, api.RouteWithdraw)]
    assert wd == [("10.99.0.14", "10.250.4.0/24")]
    assert [e.family for e in events if isinstance(e, api.EndOfRib)] == ["ipv4 unicast"]


def test_reflected_attributes_and_acks() -> None:
    line = (
        '{"type":"update","neighbor":{"address":{"local":"10.99.0.11","peer":"10.99.0.2"},"message":{"update":'
        '{"attribute":{"origin":"igp","as-path":[65001],"local-preference":100,"originator-id":"10.99.0.3",'
        '"cluster-list":["10.99.0.2"]},"announce":{"ipv4 unicast":{"10.99.0.3":[{"nlri":"10.244.3.0/26"},'
        '{"nlri":"10.244.4.0/26"}]}}}}}}'
    )
    evs = api.decode(line)
    assert len(evs) == 2 and all(isinstance(e, api.RouteAnnounce) for e in evs)
    a = evs[0].attrs  # type: ignore[union-attr]
    assert (a.originator_id, a.cluster_list, a.as_path) == ("10.99.0.3", ("10.99.0.2",), (65001,))
    assert api.RouteAttrs.from_json(a.to_json()) == a
    assert api.decode("done") == [api.Ack(True)] and api.decode("error") == [api.Ack(False)]
    assert api.decode("garbage {") == [] and api.decode('{"type":"keepalive"}') == []


def test_commands() -> None:
    assert (
        api.announce_cmd(ip("10.99.0.12"), net("10.244.1.0/26"), api.Announcement())
        == "neighbor 10.99.0.12 announce route 10.244.1.0/26 next-hop self"
    )
    refl = api.Announcement(
        next_hop="10.99.0.13",
        as_path=(65001,),
        local_pref=100,
        originator_id="10.99.0.13",
        cluster_list=("1.1.1.1", "2.2.2.2"),
    )
    assert api.announce_cmd("10.99.0.12", "10.244.3.0/26", refl) == (
        "neighbor 10.99.0.12 announce route 10.244.3.0/26 next-hop 10.99.0.13 as-path [ 65001 ] "
        "local-preference 100 originator-id 10.99.0.13 cluster-list [ 1.1.1.1 2.2.2.2 ]"
    )
    assert (
        api.withdraw_cmd("10.99.0.12", "10.244.1.0/26") == "neighbor 10.99.0.12 withdraw route 10.244.1.0/26"
    )
    assert api.eor_cmd("10.99.0.12") == "neighbor 10.99.0.12 announce eor ipv4 unicast"


SETTINGS = SpeakerSettings(
    router_id="10.99.0.11",
    local_address="10.99.0.11",
    local_as=64512,
    relay_argv=("/usr/bin/python3", "/x/relay.py", "/run/s.sock"),
)


def test_render_is_deterministic_and_complete() -> None:
    peers = [
        BgpPeer(ip("10.99.0.13"), 64512, KIND_MESH, passive=True),
        BgpPeer(ip("10.99.0.2"), 65001, KIND_GLOBAL, local_as=64999, password="pw", port=1179),
    ]
    text = render(SETTINGS, peers)
    assert text == render(SETTINGS, list(reversed(peers)))
    assert "process pycni { run /usr/bin/python3 /x/relay.py /run/s.sock; encoder json; }" in text
    assert "manual-eor true;" in text and "adj-rib-out true;" in text and "graceful-restart 120;" in text
    lines = [line for line in text.splitlines() if line.startswith("neighbor ")]
    assert lines == [
        'neighbor 10.99.0.2 { inherit pycni; peer-as 65001; description "Global_10_99_0_2_port_1179"; '
        'local-as 64999; md5-password "pw"; connect 1179; }',
        'neighbor 10.99.0.13 { inherit pycni; peer-as 64512; description "Mesh_10_99_0_13"; passive true; }',
    ]
    with pytest.raises(Invalid):
        render(SETTINGS, [BgpPeer(ip("10.99.0.2"), 1, KIND_GLOBAL, password='a"b')])


def test_render_validates_with_exabgp(tmp_path: object) -> None:
    import shutil
    import subprocess
    import sys

    exa = os.path.join(os.path.dirname(sys.executable), "exabgp")
    if not os.path.exists(exa) and not shutil.which("exabgp"):
        pytest.skip("no exabgp")
    path = os.path.join(str(tmp_path), "exabgp.conf")
    write_atomic(
        path, render(SETTINGS, [BgpPeer(ip("10.99.0.13"), 64512, KIND_MESH, passive=True, password="x y")])
    )
    cp = subprocess.run(
        [exa if os.path.exists(exa) else "exabgp", "validate", path],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "exabgp.api.cli": "false"},
        timeout=60,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert (
        write_atomic(
            path,
            render(SETTINGS, [BgpPeer(ip("10.99.0.13"), 64512, KIND_MESH, passive=True, password="x y")]),
        )
        is False
    )


def test_status_table_is_calicoctls() -> None:
    doc = {"peers": [peer_row("172.31.40.217", KIND_MESH, "up", 0.0, False) | {"since": "17:38:47"}]}
    assert format_status(doc) == (
        "Calico process is running.\n\n"
        "IPv4 BGP status\n"
        "+---------------+-------------------+-------+----------+-------------+\n"
        "| PEER ADDRESS  |     PEER TYPE     | STATE |  SINCE   |    INFO     |\n"
        "+---------------+-------------------+-------+----------+-------------+\n"
        "| 172.31.40.217 | node-to-node mesh | up    | 17:38:47 | Established |\n"
        "+---------------+-------------------+-------+----------+-------------+\n\n"
        "IPv6 BGP status\n"
        "No IPv6 peers found.\n\n"
    )
    assert format_status(None) == "Calico process is not running.\n"
    assert peer_row("10.0.0.1", KIND_GLOBAL, "down", 5.0, False)["info"] == "Active"
    assert peer_row("10.0.0.1", KIND_GLOBAL, "down", 0.0, True)["info"] == "Passive"
