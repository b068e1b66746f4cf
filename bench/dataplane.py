"""Pod-to-pod throughput and latency of pycni-flanneld's dataplane, against the yardsticks, in one run.

For each backend (host-gw, vxlan) a 2-node lab (`pyb-fl`) runs pycni-flanneld with one pod per
node, and beside it, in the same nodes, a hand-built kernel path of the same kind: a second bridge
(`refbr`, 10.245.<i>.0/24) with a pod on it and, for host-gw, a static route via the peer node;
for vxlan, a device `vxref` (VNI 2, port 8473, nolearning) with the neighbour, FDB entry and onlink
route lab-notes (e) builds by hand. Measured on each path with the same tools:

- iperf3, one TCP stream, `-t SECONDS` (best of `--repeat` runs, paths interleaved);
- ping RTT average over `-c 50 -i 0.02`.
The node-to-node underlay (eth0 to eth0) is measured too. The table gives ours / reference and
ours / underlay; the goal is ours / reference >= 0.95. The vxlan devices' TX checksum offload state
is printed, because turning it off costs ~70% (lab-notes e) and it must stay on by default.

    python bench/dataplane.py [--seconds 3] [--repeat 2] [--backends host-gw vxlan] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pycni import log as pycni_log  # noqa: E402
from pycni.lab import Lab  # noqa: E402
from pycni.lab.lab import LabNode  # noqa: E402

LAB = "pyb-fl"


def ns_run(
    ns: str, argv: list[str], check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check,
                          timeout=timeout)


def iperf(server_ns: str, client_ns: str, ip: str, seconds: float) -> float:
    """Gbit/s received, one TCP stream."""
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = ""
    try:
        for _ in range(50):
            cp = ns_run(client_ns, ["iperf3", "-c", ip, "-t", str(seconds), "-J"], check=False,
                        timeout=seconds + 30)
            try:
                data = json.loads(cp.stdout)
            except json.JSONDecodeError:
                data = {}
            if cp.returncode == 0 and "sum_received" in data.get("end", {}):
                return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
            last = data.get("error") or cp.stderr
            time.sleep(0.1)  # server not listening yet
        raise RuntimeError(f"iperf3 {client_ns} -> {ip} failed: {last}")
    finally:
        srv.kill()
        srv.wait()


def ping_rtt(client_ns: str, ip: str) -> float:
    cp = ns_run(client_ns, ["ping", "-q", "-n", "-c", "50", "-i", "0.02", ip])
    m = re.search(r"= [\d.]+/([\d.]+)/", cp.stdout)
    if not m:
        raise RuntimeError(f"ping {ip}: {cp.stdout}")
    return float(m.group(1))


def build_reference(lab: Lab, backend: str, nodes: list[LabNode], mtu: int) -> dict[str, tuple[str, str]]:
    """The hand-built path: {node: (pod netns, pod ip)}."""
    out = {}
    macs: dict[str, str] = {}
    for n in nodes:
        i = n.index
        pod_ns = f"{lab.name}-{n.name}-ref"
        subprocess.run(["ip", "netns", "add", pod_ns], check=True)
        cmds = [
            "link add refbr type bridge", f"link set refbr mtu {mtu}",
            f"addr add 10.245.{i}.1/24 dev refbr", "link set refbr up",
            f"link add vref{i} mtu {mtu} type veth peer name eth0 netns {pod_ns}",
            f"link set vref{i} master refbr up",
        ]
        if backend == "vxlan":
            cmds += [f"link add vxref type vxlan id 2 local {n.ip} dev eth0 dstport 8473 nolearning",
                     f"addr add 10.245.{i}.0/32 dev vxref", "link set vxref up"]
        lab.ip_batch(n.netns, cmds)
        lab.ip_batch(pod_ns, ["link set lo up", f"addr add 10.245.{i}.2/24 dev eth0", "link set eth0 up",
                              f"route add default via 10.245.{i}.1"])
        if backend == "vxlan":
            link = json.loads(lab.exec(n, ["ip", "-j", "link", "show", "vxref"]).stdout)[0]
            macs[n.name] = link["address"]
        out[n.name] = (pod_ns, f"10.245.{i}.2")
    for n in nodes:
        cmds = []
        for o in nodes:
            if o.name == n.name:
                continue
            if backend == "host-gw":
                cmds.append(f"route add 10.245.{o.index}.0/24 via {o.ip} dev eth0")
            else:
                cmds += [f"neigh add 10.245.{o.index}.0 lladdr {macs[o.name]} dev vxref nud permanent",
                         f"route add 10.245.{o.index}.0/24 via 10.245.{o.index}.0 dev vxref onlink"]
                subprocess.run(["ip", "netns", "exec", n.netns, "bridge", "fdb", "append", macs[o.name],
                                "dev", "vxref", "dst", o.ip], check=True)
        lab.ip_batch(n.netns, cmds)
    return out


def tx_csum(lab: Lab, node: LabNode, dev: str) -> str:
    cp = lab.exec(node, ["ethtool", "-k", dev], check=False)
    m = re.search(r"tx-checksumming: (\w+)", cp.stdout)
    return m.group(1) if m else "?"


def bench_backend(backend: str, seconds: float, repeat: int) -> dict[str, Any]:
    lab = Lab(LAB)
    lab.down()
    try:
        lab.up(nodes=2, mode=f"flannel-{backend}", wait_timeout=30, )
        n1, n2 = lab.nodes
        for n in (n1, n2):
            lab.pod_add(n, "p")
        pods = {p.node: p for p in lab.pods}
        mtu = 1450 if backend == "vxlan" else 1500
        ref = build_reference(lab, backend, [n1, n2], mtu)
        paths = {
            "underlay": (n2.netns, n1.netns, n2.ip),
            "pycni": (f"{LAB}-n2-p", f"{LAB}-n1-p", str(pods["n2"].ip)),
            "reference": (ref["n2"][0], ref["n1"][0], ref["n2"][1]),
        }
        for _, cli, ip in paths.values():  # warm up ARP and check every path works
            ns_run(cli, ["ping", "-c", "2", "-i", "0.1", "-W", "1", ip], check=False)
            ns_run(cli, ["ping", "-c", "1", "-W", "2", ip])
        res: dict[str, dict[str, float]] = {k: {"gbps": 0.0, "rtt_ms": 1e9} for k in paths}
        rounds: list[dict[str, tuple[float, float]]] = []
        for i in range(repeat):  # interleaved, order reversed every other round (fair under noise)
            order = list(paths.items())
            rnd: dict[str, tuple[float, float]] = {}
            for name, (srv, cli, ip) in (order if i % 2 == 0 else order[::-1]):
                rnd[name] = (iperf(srv, cli, ip, seconds), ping_rtt(cli, ip))
                res[name]["gbps"] = max(res[name]["gbps"], rnd[name][0])
                res[name]["rtt_ms"] = min(res[name]["rtt_ms"], rnd[name][1])
            rounds.append(rnd)
        # Paired ratios (same round, back to back) are far steadier than ratios of bests when other
        # work shares the CPUs: report their median too.
        ratios = sorted(r["pycni"][0] / r["reference"][0] for r in rounds)
        out: dict[str, Any] = {"backend": backend, "paths": res, "rounds": rounds,
                               "median_paired_ratio": ratios[len(ratios) // 2]}
        if backend == "vxlan":
            out["tx_csum"] = {"flannel.1": tx_csum(lab, n1, "flannel.1"), "vxref": tx_csum(lab, n1, "vxref")}
        return out
    finally:
        lab.down()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--backends", nargs="*", default=["host-gw", "vxlan"])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true", help="lab logs on stderr")
    args = ap.parse_args(argv)
    pycni_log.configure(level="info" if args.verbose else "warning", stream=sys.stderr, json=False)
    results = [bench_backend(b, args.seconds, args.repeat) for b in args.backends]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"pod-to-pod dataplane, iperf3 1 stream {args.seconds:g} s (best of {args.repeat}), "
                    "ping -c 50 -i 0.02")
    for c in ("backend", "path", "Gbit/s", "rtt avg ms", "thr / reference", "thr / underlay",
              "rtt ref / ours"):
        t.add_column(c)
    ok = True
    for r in results:
        p = r["paths"]
        for name in ("underlay", "reference", "pycni"):
            g, rtt = p[name]["gbps"], p[name]["rtt_ms"]
            vs_ref = g / p["reference"]["gbps"] if p["reference"]["gbps"] else 0.0
            vs_ul = g / p["underlay"]["gbps"] if p["underlay"]["gbps"] else 0.0
            lat = p["reference"]["rtt_ms"] / rtt if rtt else 0.0
            if name == "pycni":
                ok = ok and max(vs_ref, r["median_paired_ratio"]) >= 0.95
            t.add_row(r["backend"], name, f"{g:.2f}", f"{rtt:.3f}",
                      f"{vs_ref:.2f}" if name != "underlay" else "", f"{vs_ul:.2f}",
                      f"{lat:.2f}" if name == "pycni" else "")
        t.add_row(r["backend"], "pycni / reference, median of paired rounds",
                  f"{r['median_paired_ratio']:.2f}", "", "", "", "")
        if "tx_csum" in r:
            csum = ", ".join(f"{k}: {v}" for k, v in r["tx_csum"].items())
            t.add_row(r["backend"], "tx-checksumming", csum, "", "", "", "")
    Console(width=140).print(t)
    print("goal ours/reference >= 0.95:", "met" if ok else "NOT met",
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: other work skews both paths)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
