"""deploy/: every manifest parses and says what the cluster needs (no Docker or kind here).

PyYAML is not a dependency, so a strict loader for the block-YAML subset our manifests use lives
below (mappings, sequences, plain/quoted scalars, `|` literal blocks, JSON flow collections); it
refuses anything else, which keeps the manifests in that subset. Where PyYAML happens to be
installed, its reading must agree with ours. install-cni.sh is run for real against a temp dir.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROOT = DEPLOY.parent


# -- a strict loader for the YAML subset used in deploy/ -------------------------------------------
class YamlSubsetError(ValueError):
    pass


_INT = re.compile(r"^-?[0-9]+$")


def _scalar(text: str, where: str) -> Any:
    t = text.strip()
    if t.startswith('"'):
        return json.loads(t)
    if t.startswith("'"):
        if not t.endswith("'") or len(t) < 2:
            raise YamlSubsetError(f"{where}: unterminated quote")
        return t[1:-1].replace("''", "'")
    if t.startswith(("[", "{")):
        try:
            return json.loads(t)
        except json.JSONDecodeError as e:
            raise YamlSubsetError(f"{where}: flow collections must be JSON: {t}") from e
    if t in ("true", "false"):
        return t == "true"
    if t in ("null", "~", ""):
        return None
    if _INT.match(t):
        return int(t)
    if ": " in t or " #" in t or t.startswith(("&", "*", "!", "|", ">", "%", "@", "`")):
        raise YamlSubsetError(f"{where}: plain scalar outside the subset: {t!r}")
    return t


class _Loader:
    def __init__(self, lines: list[str], name: str) -> None:
        self.lines = lines
        self.name = name

    def _indent(self, i: int) -> int:
        line = self.lines[i]
        return len(line) - len(line.lstrip(" "))

    def _skip(self, i: int) -> int:
        while i < len(self.lines):
            s = self.lines[i].strip()
            if s and not s.startswith("#"):
                if "\t" in self.lines[i][: self._indent(i) + 1]:
                    raise YamlSubsetError(f"{self.name}:{i + 1}: tab in indentation")
                return i
            i += 1
        return i

    def load(self) -> Any:
        i = self._skip(0)
        if i >= len(self.lines):
            return None
        value, i = self._block(i, self._indent(i))
        i = self._skip(i)
        if i < len(self.lines):
            raise YamlSubsetError(f"{self.name}:{i + 1}: unexpected content {self.lines[i]!r}")
        return value

    def _block(self, i: int, indent: int) -> tuple[Any, int]:
        content = self.lines[i].strip()
        if content == "-" or content.startswith("- "):
            return self._seq(i, indent)
        return self._map(i, indent)

    def _is_item(self, i: int) -> bool:
        content = self.lines[i].strip()
        return content == "-" or content.startswith("- ")

    def _seq(self, i: int, indent: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        while True:
            i = self._skip(i)
            if i >= len(self.lines) or self._indent(i) != indent:
                return out, i
            content = self.lines[i].strip()
            if not (content == "-" or content.startswith("- ")):
                return out, i
            rest = content[1:].lstrip(" ")
            if not rest:
                j = self._skip(i + 1)
                if j < len(self.lines) and self._indent(j) > indent:
                    value, i = self._block(j, self._indent(j))
                else:
                    value, i = None, i + 1
            elif rest in ("|", "|-"):
                value, i = self._literal(i + 1, indent, keep_newline=rest == "|")
            elif _is_key(rest):
                # "- key: value": a mapping whose first key sits at the column after "- "
                col = indent + (len(content) - len(rest))
                self.lines[i] = " " * col + rest
                value, i = self._map(i, col)
            else:
                value, i = _scalar(rest, f"{self.name}:{i + 1}"), i + 1
            out.append(value)

    def _map(self, i: int, indent: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        while True:
            i = self._skip(i)
            if i >= len(self.lines) or self._indent(i) != indent:
                return out, i
            content = self.lines[i].strip()
            if content.startswith("- "):
                return out, i
            if not _is_key(content):
                raise YamlSubsetError(f"{self.name}:{i + 1}: expected 'key: value', got {content!r}")
            key, _, rest = content.partition(":")
            key = _scalar(key, f"{self.name}:{i + 1}") if key.startswith(('"', "'")) else key
            if key in out:
                raise YamlSubsetError(f"{self.name}:{i + 1}: duplicate key {key!r}")
            rest = rest.strip()
            if rest in ("|", "|-"):
                out[key], i = self._literal(i + 1, indent, keep_newline=rest == "|")
            elif rest:
                out[key], i = _scalar(rest, f"{self.name}:{i + 1}"), i + 1
            else:
                j = self._skip(i + 1)
                if j < len(self.lines) and self._indent(j) > indent:
                    out[key], i = self._block(j, self._indent(j))
                elif j < len(self.lines) and self._indent(j) == indent and self._is_item(j):
                    out[key], i = self._seq(j, indent)  # k8s style: a list at its key's indent
                else:
                    out[key], i = None, i + 1

    def _literal(self, i: int, parent: int, *, keep_newline: bool) -> tuple[str, int]:
        body: list[str] = []
        block_indent: int | None = None
        while i < len(self.lines):
            line = self.lines[i]
            if line.strip() == "":
                body.append("")
                i += 1
                continue
            ind = len(line) - len(line.lstrip(" "))
            if ind <= parent:
                break
            if block_indent is None:
                block_indent = ind
            if ind < block_indent:
                raise YamlSubsetError(f"{self.name}:{i + 1}: literal block line less indented than its first")
            body.append(line[block_indent:])
            i += 1
        while body and body[-1] == "":
            body.pop()
        text = "\n".join(body)
        return (text + "\n" if keep_newline and body else text), i


def _is_key(s: str) -> bool:
    m = re.match(r"""^("[^"]*"|'[^']*'|[A-Za-z0-9_./-]+):( |$)""", s)
    return m is not None


def load_all(path: Path) -> list[Any]:
    docs: list[list[str]] = [[]]
    for line in path.read_text().split("\n"):
        if line.rstrip() == "---":
            docs.append([])
        else:
            docs[-1].append(line.rstrip())
    out = [_Loader(d, path.name).load() for d in docs]
    return [d for d in out if d is not None]


# -- the manifests -----------------------------------------------------------------------------
YAMLS = sorted(DEPLOY.glob("*.yaml"))


def _docs() -> dict[str, list[dict[str, Any]]]:
    return {p.name: load_all(p) for p in YAMLS}


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for docs in _docs().values() for d in docs if d.get("kind") == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _by_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def test_the_loader_reads_the_subset(tmp_path: Path) -> None:
    text = (
        "a: 1\nb:\n- x\n- k: v\n  n: 'it''s'\n"
        "c: |\n  line1\n    indented\n\n  # not a comment\nd: [\"p\", 2]\n"
    )
    p = tmp_path / "subset.yaml"
    p.write_text(text)
    (doc,) = load_all(p)
    assert doc == {
        "a": 1,
        "b": ["x", {"k": "v", "n": "it's"}],
        "c": "line1\n  indented\n\n# not a comment\n",
        "d": ["p", 2],
    }
    with pytest.raises(YamlSubsetError):
        _Loader(["a: &anchor x"], "t").load()


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_every_manifest_parses_and_is_named(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path.name} is empty"
    for d in docs:
        assert isinstance(d, dict) and d.get("apiVersion") and d.get("kind"), d
        if d["kind"] != "Cluster":
            assert d["metadata"]["name"]
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return
    assert [d for d in yaml.safe_load_all(path.read_text()) if d is not None] == docs


def test_expected_files_exist() -> None:
    names = {p.name for p in DEPLOY.iterdir()}
    assert {"kind-config.yaml", "rbac.yaml", "configmap.yaml", "etcd.yaml", "pycni-calico.yaml",
            "pycni-flannel.yaml", "install-cni.sh", "Dockerfile"} <= names  # fmt: skip


def test_kind_config_disables_the_default_cni() -> None:
    (cfg,) = load_all(DEPLOY / "kind-config.yaml")
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert cfg["networking"]["disableDefaultCNI"] is True
    assert cfg["networking"]["podSubnet"] == _net_conf()["Network"]
    assert [n["role"] for n in cfg["nodes"]].count("control-plane") == 1


def test_rbac_grants_what_the_daemons_use() -> None:
    sa = _one("ServiceAccount", "pycni")
    role = _one("ClusterRole", "pycni")
    binding = _one("ClusterRoleBinding", "pycni")
    grants = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    for res in ("nodes", "pods", "endpoints"):
        assert {(res, "get"), (res, "list"), (res, "watch")} <= grants
    assert ("nodes/status", "patch") in grants
    assert not any(v in ("create", "delete", "update", "*") for _, v in grants), "least privilege"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "pycni",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pycni", "namespace": sa["metadata"]["namespace"]}
    ]


def _config() -> dict[str, str]:
    cm: dict[str, str] = _one("ConfigMap", "pycni-config")["data"]
    return cm


def _net_conf() -> dict[str, Any]:
    conf: dict[str, Any] = json.loads(_config()["net-conf.json"])
    return conf


def test_configmap_holds_valid_configs() -> None:
    data = _config()
    net = _net_conf()
    assert net["Network"] == "10.244.0.0/16" and net["Backend"]["Type"] == "vxlan"
    assert data["etcd_endpoints"].startswith("http://")
    for key, mode in (("cni-conflist-calico", "calico"), ("cni-conflist-flannel", "flannel")):
        conf = json.loads(data[key])
        assert conf["cniVersion"] == "1.0.0" and conf["name"]
        first = conf["plugins"][0]
        assert first["type"] == "pycni" and first["mode"] == mode
    calico = json.loads(data["cni-conflist-calico"])["plugins"][0]
    assert calico["etcd_endpoints"] == "__ETCD_ENDPOINTS__"
    assert calico["nodename"] == "__KUBERNETES_NODE_NAME__"
    assert calico["datastore_type"] == "etcdv3"
    for conf in (calico, json.loads(data["cni-conflist-flannel"])["plugins"][0]):
        assert conf["agentSocket"] == "/run/pycni/cni.sock"  # where the daemons' --cni-socket listens
    flannel = json.loads(data["cni-conflist-flannel"])["plugins"][0]
    assert flannel["subnetFile"] == "/run/flannel/subnet.env"


def test_etcd_service_matches_the_configured_endpoint() -> None:
    svc = _one("Service", "pycni-etcd")
    ip, port = _config()["etcd_endpoints"].removeprefix("http://").split(":")
    assert svc["spec"]["clusterIP"] == ip and svc["spec"]["ports"][0]["port"] == int(port)
    ds = _one("DaemonSet", "pycni-etcd")
    assert svc["spec"]["selector"] == ds["spec"]["template"]["metadata"]["labels"]
    assert any(f"--listen-client-urls=http://0.0.0.0:{port}" == a
               for a in ds["spec"]["template"]["spec"]["containers"][0]["command"])  # fmt: skip


def _check_pod_spec(ds: dict[str, Any]) -> dict[str, Any]:
    """What every DaemonSet must get right; returns the pod spec."""
    spec = ds["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert {"operator": "Exists"} in pod["tolerations"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert len(volumes) == len(pod["volumes"]), "duplicate volume names"
    cm_keys = set(_config())
    for c in pod.get("initContainers", []) + pod["containers"]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{c['name']} mounts undeclared volume {m['name']}"
        declared: list[str] = []
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                assert ref["name"] == "pycni-config" and ref["key"] in cm_keys, ref
            for var in re.findall(r"\$\(([A-Z_]+)\)", str(e.get("value", ""))):
                assert var in declared, f"{c['name']}: {e['name']} uses $({var}) before it is defined"
            declared.append(e["name"])
        for arg in c.get("command", []) + c.get("args", []):
            for var in re.findall(r"\$\(([A-Z_]+)\)", arg):
                assert var in declared, f"{c['name']}: $({var}) in the command is not in its env"
    for v in volumes.values():
        items = v.get("configMap", {}).get("items", [])
        assert all(i["key"] in cm_keys for i in items)
    return pod


def volumes_by_name(pod: dict[str, Any]) -> dict[str, Any]:
    return {v["name"]: v for v in pod["volumes"]}


def _scripts() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(pyproject["project"]["scripts"])


@pytest.mark.parametrize(
    ("name", "containers", "conflist"),
    [
        ("pycni-node", ["pycni-felix", "pycni-bgpd"], "cni-conflist-calico"),
        ("pycni-flannel", ["pycni-flanneld"], "cni-conflist-flannel"),
    ],
)
def test_node_daemonsets(name: str, containers: list[str], conflist: str) -> None:
    ds = _one("DaemonSet", name)
    assert ds["metadata"]["namespace"] == "kube-system"
    pod = _check_pod_spec(ds)
    assert pod["serviceAccountName"] == "pycni"
    assert pod["priorityClassName"] == "system-node-critical"
    assert [c["name"] for c in pod["containers"]] == containers
    scripts = _scripts()  # console scripts declared in pyproject
    for c in pod["containers"]:
        assert c["command"][0] == c["name"] and c["command"][0] in scripts
        assert any(a.startswith("--etcd-endpoints=") for a in c["command"])
        env = {e["name"]: e for e in c["env"]}
        assert env["NODENAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        sc = c["securityContext"]
        assert sc.get("privileged") is True or "NET_ADMIN" in sc["capabilities"]["add"]
        sockets = [a.split("=", 1)[1] for a in c["command"] if a.startswith("--cni-socket=")]
        if sockets:  # the agent serving the plugin's fast path, on the host path the front dials
            assert sockets == ["/run/pycni/cni.sock"]
            (run,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/run/pycni"]
            assert volumes_by_name(pod)[run["name"]]["hostPath"]["path"] == "/run/pycni"
    assert sum(any(a.startswith("--cni-socket=") for a in c["command"]) for c in pod["containers"]) == 1
    (install,) = [c for c in pod["initContainers"] if c["name"] == "install-cni"]
    assert install["command"] == ["/usr/local/bin/install-cni.sh"]
    env = {e["name"]: e.get("value") for e in install["env"]}
    assert env["CNI_CONFLIST_SRC"] == f"/etc/pycni/config/{conflist}"
    mounts = {m["mountPath"]: m["name"] for m in install["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/host/opt/cni/bin"]]["hostPath"]["path"] == "/opt/cni/bin"
    assert volumes[mounts["/host/etc/cni/net.d"]]["hostPath"]["path"] == "/etc/cni/net.d"
    assert volumes[mounts["/host/opt/pycni"]]["hostPath"]["path"] == "/opt/pycni"
    assert volumes[mounts["/etc/pycni/config"]]["configMap"]["name"] == "pycni-config"


def test_flannel_seed_script_compiles() -> None:
    pod = _one("DaemonSet", "pycni-flannel")["spec"]["template"]["spec"]
    (seed,) = [c for c in pod["initContainers"] if c["name"] == "seed-net-conf"]
    assert seed["command"][:2] == ["python3", "-c"]
    compile(seed["command"][2], "seed-net-conf", "exec")
    assert "/coreos.com/network/config" in seed["command"][2]


def test_dockerfile_installs_what_the_manifests_run() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", text, re.M)
    assert "COPY deploy/install-cni.sh /usr/local/bin/install-cni.sh" in text
    for src in re.findall(r"^COPY (\S+) \./", text, re.M):
        assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"


def test_route_protocol_names_match_the_constants() -> None:
    from pycni.constants import RT_PROTO_NAMES

    lines = (DEPLOY / "rt_protos.d" / "pycni.conf").read_text().splitlines()
    table = dict(ln.split() for ln in lines if ln and not ln.startswith("#"))
    assert {int(k): v for k, v in table.items()} == RT_PROTO_NAMES
    text = (DEPLOY / "Dockerfile").read_text()
    assert "COPY deploy/rt_protos.d/pycni.conf /etc/iproute2/rt_protos.d/pycni.conf" in text


def test_install_cni_installs_a_working_plugin(tmp_path: Path) -> None:
    """Run install-cni.sh into a fake host, then run the installed plugin as kubelet would (VERSION).

    The "image runtime" is a directory whose bin/python3 execs this venv's python, so the whole
    chain runs for real: sh wrapper -> runtime python -IS front.py -> no agent at the socket ->
    in-process fallback (runtime python, pycni.cni.skel) -> CNI VERSION JSON on stdout.
    """
    runtime = tmp_path / "image-usr-local"
    (runtime / "bin").mkdir(parents=True)
    (runtime / "lib").mkdir()
    py = runtime / "bin" / "python3"
    py.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    py.chmod(0o755)
    conflist = tmp_path / "conflist"
    conflist.write_text(_config()["cni-conflist-calico"])
    host = tmp_path / "host"
    env = {
        **os.environ,
        "HOST_CNI_BIN_DIR": str(host / "opt/cni/bin"),
        "HOST_CNI_NET_DIR": str(host / "etc/cni/net.d"),
        "HOST_PYCNI_DIR": str(host / "opt/pycni"),
        "PYCNI_HOST_PATH": str(host / "opt/pycni"),  # the test's "host" is this machine
        "PYCNI_RUNTIME_SRC": str(runtime),
        "BUILD_PYTHON": sys.executable,
        "AGENT_SOCKET": str(tmp_path / "no-agent.sock"),
        "CNI_CONFLIST_SRC": str(conflist),
        "ETCD_ENDPOINTS": "http://10.96.232.136:6666",
        "KUBERNETES_NODE_NAME": "kind-worker",
    }
    script = str(DEPLOY / "install-cni.sh")
    for _ in range(2):  # re-running (a restarted pod) replaces everything in place
        p = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
    plugin = host / "opt/cni/bin/pycni"
    assert os.access(plugin, os.X_OK)
    front = (host / "opt/pycni/front.py").read_text()
    assert front.startswith(f"#!{host}/opt/pycni/runtime/bin/python3 -IS")
    assert f"DEFAULT_SOCKET = '{tmp_path}/no-agent.sock'" in front
    conf = json.loads((host / "etc/cni/net.d/10-pycni.conflist").read_text())
    assert conf["plugins"][0]["etcd_endpoints"] == "http://10.96.232.136:6666"
    assert conf["plugins"][0]["nodename"] == "kind-worker"
    pycni_dir = host / "opt/pycni"
    assert (pycni_dir / "runtime").is_symlink()
    assert sorted(p.name for p in pycni_dir.iterdir() if p.name.startswith("runtime-")) == [
        os.readlink(pycni_dir / "runtime")
    ], "old runtimes are removed"
    leftovers = [p.name for d in (host / "opt/cni/bin", host / "etc/cni/net.d") for p in d.iterdir()]
    assert sorted(leftovers) == ["10-pycni.conflist", "pycni"], "no temp files left behind"
    assert sorted(p.name for p in pycni_dir.iterdir() if not p.name.startswith("runtime-")) == [
        "front.py",
        "runtime",
    ]

    # kubelet's view: run the installed plugin
    run = subprocess.run(
        [str(plugin)],
        input=json.dumps({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "pycni"}),
        env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "1.0.0" in json.loads(run.stdout)["supportedVersions"]


def test_install_cni_refuses_bad_input(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HOST_CNI_BIN_DIR": str(tmp_path / "bin"),
        "HOST_CNI_NET_DIR": str(tmp_path / "net.d"),
        "HOST_PYCNI_DIR": str(tmp_path / "pycni"),
        "PYCNI_RUNTIME_SRC": "none",
        "BUILD_PYTHON": sys.executable,
    }
    script = str(DEPLOY / "install-cni.sh")
    bad = tmp_path / "bad"
    bad.write_text("{not json")
    p = subprocess.run(
        ["sh", script], env={**env, "CNI_CONFLIST_SRC": str(bad)}, capture_output=True, text=True
    )
    assert p.returncode == 1 and "not valid JSON" in p.stderr
    assert not (tmp_path / "net.d" / "10-pycni.conflist").exists()
    assert os.listdir(tmp_path / "net.d") == [], "the rejected temp file is removed"
    p = subprocess.run(["sh", script], env={**env, "CNI_CONFLIST_SRC": ""}, capture_output=True, text=True)
    assert p.returncode == 1 and "CNI_CONFLIST_SRC" in p.stderr
