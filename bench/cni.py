"""CNI benchmark: pycni (fast path and in-process) against Debian's reference bridge + host-local.

Everything runs in one node namespace (`pyt-bench-node`, an address and a default route like a real
node) on this machine, in one run, each plugin invoked as kubelet would: `nsenter --net=<node>
<plugin>` with the CNI environment and the config on stdin; the time includes that fork/exec
(about 2 ms), for every implementation alike. Pod namespaces are made before timing.

Sequential phases (ADD all pods, CHECK all, DEL all) are interleaved pod by pod across the
implementations, so load from the rest of the machine drifts over all of them alike. pycni's agent
destroys a deleted veth after answering (see docs/cni.md); the bench waits, untimed, for that to
finish before the next operation, so it never slows anyone's measurement, and reports the time
until the veth is really gone as its own row ("DEL+reap").

Then 100 concurrent ADDs (and DELs) on the node: pods/s for the reference and pycni's fast path.

    .venv/bin/python bench/cni.py [--pods 50] [--concurrent 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycni.cni.install import install_plugin  # noqa: E402
from pycni.cni.rtnl import Rtnl, socket_in_netns  # noqa: E402

NODE = "pyt-bench-node"
REF_DIR = "/usr/lib/cni"


def sh(*argv: str, check: bool = True) -> None:
    subprocess.run(list(argv), check=check, capture_output=True)


def netns_add(name: str) -> None:
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")


def netns_del(name: str) -> None:
    sh("ip", "netns", "del", name, check=False)


@dataclass
class Impl:
    name: str
    plugin: str
    conf: dict[str, Any]
    prefix: str  # pod netns prefix
    reaped: Callable[[int], str] | None = None  # pod index -> host veth name to wait for after DEL
    times: dict[str, list[float]] = field(default_factory=dict)
    results: dict[int, Any] = field(default_factory=dict)

    def pod_ns(self, i: int) -> str:
        return f"{self.prefix}{i}"


def run(
    impl: Impl, command: str, i: int, *, prev: Any = None
) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    conf = dict(impl.conf)
    if prev is not None:
        conf["prevResult"] = prev
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"{impl.prefix}{i}",
        "CNI_NETNS": f"/run/netns/{impl.pod_ns(i)}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": f"{REF_DIR}:{os.path.dirname(impl.plugin)}",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={impl.prefix}{i}",
    }
    data = json.dumps(conf).encode()
    t0 = time.perf_counter()
    p = subprocess.run(
        ["nsenter", f"--net=/run/netns/{NODE}", impl.plugin], input=data, env=env, capture_output=True
    )
    dt = (time.perf_counter() - t0) * 1000
    if p.returncode != 0:
        raise RuntimeError(f"{impl.name} {command} pod {i}: {p.stdout.decode()} {p.stderr.decode()}")
    return dt, p


def wait_gone(rt: Rtnl, name: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while rt.link_get(name) is not None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not destroyed after {timeout}s")
        time.sleep(0.0005)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def summarize(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 2), "p95": round(pct(xs, 0.95), 2), "n": len(xs)}


def concurrent(impl: Impl, command: str, n: int) -> float:
    """Start n plugin invocations at once; return the wall time in seconds until all finished."""
    procs = []
    t0 = time.perf_counter()
    for i in range(n):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"{impl.prefix}c{i}",
            "CNI_NETNS": f"/run/netns/{impl.prefix}c{i}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": REF_DIR,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=conc-{i}",
        }
        p = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{NODE}", impl.plugin],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        procs.append(p)
    data = json.dumps(impl.conf).encode()
    failures = 0
    for p in procs:
        out, _ = p.communicate(data)
        if p.returncode != 0:
            failures += 1
            if failures == 1:
                print(f"  {impl.name} concurrent {command} failure: {out.decode()[:300]}", file=sys.stderr)
    wall = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{impl.name}: {failures}/{n} concurrent {command} failed")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--concurrent", type=int, default=100)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--skip-inproc", action="store_true")
    ap.add_argument("--agent-log-level", default="info")
    ap.add_argument(
        "--workdir", default="/run", help="where both plugins keep IPAM state (same disk for both)"
    )
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/cni.py needs root (network namespaces)")
    if not os.access(f"{REF_DIR}/bridge", os.X_OK):
        sys.exit(f"needs the reference plugins in {REF_DIR} (containernetworking-plugins)")

    work = Path(tempfile.mkdtemp(prefix="pyt-bench-cni-", dir=a.workdir))
    bindir = work / "bin"
    plugin = str(install_plugin(bindir))
    sock = work / "agent.sock"
    senv = work / "subnet.env"
    senv.write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )

    ref = Impl(
        "reference bridge+host-local",
        f"{REF_DIR}/bridge",
        {
            "cniVersion": "1.0.0",
            "name": "refnet",
            "type": "bridge",
            "bridge": "cni1",
            "isGateway": True,
            "isDefaultGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "mtu": 1450,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.245.0.0/16"}]],
                "dataDir": str(work / "ref"),
            },
        },
        "pyt-bench-r",
    )
    flannel_conf = {
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "pycni",
        "mode": "flannel",
        "subnetFile": str(senv),
        "dataDir": str(work / "flannel"),
        "agentSocket": str(sock),
        "delegate": {"hairpinMode": True, "isDefaultGateway": True},
    }
    from pycni.cni.veth import bridge_port_name

    fast = Impl(
        "pycni flannel, fast path",
        plugin,
        flannel_conf,
        "pyt-bench-f",
        reaped=lambda i: bridge_port_name(f"pyt-bench-f{i}", "eth0"),
    )
    inproc = Impl(
        "pycni flannel, in-process",
        plugin,
        {
            **flannel_conf,
            "name": "cbr0-inproc",
            "agentSocket": str(work / "nobody.sock"),
            "dataDir": str(work / "flannel-inproc"),
        },
        "pyt-bench-i",
    )
    from pycni.cni.calico import host_veth_name

    calico = Impl(
        "pycni calico, fast path",
        plugin,
        {
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "pycni",
            "mode": "calico",
            "nodename": "bench",
            "datastore_type": "none",
            "mtu": 1450,
            "agentSocket": str(sock),
            "cacheDir": str(work / "calico-cache"),
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.246.0.0/16"}]],
                "dataDir": str(work / "calico"),
            },
        },
        "pyt-bench-c",
        reaped=lambda i: host_veth_name(
            {"K8S_POD_NAMESPACE": "bench", "K8S_POD_NAME": f"pyt-bench-c{i}"}, ""
        ),
    )
    impls = [ref, fast, calico] + ([] if a.skip_inproc else [inproc])
    # inproc runs on a bridge of its own so it never shares cni0's subnet with the fast path
    inproc.conf["bridge"] = "cni2"
    (work / "subnet-inproc.env").write_text(senv.read_text().replace("10.244.1.1/24", "10.244.2.1/24"))
    inproc.conf["subnetFile"] = str(work / "subnet-inproc.env")

    agent: subprocess.Popen[bytes] | None = None
    all_ns: list[str] = []
    try:
        netns_del(NODE)
        netns_add(NODE)
        all_ns.append(NODE)
        sh("ip", "-n", NODE, "link", "add", "eth0", "type", "veth", "peer", "name", "ul0")
        sh("ip", "-n", NODE, "addr", "add", "10.99.0.11/24", "dev", "eth0")
        sh("ip", "-n", NODE, "link", "set", "eth0", "up")
        sh("ip", "-n", NODE, "link", "set", "ul0", "up")
        sh("ip", "-n", NODE, "route", "add", "default", "via", "10.99.0.254", "dev", "eth0")
        for impl in impls:
            for i in range(a.pods):
                netns_add(impl.pod_ns(i))
                all_ns.append(impl.pod_ns(i))
        agent_log = open(work / "agent.log", "ab")
        agent = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{NODE}",
                sys.executable,
                "-m",
                "pycni.cni.server",
                "--socket",
                str(sock),
                "--log-level",
                a.agent_log_level,
            ],
            stdout=agent_log,
            stderr=agent_log,
        )
        deadline = time.monotonic() + 30
        while not sock.exists():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("agent did not start: " + (work / "agent.log").read_text()[-1000:])
            time.sleep(0.02)
        nodefd = os.open(f"/run/netns/{NODE}", os.O_RDONLY)
        rt = socket_in_netns(nodefd)
        # warm-up (page cache, first bridge creation): one pod per implementation, not counted
        for impl in impls:
            run(impl, "ADD", 0)
            run(impl, "DEL", 0)
            if impl.reaped:
                wait_gone(rt, impl.reaped(0))
        reap_times: list[float] = []
        for phase in ("ADD", "CHECK", "DEL"):
            for i in range(a.pods):
                for impl in impls:
                    dt, p = run(impl, phase, i, prev=impl.results.get(i) if phase == "CHECK" else None)
                    impl.times.setdefault(phase, []).append(dt)
                    if phase == "ADD":
                        impl.results[i] = json.loads(p.stdout)
                    if phase == "DEL" and impl.reaped is not None:
                        t_answer = time.perf_counter()
                        wait_gone(rt, impl.reaped(i))
                        if impl is fast:
                            reap_times.append(dt + (time.perf_counter() - t_answer) * 1000)
        fast.times["DEL+reap"] = reap_times

        # Fixed cost of each path with no work at all: VERSION through the agent (the front's
        # default socket points at it) and VERSION of the Go plugin, interleaved likewise.
        vfront = str(install_plugin(work / "vbin", default_socket=str(sock)))
        floor: dict[str, list[float]] = {"reference VERSION": [], "pycni fast path VERSION": []}
        for _ in range(a.pods):
            for label, exe in (("reference VERSION", ref.plugin), ("pycni fast path VERSION", vfront)):
                t0 = time.perf_counter()
                p = subprocess.run(
                    ["nsenter", f"--net=/run/netns/{NODE}", exe],
                    env={"CNI_COMMAND": "VERSION"},
                    capture_output=True,
                )
                floor[label].append((time.perf_counter() - t0) * 1000)
                if p.returncode != 0:
                    raise RuntimeError(f"{label}: {p.stdout!r}")

        conc: dict[str, dict[str, float]] = {}
        for impl in (ref, fast):
            for i in range(a.concurrent):
                netns_add(f"{impl.prefix}c{i}")
                all_ns.append(f"{impl.prefix}c{i}")
            add_wall = concurrent(impl, "ADD", a.concurrent)
            del_wall = concurrent(impl, "DEL", a.concurrent)
            conc[impl.name] = {
                "add_pods_per_s": round(a.concurrent / add_wall, 1),
                "add_wall_s": round(add_wall, 3),
                "del_pods_per_s": round(a.concurrent / del_wall, 1),
                "del_wall_s": round(del_wall, 3),
            }
            if impl is fast:
                time.sleep(0.5)

        out: dict[str, Any] = {
            "pods": a.pods,
            "concurrent": a.concurrent,
            "loadavg": os.getloadavg(),
            "sequential": {},
            "concurrency": conc,
        }
        for impl in impls:
            out["sequential"][impl.name] = {k: summarize(v) for k, v in impl.times.items()}
        out["floor"] = {k: summarize(v) for k, v in floor.items()}
        r = out["sequential"][ref.name]
        out["ratio_fast_vs_reference"] = {
            k: round(out["sequential"][fast.name][k]["median"] / r[k]["median"], 2)
            for k in ("ADD", "CHECK", "DEL")
        }
        out["ratio_calico_fast_vs_reference"] = {
            k: round(out["sequential"][calico.name][k]["median"] / r[k]["median"], 2)
            for k in ("ADD", "CHECK", "DEL")
        }
        if inproc in impls:
            out["ratio_inproc_vs_reference"] = {
                k: round(out["sequential"][inproc.name][k]["median"] / r[k]["median"], 2)
                for k in ("ADD", "CHECK", "DEL")
            }
        if a.json:
            print(json.dumps(out, indent=2))
        else:
            print_table(out)
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        for ns in reversed(all_ns):
            netns_del(ns)
        shutil.rmtree(work, ignore_errors=True)


def print_table(out: dict[str, Any]) -> None:
    print(
        f"CNI latency, {out['pods']} pods sequential, ms (including nsenter fork/exec); "
        f"loadavg {', '.join(f'{x:.2f}' for x in out['loadavg'])}"
    )
    print(f"{'implementation':34} {'op':9} {'median':>8} {'p95':>8} {'n':>4}")
    for name, ops in out["sequential"].items():
        for op, s in ops.items():
            print(f"{name:34} {op:9} {s['median']:8.2f} {s['p95']:8.2f} {s['n']:4}")
    for name, f in out.get("floor", {}).items():
        print(f"{name:34} {'(no-op)':9} {f['median']:8.2f} {f['p95']:8.2f} {f['n']:4}")
    for key in ("ratio_fast_vs_reference", "ratio_calico_fast_vs_reference", "ratio_inproc_vs_reference"):
        if key in out:
            print(f"{key:34} " + "  ".join(f"{op} {v:.2f}" for op, v in out[key].items()))
    print(f"\n{out['concurrent']} concurrent ADDs then DELs on one node")
    print(
        f"{'implementation':34} {'ADD pods/s':>11} {'ADD wall s':>11} {'DEL pods/s':>11} {'DEL wall s':>11}"
    )
    for name, c in out["concurrency"].items():
        print(
            f"{name:34} {c['add_pods_per_s']:11.1f} {c['add_wall_s']:11.3f} {c['del_pods_per_s']:11.1f} "
            f"{c['del_wall_s']:11.3f}"
        )


if __name__ == "__main__":
    main()
