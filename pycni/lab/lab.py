"""The multi-node lab: nodes as network namespaces on underlay bridges, etcd in its own netns.

`Lab(name)` is both the builder (`up`, `add_node`, `pod_add`, `spawn`) and the handle a later
process gets back from the record (`Lab("demo").pods` in another `pycnictl` call), because all its
state lives in `/run/pycni-lab/<name>/record.json` (see `pycni.lab.record`). The machine's own
network is never touched: veth pairs are created directly between the hub namespace and the node
namespaces, never in the root netns, so a lab is invisible outside its namespaces and `down` is
"delete our namespaces, kill our recorded processes, remove our directory".

Plumbing goes through `ip -n <ns> -batch -` (one exec per namespace and step, about 3 ms): this is
lab scaffolding, not the product, and one text batch per namespace is easier to read and to replay
by hand than the netlink calls. Processes go through `nsenter --net=/run/netns/<ns>`, which execs in
place, so the PID we record is the daemon's; they start in a new session so they outlive the
`pycnictl` that spawned them.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import structlog

import pycni
from pycni.atomic import write_atomic
from pycni.errors import Invalid, PycniError
from pycni.lab import modes as modes_mod
from pycni.lab import plan
from pycni.lab.record import RecordFile, empty_record, proc_alive, proc_cmdline, proc_matches, proc_stat

log = structlog.get_logger(__name__)

NODE_SUBDIRS = ("run/flannel", "var/lib/cni", "etc/cni/net.d", "opt/cni/bin", "log", "run")
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(pycni.__file__)))
SPECIAL_TARGETS = ("hub", "etcd", "rtr")


class LabError(PycniError):
    """A lab step failed (a command inside a namespace, a CNI call, a timeout)."""


@dataclass(frozen=True)
class LabNode:
    """One node: `name` (n<i>), `netns`, underlay `ip` (a string, ready for argv), `segment`, `dir`."""

    name: str
    index: int
    netns: str
    ip: str
    segment: int
    dir: str

    @property
    def nodename(self) -> str:
        return self.name


@dataclass(frozen=True)
class LabPod:
    node: str
    name: str
    netns: str
    container_id: str
    ip: str | None
    result: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.node}/{self.name}"


def _run(
    argv: list[str],
    *,
    input: str | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float | None = 60,
) -> subprocess.CompletedProcess[str]:
    try:
        cp = subprocess.run(argv, input=input, capture_output=True, text=True, env=env, timeout=timeout)
    except FileNotFoundError as e:
        raise LabError(f"{argv[0]}: not installed ({e})") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from e
    if check and cp.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({cp.returncode}): {(cp.stderr or cp.stdout).strip()}")
    return cp


def netns_list() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


class Lab:
    """A named lab; see docs/lab-contract.md for what callers may rely on."""

    def __init__(self, name: str = "lab", *, root: str = plan.RUN_ROOT) -> None:
        self.name = plan.check_lab_name(name)
        self.dir = plan.lab_dir(name, root)
        self._rf = RecordFile(self.dir)
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._mode: modes_mod.Mode | None = None

    # ------------------------------------------------------------------ record views

    @property
    def record(self) -> dict[str, Any]:
        rec = self._rf.load()
        if rec is None:
            raise Invalid(f"lab {self.name!r} is not up (no {self._rf.path})")
        return rec

    def exists(self) -> bool:
        return self._rf.exists()

    @property
    def state(self) -> str:
        rec = self._rf.load()
        return "down" if rec is None else str(rec.get("state"))

    @property
    def segments(self) -> int:
        return int(self.record.get("segments", 1))

    @property
    def mode_name(self) -> str:
        return str(self.record.get("mode"))

    @property
    def mode(self) -> modes_mod.Mode:
        if self._mode is None:
            self._mode = modes_mod.get(self.mode_name)
        return self._mode

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.record.get("opts", {}))

    @property
    def nodes(self) -> list[LabNode]:
        rec = self._rf.load()
        if rec is None:
            return []
        return sorted((self._node_of(v) for v in rec["nodes"].values()), key=lambda n: n.index)

    @staticmethod
    def _node_of(v: dict[str, Any]) -> LabNode:
        return LabNode(v["name"], int(v["index"]), v["netns"], v["ip"], int(v["segment"]), v["dir"])

    def node(self, name: str | LabNode) -> LabNode:
        if isinstance(name, LabNode):
            return name
        v = self.record["nodes"].get(name)
        if v is None:
            raise Invalid(
                f"lab {self.name}: no node {name!r} (have {', '.join(self.record['nodes']) or 'none'})"
            )
        return self._node_of(v)

    @property
    def pods(self) -> list[LabPod]:
        rec = self._rf.load()
        if rec is None:
            return []
        out = [
            LabPod(v["node"], v["name"], v["netns"], v["container_id"], v.get("ip"), v.get("result") or {})
            for v in rec["pods"].values()
            if v.get("state") == "ready"
        ]
        return sorted(out, key=lambda p: (plan.node_index(p.node), p.name))

    @property
    def etcd_endpoint(self) -> str:
        return plan.etcd_endpoint()

    @property
    def etcd_netns(self) -> str:
        return plan.netns_etcd(self.name)

    def netns_of(self, target: str | LabNode) -> str:
        """The netns of a node (`n1`), `hub`, `etcd`, `rtr`, or a pod (`n1/web`)."""
        if isinstance(target, LabNode):
            return target.netns
        if target in SPECIAL_TARGETS:
            return f"{self.name}-{target}"
        if "/" in target:
            node, pod = target.split("/", 1)
            key = f"{node}/{pod}"
            if key not in self.record["pods"]:
                raise Invalid(f"lab {self.name}: no pod {key!r}")
            return str(self.record["pods"][key]["netns"])
        return self.node(target).netns

    def node_gateway(self, node: str | LabNode) -> str | None:
        n = self.node(node)
        return str(plan.router_ip(n.segment)) if self.segments > 1 else None

    # ------------------------------------------------------------------ plumbing helpers

    def ip_batch(self, netns: str, cmds: list[str], *, ignore_errors: bool = False) -> None:
        if not cmds:
            return
        argv = ["ip", "-n", netns] + (["-force"] if ignore_errors else []) + ["-batch", "-"]
        _run(argv, input="\n".join(cmds) + "\n", check=not ignore_errors)

    def sysctl(self, netns: str, key: str, value: str) -> None:
        _run(["nsenter", f"--net=/run/netns/{netns}", "sysctl", "-qw", f"{key}={value}"])

    def _netns_add(self, ns: str) -> None:
        with self._rf.mutate() as rec:
            if ns not in rec["netns"]:
                rec["netns"].append(ns)
        _run(["ip", "netns", "add", ns])
        self.ip_batch(ns, ["link set lo up"])

    def record_file(self, path: str) -> None:
        """Record a file or directory made outside the lab directory, so `down` removes it."""
        with self._rf.mutate() as rec:
            if path not in rec["files"]:
                rec["files"].append(path)

    # ------------------------------------------------------------------ up / down

    def up(
        self,
        nodes: int = 3,
        segments: int = 1,
        mode: str = "bridge",
        *,
        wait_timeout: float = 60.0,
        keep_on_failure: bool = False,
        **opts: Any,
    ) -> Lab:
        """Build the lab; on failure tear down what was made (unless keep_on_failure) and re-raise."""
        plans = plan.plan_nodes(nodes, segments)
        rec = self._rf.load()
        if rec is not None:
            raise Invalid(
                f"lab {self.name!r} already exists (state {rec.get('state')}); "
                f"run `pycnictl lab down --name {self.name}` first"
            )
        stray = [ns for ns in netns_list() if plan.netns_pattern(self.name).match(ns)]
        if stray:
            raise Invalid(
                f"lab {self.name!r}: leftover namespaces {stray}; run `pycnictl lab down --name {self.name}`"
            )
        mode_obj = modes_mod.get(mode)
        why = modes_mod.unavailable_reason(mode_obj)
        if why:
            raise Invalid(f"mode {mode!r} cannot run here: {why}")
        self._mode = mode_obj
        t0 = time.monotonic()
        fresh = empty_record(self.name, REPO_DIR)
        me = proc_stat(os.getpid())
        owner = {"pid": os.getpid(), "starttime": me[1] if me else None, "argv": proc_cmdline(os.getpid())}
        fresh.update(mode=mode, segments=segments, opts=opts, owner=owner)
        self._rf.save(fresh)
        try:
            self._make_underlay(segments)
            self._start_etcd()
            for p in plans:
                self._make_node(p)
            self._wait_etcd(timeout=wait_timeout)
            mode_obj.cluster_setup(self)
            for n in self.nodes:
                self._start_node(n)
            for n in self.nodes:
                mode_obj.wait_ready(self, n, wait_timeout)
            with self._rf.mutate() as r:
                r["state"] = "up"
        except BaseException:
            if not keep_on_failure:
                log.warning("lab up failed, tearing down", lab=self.name)
                self.down()
            raise
        log.info(
            "lab up",
            lab=self.name,
            nodes=nodes,
            segments=segments,
            mode=mode,
            seconds=round(time.monotonic() - t0, 2),
        )
        return self

    def _make_underlay(self, segments: int) -> None:
        hub = plan.netns_hub(self.name)
        self._netns_add(hub)
        cmds = []
        for s in range(segments):
            br = plan.bridge_name(s)
            cmds += [f"link add {br} type bridge", f"link set {br} up"]
        self.ip_batch(hub, cmds)
        if segments > 1:
            rtr = plan.netns_router(self.name)
            self._netns_add(rtr)
            hub_cmds, rtr_cmds = [], []
            for s in range(segments):
                port = plan.hub_port(f"r{s}")
                hub_cmds += [
                    f"link add {port} type veth peer name eth{s} netns {rtr}",
                    f"link set {port} master {plan.bridge_name(s)} up",
                ]
                rtr_cmds += [f"addr add {plan.router_ip(s)}/24 dev eth{s}", f"link set eth{s} up"]
            self.ip_batch(hub, hub_cmds)
            self.ip_batch(rtr, rtr_cmds)
            self.sysctl(rtr, "net.ipv4.ip_forward", "1")

    def _attach(self, ns: str, what: str, seg: int, ip: str, gateway: str | None) -> None:
        hub = plan.netns_hub(self.name)
        port = plan.hub_port(what)
        self.ip_batch(
            hub,
            [
                f"link add {port} type veth peer name eth0 netns {ns}",
                f"link set {port} master {plan.bridge_name(seg)} up",
            ],
        )
        cmds = [f"addr add {ip}/24 dev eth0", "link set eth0 up"]
        if gateway:
            cmds.append(f"route add {plan.UNDERLAY} via {gateway} dev eth0")
        self.ip_batch(ns, cmds)

    def _start_etcd(self) -> None:
        ns = plan.netns_etcd(self.name)
        self._netns_add(ns)
        gw = str(plan.router_ip(0)) if self.segments > 1 else None
        self._attach(ns, "etcd", 0, str(plan.ETCD_IP), gw)
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        data = os.path.join(self.dir, "etcd")
        os.makedirs(data, exist_ok=True)
        ename = f"{self.name}-etcd"
        argv = [
            etcd,
            "--name",
            ename,
            "--data-dir",
            os.path.join(data, "data"),
            "--listen-client-urls",
            f"http://{plan.ETCD_IP}:{plan.ETCD_PORT},http://127.0.0.1:{plan.ETCD_PORT}",
            "--advertise-client-urls",
            self.etcd_endpoint,
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            f"{ename}=http://127.0.0.1:2380",
            "--snapshot-count",
            "10000",
        ]
        self._spawn_in(ns, "etcd", "etcd", argv, os.path.join(data, "etcd.log"), None)

    def _wait_etcd(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            cp = self.etcdctl("endpoint", "health", "--command-timeout=1s", check=False)
            if cp.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise LabError(
                    f"etcd not healthy after {timeout}s: {cp.stderr.strip()} (log: {self.dir}/etcd/etcd.log)"
                )
            time.sleep(0.1)

    def _make_node(self, p: plan.NodePlan) -> LabNode:
        ns = plan.netns_node(self.name, p.name)
        ndir = os.path.join(self.dir, "nodes", p.name)
        with self._rf.mutate() as rec:
            rec["nodes"][p.name] = {
                "name": p.name,
                "index": p.index,
                "netns": ns,
                "ip": str(p.ip),
                "segment": p.segment,
                "dir": ndir,
                "state": "creating",
            }
        for sub in NODE_SUBDIRS:
            os.makedirs(os.path.join(ndir, sub), exist_ok=True)
        self._netns_add(ns)
        self._attach(ns, p.name, p.segment, str(p.ip), str(p.gateway) if p.gateway else None)
        return self.node(p.name)

    def _start_node(self, n: LabNode) -> None:
        conf = self.mode.cni_config(self, n)
        path = os.path.join(n.dir, "etc/cni/net.d", f"10-{self.mode_name}.conflist")
        write_atomic(path, json.dumps(conf, indent=2), if_changed=False)
        self.mode.node_start(self, n)
        with self._rf.mutate() as rec:
            rec["nodes"][n.name]["state"] = "up"

    def add_node(self, wait_timeout: float = 60.0) -> LabNode:
        """Join one more node (the next index) to a running lab, started by the lab's mode."""
        rec = self.record
        index = max((int(v["index"]) for v in rec["nodes"].values()), default=0) + 1
        n = self._make_node(plan.NodePlan.of(index, int(rec["segments"])))
        self._start_node(n)
        self.mode.wait_ready(self, n, wait_timeout)
        log.info("lab node added", lab=self.name, node=n.name, ip=n.ip)
        return n

    def remove_node(self, name: str) -> None:
        """Leave: stop the node's mode, delete its pods, processes, namespace and directory."""
        n = self.node(name)
        try:
            self.mode.node_stop(self, n)
        finally:
            rec = self.record
            for pod in list(rec["pods"].values()):
                if pod["node"] == n.name:
                    self._netns_del(pod["netns"])
            self._stop_processes([e for e in rec["processes"] if e.get("node") == n.name])
            # The kernel frees a deleted namespace's devices later, on a workqueue: delete the hub
            # end of the node's veth now, or a node joining at once under the same index finds its
            # port name still taken (EEXIST).
            hub = plan.netns_hub(self.name)
            self.ip_batch(hub, [f"link del {plan.hub_port(n.name)}"], ignore_errors=True)
            self._netns_del(n.netns)
            shutil.rmtree(n.dir, ignore_errors=True)
            with self._rf.mutate() as r:
                r["nodes"].pop(n.name, None)
                r["pods"] = {k: v for k, v in r["pods"].items() if v["node"] != n.name}
                r["processes"] = [e for e in r["processes"] if e.get("node") != n.name]
                r["netns"] = [x for x in r["netns"] if x != n.netns and not x.startswith(n.netns + "-")]
        log.info("lab node removed", lab=self.name, node=n.name)

    def down(self) -> list[str]:
        """Remove every namespace, process and file of this lab. Idempotent; needs only the record
        (and sweeps namespaces named like this lab's that a crash left unrecorded). Returns what it
        removed, for the caller to print."""
        removed: list[str] = []
        rec = self._rf.load() if os.path.isdir(self.dir) else None
        if rec is not None:
            with self._rf.mutate() as r:
                r["state"] = "stopping"
            removed += [
                f"process {e.get('key')} pid {e.get('pid')}" for e in self._stop_processes(rec["processes"])
            ]
        pattern = plan.netns_pattern(self.name)
        names = set(rec["netns"] if rec else []) | {ns for ns in netns_list() if pattern.match(ns)}

        def order(ns: str) -> tuple[int, str]:  # pods, nodes, router, etcd, hub last
            tail = ns[len(self.name) + 1 :]
            return ({"hub": 4, "etcd": 3, "rtr": 2}.get(tail, 0 if tail.count("-") else 1), ns)

        for ns in sorted(names, key=order):
            if self._netns_del(ns):
                removed.append(f"netns {ns}")
        if rec is not None:
            for path in rec["files"]:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.lexists(path):
                    os.unlink(path)
                removed.append(f"file {path}")
        if os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)
            removed.append(f"dir {self.dir}")
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                self._children.pop(pid, None)
        self._mode = None
        if removed:
            log.info("lab down", lab=self.name, removed=len(removed))
        return removed

    def _netns_del(self, ns: str) -> bool:
        path = f"/run/netns/{ns}"
        if not os.path.exists(path):
            return False
        # Processes still inside a namespace this lab made were started in it by the lab (a
        # daemon's child, a stray ping); they would keep the namespace alive after `ip netns del`.
        cp = _run(["ip", "netns", "pids", ns], check=False)
        for tok in cp.stdout.split():
            if tok.isdigit() and int(tok) > 1:
                log.info("killing process left in lab netns", netns=ns, pid=int(tok))
                try:
                    os.kill(int(tok), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _run(["ip", "netns", "del", ns], check=False)
        return True

    # ------------------------------------------------------------------ processes

    def spawn(
        self, node: str | LabNode, proc_name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> int:
        """Run argv inside the node's netns, in its own session, logging to `<node dir>/log/<proc>.log`."""
        n = self.node(node)
        return self._spawn_in(
            n.netns, n.name, proc_name, argv, os.path.join(n.dir, "log", f"{proc_name}.log"), env
        )

    def _spawn_in(
        self, ns: str, owner: str, proc_name: str, argv: list[str], logpath: str, env: dict[str, str] | None
    ) -> int:
        key = f"{owner}/{proc_name}"
        for e in self.record["processes"]:
            if e["key"] == key and proc_matches(e):
                raise Invalid(f"lab {self.name}: {key} is already running (pid {e['pid']})")
        argv = [str(a) for a in argv]
        wrapper = ["nsenter", f"--net=/run/netns/{ns}", "--", *argv]
        full_env = dict(os.environ)
        full_env.update(env or {})
        os.makedirs(os.path.dirname(logpath), exist_ok=True)
        with open(logpath, "ab") as logf:
            child = subprocess.Popen(
                wrapper,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
                close_fds=True,
            )
        self._children[child.pid] = child
        st = proc_stat(child.pid)
        entry = {
            "key": key,
            "node": owner,
            "name": proc_name,
            "netns": ns,
            "pid": child.pid,
            "starttime": st[1] if st else None,
            "argv": argv,
            "wrapper": wrapper,
            "log": logpath,
        }
        with self._rf.mutate() as rec:
            rec["processes"] = [e for e in rec["processes"] if e["key"] != key] + [entry]
        log.info("lab process started", lab=self.name, key=key, pid=child.pid)
        return child.pid

    def processes(self) -> list[dict[str, Any]]:
        """Recorded processes with an `alive` flag (PID still ours and running)."""
        return [dict(e, alive=proc_matches(e)) for e in self.record["processes"]]

    def pid(self, node: str | LabNode, proc_name: str) -> int | None:
        owner = node.name if isinstance(node, LabNode) else node
        for e in self.record["processes"]:
            if e["key"] == f"{owner}/{proc_name}" and proc_matches(e):
                return int(e["pid"])
        return None

    def kill(
        self, node: str | LabNode, proc_name: str, sig: int = signal.SIGTERM, timeout: float = 5.0
    ) -> bool:
        """Signal a recorded process; for TERM/INT/KILL wait for it to exit (escalating to KILL).
        Returns False when it was not running."""
        owner = node.name if isinstance(node, LabNode) else node
        key = f"{owner}/{proc_name}"
        entries = [e for e in self.record["processes"] if e["key"] == key]
        if not entries or not proc_matches(entries[0]):
            return False
        e = entries[0]
        if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
            self._stop_processes([e], sig=sig, timeout=timeout)
            with self._rf.mutate() as rec:
                rec["processes"] = [x for x in rec["processes"] if x["key"] != key]
        else:
            os.kill(int(e["pid"]), sig)
        return True

    def _stop_processes(
        self, entries: list[dict[str, Any]], sig: int = signal.SIGTERM, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """TERM (or `sig`) every entry whose PID is still ours, wait, KILL the rest; reap our children."""
        live = [e for e in entries if proc_matches(e)]
        for e in live:
            try:
                os.kill(int(e["pid"]), sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        pending = list(live)
        while pending:
            self._reap()
            pending = [e for e in pending if proc_alive(int(e["pid"])) and proc_matches(e)]
            if not pending:
                break
            if time.monotonic() > deadline:
                for e in pending:
                    log.warning("lab process did not stop, killing", key=e.get("key"), pid=e.get("pid"))
                    try:
                        os.kill(int(e["pid"]), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 5.0
                sig = signal.SIGKILL
            time.sleep(0.02)
        self._reap()
        return live

    def _reap(self) -> None:
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                self._children.pop(pid, None)

    # ------------------------------------------------------------------ commands inside

    def exec(
        self,
        node: str | LabNode,
        argv: list[str],
        check: bool = True,
        *,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside a node (or `hub`/`etcd`/`rtr`/`n1/pod`) netns and capture its output."""
        ns = self.netns_of(node)
        full_env = None
        if env:
            full_env = dict(os.environ)
            full_env.update(env)
        return _run(
            ["nsenter", f"--net=/run/netns/{ns}", "--", *[str(a) for a in argv]],
            input=input,
            check=check,
            env=full_env,
            timeout=timeout,
        )

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """etcdctl (API v3) against the lab's etcd, run inside the etcd netns."""
        env = dict(os.environ, ETCDCTL_API="3")
        return _run(
            [
                "nsenter",
                f"--net=/run/netns/{self.etcd_netns}",
                "etcdctl",
                f"--endpoints=http://127.0.0.1:{plan.ETCD_PORT}",
                *args,
            ],
            check=check,
            env=env,
            timeout=30,
        )

    def etcd_put(self, key: str, value: str) -> None:
        self.etcdctl("put", key, "--", value) if value.startswith("-") else self.etcdctl("put", key, value)

    def etcd_get_prefix(self, prefix: str) -> dict[str, str]:
        cp = self.etcdctl("get", "--prefix", prefix, "-w", "json")
        data = json.loads(cp.stdout or "{}")
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in data.get("kvs", [])
        }

    def etcd_get(self, key: str) -> str | None:
        cp = self.etcdctl("get", key, "-w", "json")
        kvs = json.loads(cp.stdout or "{}").get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    # ------------------------------------------------------------------ pods (as kubelet would)

    def conflist(self, node: str | LabNode) -> dict[str, Any]:
        """The node's CNI network config: the first conflist in its etc/cni/net.d (kubelet's rule)."""
        n = self.node(node)
        d = os.path.join(n.dir, "etc/cni/net.d")
        files = sorted(f for f in os.listdir(d) if f.endswith((".conflist", ".conf")))
        if not files:
            raise LabError(f"{n.name}: no CNI config in {d}")
        with open(os.path.join(d, files[0])) as f:
            conf: dict[str, Any] = json.load(f)
        if "plugins" not in conf:  # a single-plugin .conf
            conf = {
                "cniVersion": conf.get("cniVersion", "1.0.0"),
                "name": conf.get("name", "net"),
                "plugins": [conf],
            }
        return conf

    def _cni(
        self,
        n: LabNode,
        command: str,
        pod: str,
        pod_ns: str,
        container_id: str,
        plugin: dict[str, Any],
        conflist: dict[str, Any],
        prev: dict[str, Any] | None,
    ) -> subprocess.CompletedProcess[str]:
        conf = dict(plugin)
        conf["name"] = conflist.get("name", "net")
        conf["cniVersion"] = conflist.get("cniVersion", "1.0.0")
        if prev is not None:
            conf["prevResult"] = prev
        bindir = os.path.join(n.dir, "opt/cni/bin")
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": f"/run/netns/{pod_ns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": bindir,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};"
            f"K8S_POD_INFRA_CONTAINER_ID={container_id}",
        }
        for k in ("PYTHONPATH", "PYCNI_LOG_LEVEL", "PYCNI_IN_UML"):
            if k in os.environ:
                env[k] = os.environ[k]
        return _run(
            ["nsenter", f"--net=/run/netns/{n.netns}", os.path.join(bindir, str(plugin["type"]))],
            input=json.dumps(conf),
            check=False,
            env=env,
            timeout=60,
        )

    @staticmethod
    def _cni_error(cp: subprocess.CompletedProcess[str]) -> str:
        try:
            err = json.loads(cp.stdout)
            return f"code {err.get('code')}: {err.get('msg')} {err.get('details', '')}".strip()
        except (json.JSONDecodeError, AttributeError):
            return (cp.stdout + cp.stderr).strip()[-500:]

    def pod_add(self, node: str | LabNode, pod: str) -> dict[str, Any]:
        """Create pod netns `<lab>-<node>-<pod>` and run the node's CNI chain ADD; returns the result."""
        n = self.node(node)
        plan.check_pod_name(pod)
        key = f"{n.name}/{pod}"
        if key in self.record["pods"]:
            raise Invalid(f"lab {self.name}: pod {key} already exists")
        pod_ns = plan.netns_pod(self.name, n.name, pod)
        cid = hashlib.sha256(f"{self.name}/{key}".encode()).hexdigest()
        with self._rf.mutate() as rec:
            rec["pods"][key] = {
                "node": n.name,
                "name": pod,
                "netns": pod_ns,
                "container_id": cid,
                "ip": None,
                "result": None,
                "state": "adding",
            }
        self._netns_add(pod_ns)
        conflist = self.conflist(n)
        prev: dict[str, Any] | None = None
        t0 = time.monotonic()
        for plugin in conflist["plugins"]:
            cp = self._cni(n, "ADD", pod, pod_ns, cid, plugin, conflist, prev)
            if cp.returncode != 0:
                msg = f"CNI ADD {plugin.get('type')} for {key} failed: {self._cni_error(cp)}"
                self._pod_cleanup(n, pod, pod_ns, cid, conflist, prev)
                raise LabError(msg)
            try:
                prev = json.loads(cp.stdout)
            except json.JSONDecodeError as e:
                self._pod_cleanup(n, pod, pod_ns, cid, conflist, prev)
                raise LabError(
                    f"CNI ADD {plugin.get('type')} for {key}: bad result {cp.stdout[:200]!r}"
                ) from e
        result = prev or {}
        ips = result.get("ips") or []
        ip = str(ips[0]["address"]).split("/")[0] if ips else None
        with self._rf.mutate() as rec:
            rec["pods"][key].update(ip=ip, result=result, state="ready")
        log.info("lab pod added", lab=self.name, pod=key, ip=ip, ms=round((time.monotonic() - t0) * 1000, 1))
        return result

    def _pod_cleanup(
        self,
        n: LabNode,
        pod: str,
        pod_ns: str,
        cid: str,
        conflist: dict[str, Any],
        prev: dict[str, Any] | None,
    ) -> list[str]:
        errors = []
        for plugin in reversed(conflist["plugins"]):
            cp = self._cni(n, "DEL", pod, pod_ns, cid, plugin, conflist, prev)
            if cp.returncode != 0:
                errors.append(f"{plugin.get('type')}: {self._cni_error(cp)}")
        self._netns_del(pod_ns)
        with self._rf.mutate() as rec:
            rec["pods"].pop(f"{n.name}/{pod}", None)
            rec["netns"] = [x for x in rec["netns"] if x != pod_ns]
        return errors

    def pod_del(self, node: str | LabNode, pod: str) -> None:
        """CNI DEL (chain in reverse, with the ADD result as prevResult), then delete the pod netns."""
        n = self.node(node)
        key = f"{n.name}/{pod}"
        entry = self.record["pods"].get(key)
        if entry is None:
            raise Invalid(f"lab {self.name}: no pod {key!r}")
        errors = self._pod_cleanup(
            n, pod, entry["netns"], entry["container_id"], self.conflist(n), entry.get("result")
        )
        if errors:
            raise LabError(f"CNI DEL for {key} failed (netns removed anyway): {'; '.join(errors)}")
        log.info("lab pod deleted", lab=self.name, pod=key)

    # ------------------------------------------------------------------ checks

    def ping(self, src: str, dst_ip: str, *, tries: int = 2, wait: float = 1.0) -> bool:
        """One ping from a node (`n1`) or pod (`n1/web`) to an address; retried once for first ARP."""
        for _ in range(tries):
            cp = self.exec(src, ["ping", "-n", "-q", "-c", "1", "-W", str(wait), dst_ip], check=False)
            if cp.returncode == 0:
                return True
        return False

    def ping_matrix(self, *, workers: int = 8) -> dict[str, dict[str, bool]]:
        """All-pairs pod-to-pod pings: `{src "n1/a": {dst "n2/b": answered}}` (self excluded)."""
        pods = [p for p in self.pods if p.ip]
        jobs = [(s, d) for s in pods for d in pods if s.key != d.key]
        matrix: dict[str, dict[str, bool]] = {p.key: {} for p in pods}
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
            futs = {ex.submit(self.ping, s.key, str(d.ip)): (s, d) for s, d in jobs}
            for fut in concurrent.futures.as_completed(futs):
                s, d = futs[fut]
                matrix[s.key][d.key] = fut.result()
        return matrix

    @staticmethod
    def matrix_ok(matrix: dict[str, dict[str, bool]]) -> bool:
        return all(all(row.values()) for row in matrix.values())

    def routes(self, target: str | LabNode) -> list[str]:
        cp = _run(["ip", "-n", self.netns_of(target), "-4", "route", "show"], check=False)
        return [line for line in cp.stdout.splitlines() if line.strip()]

    def status(self) -> dict[str, Any]:
        """Everything `pycnictl lab status` shows, as data."""
        rec = self._rf.load()
        if rec is None:
            return {"name": self.name, "state": "down"}
        present = set(netns_list())
        procs = [dict(e, alive=proc_matches(e)) for e in rec["processes"]]
        return {
            "name": self.name,
            "state": rec.get("state"),
            "mode": rec.get("mode"),
            "segments": rec.get("segments"),
            "etcd": self.etcd_endpoint,
            "dir": self.dir,
            "repo": rec.get("repo"),
            "nodes": [
                dict(
                    n.__dict__,
                    netns_present=n.netns in present,
                    processes={p["name"]: p["alive"] for p in procs if p.get("node") == n.name},
                    pods=[f"{p.name}={p.ip}" for p in self.pods if p.node == n.name],
                )
                for n in self.nodes
            ],
            "processes": procs,
            "netns": [(ns, ns in present) for ns in rec["netns"]],
        }


def all_labs(root: str = plan.RUN_ROOT, repo: str | None = None, *, in_use: bool = True) -> list[str]:
    """Names of labs with a record under root: only those started from `repo` when given, and,
    with in_use=False, only those whose creating process is gone (leftovers, not a lab that a
    running test or another worker is using right now)."""
    names: list[str] = []
    try:
        entries = sorted(os.listdir(root))
    except FileNotFoundError:
        entries = []
    for name in entries:
        rf = RecordFile(os.path.join(root, name))
        try:
            rec = rf.load()
        except Invalid:
            rec = None
        if rec is None:
            continue
        if repo is not None and rec.get("repo") != repo:
            continue
        owner = rec.get("owner")
        # A record without an owner (older code) counts as in use: never guess someone else's lab away.
        if not in_use and (not isinstance(owner, dict) or proc_matches(owner)):
            continue
        names.append(name)
    return names
