"""Route convergence: pycni-bgpd against BIRD 2, in the same lab and run.

Time from a node announcing blocks to the routes being in **every** peer's kernel, for 1 block and
for 1000 blocks (/26), and the same for withdrawing them. One 6-node lab (`pyt-bgp-bench`, mode
`bgp-bare`): n1..n3 run pycni-bgpd in a full mesh (exabgp underneath), n4..n6 run BIRD 2 in a full
mesh with the settings calico-node renders that matter here (direct next hops, kernel export).

- pycni: the clock starts when the write of n1's block affinities starts (the way calico-ipam
  announces a block: through a client library it already holds), and stops when both n2 and n3
  hold all the routes (proto 81). The write is done by pycni's own `EtcdDatastore`, connected
  beforehand, in a small persistent helper inside the etcd netns (`EtcdWriter`: the bench process
  cannot reach etcd from the root netns); 1000 keys go as 8 parallel transactions of <= 125 puts
  (etcd's `max-txn-ops` is 128). Its time is printed, with the figure and ratio after it.
- BIRD: the clock starts when `birdc configure` (a C client) is sent to n4 with the new static
  blackholes, and stops when n5 and n6 hold them all (proto bird). birdc and BIRD's config parse
  run inside BIRD's figure, as the etcd write runs inside pycni's.
Kernels are watched with `ip monitor route` in each receiver (event driven, no polling; each
monitor is known to be subscribed before the clock starts: it must first report a marker route);
the time of the last needed event counts. The ratio is pycni / BIRD (goal <= 1.0).

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
from pycni.cni.rtnl import socket_in_netns  # noqa: E402
from pycni.lab.lab import Lab, LabNode  # noqa: E402
from pycni.lab.plan import ETCD_PORT, netns_etcd  # noqa: E402

LAB = "pyt-bgp-bench"
AFFINITY = '{"state":"confirmed","deleted":false}'
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
        self.subscribed = threading.Event()
        Monitor._marker[0] += 1
        self.marker = f"198.51.100.{Monitor._marker[0] % 250 + 1}"
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        self._sync(netns)

    _marker = [0]

    def _sync(self, netns: str) -> None:
        """Return once `ip monitor` is subscribed: add a marker route and wait until it reports it.

        A fixed sleep was not enough under load: a route announced before `ip` subscribed was never
        seen and the run timed out."""
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            rt = socket_in_netns(fd)
        finally:
            os.close(fd)
        try:
            oif = next(li.index for li in rt.links() if li.name == "eth0")
            dst = ipaddress.ip_network(self.marker + "/32")
            deadline = time.monotonic() + 10.0
            while not self.subscribed.is_set():
                rt.route_add(dst, oif=oif, replace=True)
                if self.subscribed.wait(0.2) or time.monotonic() > deadline:
                    break
                rt.route_del(dst)
            rt.route_del(dst)
        finally:
            rt.close()
        if not self.subscribed.is_set():
            raise TimeoutError(f"ip monitor in {netns} reported nothing")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            words = line.split()
            if not words:
                continue
            if words[0] == self.marker:
                self.subscribed.set()
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


class EtcdWriter:
    """The block-affinity writer: a persistent process in the etcd netns holding a connected `EtcdDatastore`.

    calico-ipam writes affinities through a client library it already holds, so the write inside
    pycni's figure must be a client call, not a CLI start (`etcdctl` is a Go binary that takes
    ~30 ms just to start). The bench process cannot reach etcd from the root netns, so it runs
    `bench/bgp.py --etcd-writer URL` there (nsenter), connected and warmed up before the clock
    starts; each command (one JSON line on stdin: keys, value or null for delete) is written in
    transactions of <= 125 operations (etcd's max-txn-ops is 128), in parallel, and answered
    with one `ok` line when every transaction has committed.
    """

    def __init__(self, lab: Lab) -> None:
        self.proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{netns_etcd(lab.name)}",
                sys.executable,
                os.path.abspath(__file__),
                "--etcd-writer",
                f"http://127.0.0.1:{ETCD_PORT}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        if self._reply() != "ready":
            raise RuntimeError("etcd writer did not start")

    def _reply(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"etcd writer exited (rc {self.proc.poll()})")
        return line

    def write(self, keys: list[str], value: str | None) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"keys": keys, "value": value}) + "\n")
        self.proc.stdin.flush()
        answer = self._reply()
        if answer != "ok":
            raise RuntimeError(f"etcd write failed: {answer}")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def writer_main(endpoint: str) -> int:
    """`--etcd-writer URL`: the EtcdWriter's process (runs inside the etcd netns)."""
    from concurrent.futures import ThreadPoolExecutor

    from pycni.datastore.etcd import EtcdDatastore

    ds = EtcdDatastore(endpoint)
    ds.revision()  # connect now: the channel is up before any timed write
    pool = ThreadPoolExecutor(8)

    def txn(chunk: list[str], value: str | None) -> None:
        def op(c: Any) -> Any:
            ops = [c.transactions.delete(k) if value is None else c.transactions.put(k, value) for k in chunk]
            return c.transaction(compare=[], success=ops, failure=[])

        ds._call(op, "bench txn", write=True)  # noqa: SLF001 - a multi-key txn is bench-only

    list(pool.map(lambda _: ds.revision(), range(8)))  # warm every worker thread
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            keys, value = cmd["keys"], cmd["value"]
            chunks = [keys[i : i + 125] for i in range(0, len(keys), 125)]
            list(pool.map(txn, chunks, [value] * len(chunks)))
            print("ok", flush=True)
        except Exception as e:  # noqa: BLE001 - answered to the bench, which raises
            print(f"error {type(e).__name__}: {e}".replace("\n", " "), flush=True)
    ds.close()
    return 0


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


def measure_pycni(writer: EtcdWriter, ours: list[LabNode], n: int) -> tuple[float, float]:
    pfx = blocks("10.244.0.0/16", n)
    keys = [tb.affinity_key(ours[0].name, p) for p in pfx]
    mons = [Monitor(o.netns, "81|pycni-bgpd", set(pfx)) for o in ours[1:]]
    t0 = time.monotonic()
    writer.write(keys, AFFINITY)
    WRITE_COST.append(time.monotonic() - t0)
    up = max(m.wait(120) for m in mons) - t0
    mons = [Monitor(o.netns, "81|pycni-bgpd", set(pfx), vanish=True) for o in ours[1:]]
    t1 = time.monotonic()
    writer.write(keys, None)
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
    ap.add_argument("--etcd-writer", metavar="URL", help=argparse.SUPPRESS)  # EtcdWriter's process
    args = ap.parse_args(argv)
    if args.etcd_writer:
        return writer_main(args.etcd_writer)
    lab = Lab(LAB)
    lab.down()
    lab.up(nodes=6, mode="bgp-bare")
    results: dict[str, Any] = {}
    try:
        ours, birds = setup(lab, args.bgpd_arg)
        writer = EtcdWriter(lab)
        for n in args.sizes:
            rows: dict[str, list[tuple[float, float]]] = {"pycni": [], "bird": []}
            WRITE_COST.clear()
            for _ in range(args.repeat if n < 100 else max(1, args.repeat - 1)):
                rows["pycni"].append(measure_pycni(writer, ours, n))
                rows["bird"].append(measure_bird(lab, birds, n))
            med = {
                k: (statistics.median(u for u, _ in v), statistics.median(d for _, d in v))
                for k, v in rows.items()
            }
            write = statistics.median(WRITE_COST)
            after = max(med["pycni"][0] - write, 0.0)
            results[str(n)] = {
                "pycni_announce_s": round(med["pycni"][0], 4),
                "bird_announce_s": round(med["bird"][0], 4),
                "ratio_announce": round(med["pycni"][0] / med["bird"][0], 2),
                "pycni_withdraw_s": round(med["pycni"][1], 4),
                "bird_withdraw_s": round(med["bird"][1], 4),
                "ratio_withdraw": round(med["pycni"][1] / med["bird"][1], 2),
                "runs": len(rows["pycni"]),
                "etcd_write_s": round(write, 4),
                "pycni_announce_after_write_s": round(after, 4),
                "ratio_announce_after_write": round(after / med["bird"][0], 2),
            }
        writer.close()
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
                f"   (etcd write inside pycni's figure: {r['etcd_write_s']:.3f}s; after the write:"
                f" {r['pycni_announce_after_write_s']:.3f}s, ratio {r['ratio_announce_after_write']:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
