"""The fast-path front, the agent protocol, names and the result cache, without root.

The installed front is executed for real (as kubelet would) against a small socket server that
speaks the agent's protocol, and against no server at all (the in-process fallback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycni.cni import calico, front
from pycni.cni.cache import ResultCache
from pycni.cni.install import install_plugin, render
from pycni.cni.server import ANSWERED, FALLBACK, read_request
from pycni.cni.veth import bridge_port_name
from pycni.datastore import calico as c


def test_socket_path_without_json() -> None:
    assert front._socket_path(b'{"agentSocket": "/x/y.sock", "a": 1}') == b"/x/y.sock"
    assert front._socket_path(b'{"agentSocket":"/x/y.sock"}') == b"/x/y.sock"
    assert front._socket_path(b'{"name": "n"}') == front.DEFAULT_SOCKET.encode()
    assert front._socket_path(b'{"agentSocket": "/a\\/b"}') == b"/a/b"  # escapes: real parser
    assert front._socket_path(b"garbage") == front.DEFAULT_SOCKET.encode()


def test_install_renders_interpreters(tmp_path: Path) -> None:
    src = install_plugin(tmp_path / "src", precompile=False)
    text = src.read_text()
    assert os.access(src, os.X_OK)
    first = text.splitlines()[0]
    assert first.startswith("#!") and first.endswith(" -IS")
    assert f"FALLBACK_PYTHON = {sys.executable!r}" in text
    assert "import pycni" not in text.replace("from pycni.cni.skel import main", "")
    assert "DEFAULT_SOCKET = '/s.sock'" in render(default_socket="/s.sock")
    stub = install_plugin(tmp_path / "bin").read_text()
    assert stub.splitlines()[0] == first and "marshal.loads" in stub and len(stub.splitlines()) == 4


@pytest.mark.parametrize("precompile", [True, False])
def test_both_installs_run(tmp_path: Path, precompile: bool) -> None:
    p = install_plugin(tmp_path / "bin", precompile=precompile)
    r = subprocess.run([str(p)], env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["cniVersion"] == "1.1.0"


class FakeAgent:
    """Speaks the agent protocol; records requests; answers canned output or FALLBACK."""

    def __init__(self, path: Path, kind: int = ANSWERED, rc: int = 0, out: bytes = b'{"ok": true}\n') -> None:
        self.path = path
        self.kind, self.rc, self.out = kind, rc, out
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(read_request(conn))
                conn.sendall(bytes([self.kind, self.rc]) + self.out)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Path]:
    yield install_plugin(tmp_path / "bin")


def run_front(plugin: Path, env: dict[str, str], conf: bytes) -> subprocess.CompletedProcess[bytes]:
    base = {"PATH": "/usr/bin:/bin", "CNI_PATH": "/opt/cni/bin", "CNI_IFNAME": "eth0"}
    return subprocess.run([str(plugin)], input=conf, env={**base, **env}, capture_output=True, timeout=60)


def test_front_relays_to_the_agent(plugin: Path, tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path / "a.sock", rc=7, out=b'{"code": 7}\n')
    try:
        conf = json.dumps(
            {"cniVersion": "1.0.0", "name": "n", "agentSocket": str(tmp_path / "a.sock")}
        ).encode()
        p = run_front(
            plugin,
            {
                "CNI_COMMAND": "ADD",
                "CNI_CONTAINERID": "c1",
                "CNI_NETNS": "/run/netns/x",
                "CNI_ARGS": "K8S_POD_NAME=p",
                "HOME": "/secret",
            },
            conf,
        )
        assert p.returncode == 7 and p.stdout == b'{"code": 7}\n'
        env, stdin = agent.requests[0]
        assert stdin == conf
        assert env["CNI_COMMAND"] == "ADD" and env["CNI_ARGS"] == "K8S_POD_NAME=p" and "HOME" not in env
    finally:
        agent.close()


def test_front_falls_back_in_process(plugin: Path, tmp_path: Path) -> None:
    # no agent: the front execs the venv's python on the skeleton, with stdin restored
    conf = json.dumps(
        {"cniVersion": "0.4.0", "name": "n", "agentSocket": str(tmp_path / "none.sock")}
    ).encode()
    p = run_front(plugin, {"CNI_COMMAND": "ADD", "CNI_NETNS": "/run/netns/x"}, conf)
    assert p.returncode == 1
    assert json.loads(p.stdout) == {
        "cniVersion": "0.4.0",
        "code": 4,
        "msg": "required env variables [CNI_CONTAINERID] missing",
    }
    # an agent that says "not my namespace" also leads to the in-process path
    agent = FakeAgent(tmp_path / "b.sock", kind=FALLBACK)
    try:
        conf = json.dumps(
            {"cniVersion": "1.0.0", "name": "n", "agentSocket": str(tmp_path / "b.sock")}
        ).encode()
        p = run_front(plugin, {"CNI_COMMAND": "DEL"}, conf)
        assert p.returncode == 1 and json.loads(p.stdout)["code"] == 4
    finally:
        agent.close()


def test_front_version_and_dropped_connection(plugin: Path, tmp_path: Path) -> None:
    p = run_front(plugin, {"CNI_COMMAND": "VERSION"}, b"")
    assert p.returncode == 0 and "1.1.0" in json.loads(p.stdout)["supportedVersions"]
    path = tmp_path / "c.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)

    def drop() -> None:
        conn, _ = s.accept()
        conn.recv(65536)
        conn.close()

    t = threading.Thread(target=drop, daemon=True)
    t.start()
    conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "agentSocket": str(path)}).encode()
    p = run_front(plugin, {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c9"}, conf)
    s.close()
    assert p.returncode == 1 and json.loads(p.stdout)["code"] == 11


def test_calico_names() -> None:
    # sha1("default.web-0")[:11], as Calico's VethNameForWorkload
    import hashlib

    want = "cali" + hashlib.sha1(b"default.web-0").hexdigest()[:11]
    assert calico.host_veth_name({"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0"}, "abc") == want
    assert calico.host_veth_name({}, "0123456789abcdef") == "cali0123456789a"
    k8s = {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0"}
    second = calico.host_veth_name(k8s, "abc", ifname="net1")
    assert second != want and second.startswith("cali") and len(second) == 15
    assert calico.wep_name("node-1", "web-0", "eth0") == "node--1-k8s-web--0-eth0"
    assert len(bridge_port_name("c", "eth0")) == 12


def test_wep_value_decodes_as_calico_v3() -> None:
    name = calico.wep_name("n1", "web-0")
    key = calico.wep_key("default", name)
    raw = calico.wep_value(
        name=name,
        namespace="default",
        node="n1",
        pod="web-0",
        container_id="cid",
        endpoint="eth0",
        interface_name="cali123",
        mac="02:00:00:00:00:01",
        ip_networks=["10.244.0.5/32"],
    )
    w = c.decode(key, raw, c.WorkloadEndpoint)
    assert isinstance(w, c.WorkloadEndpoint)
    assert (w.node, w.pod, w.interface_name, [str(x) for x in w.ip_networks]) == (
        "n1",
        "web-0",
        "cali123",
        ["10.244.0.5/32"],
    )
    assert key == "/calico/resources/v3/projectcalico.org/workloadendpoints/default/n1-k8s-web--0-eth0"


def test_result_cache(tmp_path: Path) -> None:
    rc = ResultCache(tmp_path / "cache")
    assert rc.get("n", "c", "eth0") is None and rc.entries("n") == []
    rc.put("n", "c", "eth0", {"hostVeth": "cali1", "result": {"ips": []}})
    assert rc.get("n", "c", "eth0")["hostVeth"] == "cali1"  # type: ignore[index]
    assert (tmp_path / "cache" / "n-c-eth0").exists()
    (tmp_path / "cache" / "n-d-eth0").write_text("{torn")
    assert rc.get("n", "d", "eth0") is None
    assert [e["containerId"] for e in rc.entries("n")] == ["c"]
    assert rc.delete("n", "c", "eth0") and not rc.delete("n", "c", "eth0")


def test_real_server_serves_the_front(plugin: Path, tmp_path: Path) -> None:
    from pycni.cni.server import CniServer

    sock = tmp_path / "agent.sock"
    with CniServer(sock, workers=2) as server:
        conf = b'{"cniVersion": "1.0.0", "agentSocket": "' + str(sock).encode() + b'", nope'
        p = run_front(plugin, {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x"}, conf)
        assert p.returncode == 1 and json.loads(p.stdout)["code"] == 6
        conf = json.dumps(
            {"cniVersion": "0.3.1", "name": "n", "agentSocket": str(sock), "mode": "weave"}
        ).encode()
        p = run_front(plugin, {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c"}, conf)
        assert p.returncode == 1
        assert json.loads(p.stdout) == {
            "cniVersion": "0.3.1",
            "code": 7,
            "msg": "unknown mode 'weave'",
            "details": "mode is 'calico' or 'flannel'",
        }
        assert server.plugin is not None
    assert not sock.exists()
