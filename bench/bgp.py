"""Route convergence: pycni-bgpd against BIRD 2, in the same lab and run.

Time from a node announcing blocks to the routes being in **every** peer's kernel, for 1 block and
for 1000 blocks (/26), and the same for withdrawing them. One 6-node lab (`pyt-bgp-bench`, mode
`bgp-bare`): n1..n3 run pycni-bgpd in a full mesh (exabgp underneath), n4..n6 run BIRD 2 in a full
mesh with the settings calico-node renders that matter here (direct next hops, kernel export).

- pycni: the clock starts when the first etcd transaction writing the block affinities of n1
  starts (the way calico-ipam announces a block; 1000 keys take 8 transactions of <= 125 puts,
  etcd's `max-txn-ops` is 128), and stops when both n2 and n3 hold all the routes (proto 81).
- BIRD: the clock starts when `birdc configure` is sent to n4 with the new static blackholes, and
  stops when n5 and n6 hold them all (proto bird).
The etcd transactions run inside pycni's figure (etcdctl spawns included), as `birdc` and BIRD's
config parse run inside BIRD's; the time they took is printed, with the ratio that excludes it.
Kernels are watched with `ip -ts monitor route` in each receiver (event driven, no polling); the
time of the last needed event counts. The ratio is pycni / BIRD (goal <= 1.0).

    python bench/bgp.py [--repeat 3] [--sizes 1 1000] [--json]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pycni.bgp import testbed as tb  # noqa: E402
from pycni.bgp.status import query  # noqa: E402
from pycni.lab.lab import Lab, LabNode  # noqa: E402
from pycni.lab.plan import ETCD_PORT, netns_etcd  # noqa: E402

LAB = "pyt-bgp-bench"
WRITE_COST: list[float] = []  # seconds the etcd transactions themselves took (inside pycni's figure)


def blocks(base: str, n: int) -> list[str]:
    net = ipaddress.ip_network(base)
    return [str(s) for s in list(net.subnets(new_prefix=26))[:n]]


class Monitor:
    """`ip monitor route` in one netns: records when each of the watched prefixes appears/vanishes."""

    def __init__(self, netns: str, proto: str, prefixes: set[str], *, vanish: bool = False) -> None:
        self.want = set(prefixes)
        self.vanish = vanish
        self.proto = proto
        self.done = threading.Event()
        self.last = 0.0
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", "ip", "monitor", "route"],
            stdout=subprocess.PIPE,
            # `ip monitor` complains about veth peers in namespaces it has no id for: noise.
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        time.sleep(0.05)  # let ip subscribe before anything is announced

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            words = line.split()
            if not words:
                continue
            deleted = words[0] == "Deleted"
            dst = words[1] if deleted else words[0]
            if dst == "blackhole":
                continue
            if "/" not in dst or (deleted != self.vanish):
                continue
            if not deleted and not any(f"proto {p} " in line.rstrip() + " " for p in self.proto.split("|")):
                continue
            if dst in self.want:
                self.want.discard(dst)
                self.last = now
                if not self.want:
                    self.done.set()

    def wait(self, timeout: float) -> float:
        ok = self.done.wait(timeout)
        self.proc.terminate()
        self.proc.wait(5)
        if not ok:
            raise TimeoutError(f"{len(self.want)} prefixes still pending")
        return self.last


def etcd_txns(lab: Lab, puts: list[tuple[str, str]], delete: bool = False) -> None:
    """Write the keys in transactions of <= 125 operations (etcd's max-txn-ops is 128), in parallel."""
    procs = []
    for i in range(0, len(puts), 125):
        chunk = puts[i : i + 125]
        ops = "".join((f"del {k}\n" if delete else f"put {k} {json.dumps(v)}\n") for k, v in chunk)
        p = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{netns_etcd(lab.name)}",
                "etcdctl",
                f"--endpoints=http://127.0.0.1:{ETCD_PORT}",
                "txn",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, ETCDCTL_API="3"),
        )
        assert p.stdin is not None
        p.stdin.write("\n" + ops + "\n\n")
        p.stdin.close()
        procs.append(p)
    for p in procs:
        if p.wait(60) != 0:
            raise RuntimeError(f"etcdctl txn failed: {p.stderr.read() if p.stderr else ''}")


def bird_statics(node: LabNode, prefixes: list[str]) -> None:
    with open(os.path.join(node.dir, "statics.conf"), "w") as f:
        routes = "".join(f"route {p} blackhole;\n" for p in prefixes)
        f.write("protocol static own { ipv4;\n" + routes + "}\n")


def birdc(lab: Lab, node: LabNode, *args: str, check: bool = True) -> str:
    ctl = os.path.join(node.dir, "run", "bird.ctl")
    return lab.exec(node, ["birdc", "-s", ctl, *args], check=check).stdout


def setup(lab: Lab, extra: list[str] | None = None) -> tuple[list[LabNode], list[LabNode]]:
    ours, birds = lab.nodes[:3], lab.nodes[3:]
    tb.put_pool(lab, "10.244.0.0/16")
    for n in ours:
        tb.put_node(lab, n.name, n.ip)
        lab.spawn(n, "bgpd", tb.bgpd_argv(lab, n, "--log-level", "warning", *(extra or [])))
    for n in birds:
        bird_statics(n, [])
        conf = os.path.join(n.dir, "bird.conf")
        text = tb.bird_conf(n.ip, [(o.ip, 64512) for o in birds if o is not n])
        text = text.replace(
            "protocol static own { ipv4;  }",
            f'include "{n.dir}/statics.conf";',
        )
        with open(conf, "w") as f:
            f.write(text)
        lab.spawn(n, "bird", ["bird", "-f", "-c", conf, "-s", os.path.join(n.dir, "run", "bird.ctl")])

    def ours_up() -> bool:
        for n in ours:
            doc = query(tb.status_socket(n)) or {}
            if len(doc.get("peers", [])) != 2 or any(p["info"] != "Established" for p in doc["peers"]):
                return False
        return True

    def birds_up() -> bool:
        return all(birdc(lab, n, "show", "protocols", check=False).count("Established") == 2 for n in birds)

    tb.wait_for(ours_up, 60, "pycni mesh", 0.2)
    tb.wait_for(birds_up, 60, "BIRD mesh", 0.2)
    return ours, birds


def measure_pycni(lab: Lab, ours: list[LabNode], n: int) -> tuple[float, float]:
    pfx = blocks("10.244.0.0/16", n)
    puts = [(tb.affinity_key(ours[0].name, p), '{"state":"confirmed","deleted":false}') for p in pfx]
    mons = [Monitor(o.netns, "81|pycni-bgpd", set(pfx)) for o in ours[1:]]
    t0 = time.monotonic()
    etcd_txns(lab, puts)
    WRITE_COST.append(time.monotonic() - t0)
    up = max(m.wait(120) for m in mons) - t0
    mons = [Monitor(o.netns, "81|pycni-bgpd", set(pfx), vanish=True) for o in ours[1:]]
    t1 = time.monotonic()
    etcd_txns(lab, puts, delete=True)
    down = max(m.wait(120) for m in mons) - t1
    return up, down


def measure_bird(lab: Lab, birds: list[LabNode], n: int) -> tuple[float, float]:
    pfx = blocks("10.245.0.0/16", n)
    mons = [Monitor(b.netns, "bird", set(pfx)) for b in birds[1:]]
    bird_statics(birds[0], pfx)
    t0 = time.monotonic()
    birdc(lab, birds[0], "configure")
    up = max(m.wait(120) for m in mons) - t0
    mons = [Monitor(b.netns, "bird", set(pfx), vanish=True) for b in birds[1:]]
    bird_statics(birds[0], [])
    t1 = time.monotonic()
    birdc(lab, birds[0], "configure")
    down = max(m.wait(120) for m in mons) - t1
    return up, down


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 1000])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="leave the lab up (debugging)")
    ap.add_argument("--bgpd-arg", action="append", default=[], help="extra pycni-bgpd flag (repeatable)")
    args = ap.parse_args(argv)
    lab = Lab(LAB)
    lab.down()
    lab.up(nodes=6, mode="bgp-bare")
    results: dict[str, Any] = {}
    try:
        ours, birds = setup(lab, args.bgpd_arg)
        for n in args.sizes:
            rows: dict[str, list[tuple[float, float]]] = {"pycni": [], "bird": []}
            WRITE_COST.clear()
            for _ in range(args.repeat if n < 100 else max(1, args.repeat - 1)):
                rows["pycni"].append(measure_pycni(lab, ours, n))
                rows["bird"].append(measure_bird(lab, birds, n))
            med = {
                k: (statistics.median(u for u, _ in v), statistics.median(d for _, d in v))
                for k, v in rows.items()
            }
            results[str(n)] = {
                "pycni_announce_s": round(med["pycni"][0], 4),
                "bird_announce_s": round(med["bird"][0], 4),
                "ratio_announce": round(med["pycni"][0] / med["bird"][0], 2),
                "pycni_withdraw_s": round(med["pycni"][1], 4),
                "bird_withdraw_s": round(med["bird"][1], 4),
                "ratio_withdraw": round(med["pycni"][1] / med["bird"][1], 2),
                "runs": len(rows["pycni"]),
                "etcd_write_s": round(statistics.median(WRITE_COST), 4),
                "ratio_announce_after_write": round(
                    max(med["pycni"][0] - statistics.median(WRITE_COST), 0.0) / med["bird"][0], 2
                ),
            }
    finally:
        if not args.keep:
            lab.down()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        head = f"{'routes':>7} {'pycni':>9} {'BIRD':>9} {'ratio':>6}"
        print(f"{head} | {'withdraw pycni':>14} {'BIRD':>9} {'ratio':>6}")
        for n, r in results.items():
            up = f"{n:>7} {r['pycni_announce_s']:>8.3f}s {r['bird_announce_s']:>8.3f}s"
            down = f"{r['pycni_withdraw_s']:>13.3f}s {r['bird_withdraw_s']:>8.3f}s"
            print(
                f"{up} {r['ratio_announce']:>6.2f} | {down} {r['ratio_withdraw']:>6.2f}"
                f"   (etcd write inside pycni's figure: {r['etcd_write_s']:.3f}s;"
                f" announce ratio after the write: {r['ratio_announce_after_write']:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
