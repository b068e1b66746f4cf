"""The CNI skeleton and spec types, without root: env validation, version negotiation, error JSON,
result conversion, conflists, and the rule that nothing but the error JSON ever reaches stdout."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pycni.cni import spec
from pycni.cni.skel import dispatch, parse
from pycni.cni.spec import CmdArgs, CniError

ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "abc",
    "CNI_NETNS": "/run/netns/x",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
}
CONF = {"cniVersion": "1.0.0", "name": "net", "type": "pycni", "mode": "calico"}
RESULT = {
    "interfaces": [
        {"name": "cali1", "mac": "ee:ee:ee:ee:ee:ee"},
        {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x", "mtu": 1450},
    ],
    "ips": [{"address": "10.244.0.5/32", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1", "scope": 0}],
    "dns": {},
}


class Stub:
    def __init__(self, exc: Exception | None = None) -> None:
        self.calls: list[CmdArgs] = []
        self.exc = exc

    def _do(self, a: CmdArgs) -> None:
        self.calls.append(a)
        if self.exc is not None:
            raise self.exc

    def add(self, a: CmdArgs) -> dict[str, Any]:
        self._do(a)
        return RESULT

    def delete(self, a: CmdArgs) -> None:
        self._do(a)

    def check(self, a: CmdArgs) -> None:
        self._do(a)

    def gc(self, a: CmdArgs) -> None:
        self._do(a)

    def status(self, a: CmdArgs) -> None:
        self._do(a)


def run(
    env: dict[str, str], conf: Any = CONF, plugin: Stub | None = None
) -> tuple[int, dict[str, Any] | None]:
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    rc, out = dispatch(env, data, plugin or Stub())
    return rc, (json.loads(out) if out else None)


def test_add_result_and_args() -> None:
    stub = Stub()
    rc, out = run(ENV, plugin=stub)
    assert rc == 0 and out is not None
    assert out["cniVersion"] == "1.0.0"
    assert out["ips"] == [{"address": "10.244.0.5/32", "interface": 1}]
    assert "mtu" not in out["interfaces"][1] and "scope" not in out["routes"][0]  # 1.1.0-only fields
    a = stub.calls[0]
    assert a.args["K8S_POD_NAME"] == "web-0" and a.container_id == "abc" and a.ifname == "eth0"


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_legacy_result_shape(version: str) -> None:
    rc, out = run(ENV, {**CONF, "cniVersion": version})
    assert rc == 0 and out is not None
    assert out["cniVersion"] == version
    assert out["ips"][0] == {"version": "4", "address": "10.244.0.5/32", "interface": 1}


def test_1_1_0_keeps_new_fields() -> None:
    rc, out = run(ENV, {**CONF, "cniVersion": "1.1.0"})
    assert out is not None and out["interfaces"][1]["mtu"] == 1450 and out["routes"][0]["scope"] == 0


@pytest.mark.parametrize(
    ("env", "conf", "code", "needle"),
    [
        ({**ENV, "CNI_COMMAND": ""}, CONF, 4, "CNI_COMMAND"),
        ({k: v for k, v in ENV.items() if k != "CNI_CONTAINERID"}, CONF, 4, "CNI_CONTAINERID"),
        ({k: v for k, v in ENV.items() if k != "CNI_NETNS"}, CONF, 4, "CNI_NETNS"),
        ({k: v for k, v in ENV.items() if k != "CNI_PATH"}, CONF, 4, "CNI_PATH"),
        ({**ENV, "CNI_COMMAND": "FROB"}, CONF, 4, "FROB"),
        ({**ENV, "CNI_CONTAINERID": "-bad id"}, CONF, 4, "containerID"),
        ({**ENV, "CNI_IFNAME": "a" * 16}, CONF, 4, "CNI_IFNAME"),
        ({**ENV, "CNI_ARGS": "novalue"}, CONF, 4, "CNI_ARGS"),
        (ENV, b"{not json", 6, "decoding"),
        (ENV, b"[1, 2]", 6, "decoding"),
        (ENV, {**CONF, "cniVersion": "2.0.0"}, 1, "incompatible"),
        (ENV, {k: v for k, v in CONF.items() if k != "cniVersion"}, 7, "cniVersion"),
        (ENV, {k: v for k, v in CONF.items() if k != "name"}, 7, "name"),
        ({**ENV, "CNI_COMMAND": "GC"}, CONF, 1, "GC"),
        ({**ENV, "CNI_COMMAND": "STATUS"}, {**CONF, "cniVersion": "0.4.0"}, 1, "STATUS"),
    ],
)
def test_errors(env: dict[str, str], conf: Any, code: int, needle: str) -> None:
    stub = Stub()
    rc, out = run(env, conf, stub)
    assert rc == 1 and out is not None
    assert out["code"] == code
    assert needle.lower() in (out["msg"] + out.get("details", "")).lower()
    assert set(out) <= {"cniVersion", "code", "msg", "details"}
    assert stub.calls == []


def test_del_needs_no_netns() -> None:
    env = {k: v for k, v in ENV.items() if k != "CNI_NETNS"}
    rc, out = run({**env, "CNI_COMMAND": "DEL"})
    assert rc == 0 and out is None


def test_plugin_errors_keep_their_code_and_config_version() -> None:
    rc, out = run(ENV, {**CONF, "cniVersion": "0.4.0"}, Stub(CniError(11, "busy", "try later")))
    assert rc == 1 and out == {"cniVersion": "0.4.0", "code": 11, "msg": "busy", "details": "try later"}


def test_unexpected_exception_is_code_999_without_traceback() -> None:
    rc, out = run(ENV, CONF, Stub(KeyError("boom")))
    assert rc == 1 and out is not None
    assert out["code"] == 999 and "KeyError" in out["msg"] and "Traceback" not in json.dumps(out)


def test_version() -> None:
    rc, out = run({"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0 and out == {"cniVersion": "1.1.0", "supportedVersions": list(spec.SUPPORTED_VERSIONS)}


def test_conflist_picks_our_plugin() -> None:
    conflist = {
        "cniVersion": "1.0.0",
        "name": "k8s",
        "plugins": [
            {"type": "pycni", "mode": "flannel"},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    a = parse(ENV, json.dumps(conflist).encode())
    assert a.conf == {"type": "pycni", "mode": "flannel", "name": "k8s", "cniVersion": "1.0.0"}


def test_netns_override() -> None:
    a = parse({**ENV, "CNI_NETNS_OVERRIDE": "/proc/1/ns/net"}, json.dumps(CONF).encode())
    assert a.netns == "/proc/1/ns/net"


def test_parse_cni_args() -> None:
    assert spec.parse_cni_args("A=1;B=;;C=x=y") == {"A": "1", "B": "", "C": "x=y"}


@pytest.mark.parametrize(
    "obj",
    [
        {
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "eth0", "sandbox": "/run/netns/x"},
            ],
            "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}],
            "dns": {},
        },
        {"a": [], "b": {}, "c": [[], {}, [1, [2, {"x": None}]]], "d": True, "e": False},
        {"g": 'ü\u2028"\\\n\t\x00\x7f'},
        {"big": 2**70, "neg": -3, "zero": 0},
        [],
        {},
        "s",
        None,
        {"float": 1.5},  # falls back to json.dumps
        {1: "int key"},
        {"tuple": (1, [2])},
    ],
)
def test_dumps_is_json_dumps_indent_4(obj: object) -> None:
    import json

    assert spec.dumps(obj) == (json.dumps(obj, indent=4) + "\n").encode()
