"""pycni-bgpd: the BGP speaker daemon (composition root; the logic lives in pycni.bgp and pycni.calc.bgp).

    pycni-bgpd --etcd-endpoints http://10.99.0.250:2379 --nodename n1

Sources: the datastore (Calico Nodes, BGPConfiguration, BGPPeers, IPPools, block affinities) and
exabgp's events (learned routes and session states, via `pycni.bgp.speaker`). Drivers, in order:
the exabgp config (render, start, reload), the announcer (exabgp API commands) and the learned
routes (kernel, proto RTPROT_BGPD). See docs/bgp.md for the flags and the design.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from pycni import log as pycni_log
from pycni.agent import Agent, Binding, run_source
from pycni.bgp.announcer import Announcer
from pycni.bgp.drivers import ExaBgpConfig, LearnedRoutes
from pycni.bgp.exabgp_process import ExaBgp
from pycni.bgp.paths import default_run_dir, status_socket
from pycni.bgp.speaker import Speaker
from pycni.bgp.status import StatusServer, peer_row
from pycni.calc.bgp import BgpContext, BgpSpec, PeerSession, calc, datastore_prefixes
from pycni.constants import RTPROT_BGPD
from pycni.datastore import factory
from pycni.errors import Invalid

log = structlog.get_logger("pycni.bgpd")

QUIET = 0.003  # s without a BGP update that ends a burst's coalescing (UPDATEs of a burst come < 1 ms apart)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pycni-bgpd",
                                description="BGP speaker for Calico-style pod networks (exabgp)")
    p.add_argument("--etcd-endpoints",
                   default=os.environ.get("ETCD_ENDPOINTS", factory.DEFAULT_ETCD_ENDPOINTS))
    factory.add_arguments(p)
    p.add_argument("--nodename", default=os.environ.get("NODENAME") or socket.gethostname())
    p.add_argument("--run-dir", default="",
                   help="exabgp.conf, sockets, exabgp.log (default /run/pycni/bgpd/<node>[@netns-<inode>])")
    p.add_argument("--status-socket", default="", help="status socket (default <run-dir>/status.sock)")
    p.add_argument("--iface", default="", help="underlay device (default: ask the kernel per next hop)")
    p.add_argument("--exabgp", default="", help="exabgp binary (default: exabgp_launch.py)")
    p.add_argument("--exabgp-user", default="nobody", help="user exabgp runs as (it only needs port 179)")
    p.add_argument("--exabgp-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra exabgp environment, e.g. exabgp.reactor.speed=0.2 (repeatable)")
    p.add_argument("--bgp-port", type=int, default=179)
    p.add_argument("--hold-time", type=int, default=90)
    p.add_argument("--graceful-restart", type=int, default=120, help="restart time we advertise (s)")
    p.add_argument("--restart-window", type=float, default=120.0,
                   help="after our restart, keep old kernel routes at most this long (s)")
    p.add_argument("--stale-time", type=float, default=120.0,
                   help="keep a down peer's routes this long (graceful-restart helper, s)")
    p.add_argument("--resync-interval", type=float, default=5.0, help="re-read the kernel routes every N s")
    p.add_argument("--secrets-dir", default="/etc/pycni/bgp-secrets",
                   help="secretKeyRef passwords: <dir>/<name>/<key>")
    p.add_argument("--health-host", default="127.0.0.1")
    p.add_argument("--health-port", type=int, default=9098, help="HTTP /liveness and /readiness (0: off)")
    p.add_argument("--log-level", default=os.environ.get("PYCNI_LOG_LEVEL", "info"))
    return p.parse_args(argv)


def _health_server(host: str, port: int, status: Any) -> ThreadingHTTPServer | None:
    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            doc = status()
            key = {"/liveness": "live", "/readiness": "ready"}.get(self.path.split("?")[0])
            if key is None:
                self.send_response(404)
                self.end_headers()
                return
            ok = bool(doc.get(key))
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(b"ok\n" if ok else b"not " + key.encode() + b"\n")

        def log_message(self, *a: Any) -> None:
            pass

    try:
        srv = ThreadingHTTPServer((host, port), H)
    except OSError as e:
        log.warning("health endpoint not started", host=host, port=port, error=str(e))
        return None
    threading.Thread(target=srv.serve_forever, name="health", daemon=True).start()
    return srv


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pycni_log.configure(level=args.log_level)
    from pycni.dataplane.pyroute2_netlink import Pyroute2Netlink

    try:
        ds = factory.open_from_args(args)
    except Invalid as e:
        log.critical("bad configuration", error=str(e), field=e.field)
        print(f"pycni-bgpd: {e}", file=sys.stderr)
        return 2
    nodename = args.nodename
    run_dir = args.run_dir or default_run_dir(nodename)
    os.makedirs(run_dir, mode=0o755, exist_ok=True)
    os.chmod(run_dir, 0o755)  # exabgp (unprivileged) reaches its config and socket through it
    status_path = args.status_socket or status_socket(run_dir)

    nl = Pyroute2Netlink()
    from pycni.cni.rtnl import Rtnl

    fast = Rtnl()  # used on the agent thread only: calc's next-hop lookups and the route driver
    via_cache: dict[Any, tuple[float, tuple[Any, str] | None]] = {}
    ifnames: dict[int, str] = {}

    def resolve(nh: Any) -> tuple[Any, str] | None:
        """How the kernel reaches a next hop: (gateway or None when on-link, device), or None.
        One RTM_GETROUTE on the raw socket (~0.1 ms; pyroute2 took ~5 ms per lookup here); a route
        it cannot describe (no single output device, e.g. multipath) is asked of pyroute2."""
        hit = via_cache.get(nh)  # keyed by the address itself: str() per route was a hot spot
        now = time.monotonic()
        if hit is not None and now - hit[0] < 10.0:
            return hit[1]
        val: tuple[Any, str] | None = None
        r = fast.route_get(nh)
        if r is not None and r.oif:
            if r.oif not in ifnames:
                ifnames.clear()
                ifnames.update((li.index, li.name) for li in fast.links())
            name = ifnames.get(r.oif)
            if name:
                val = (ipaddress.ip_address(r.gateway) if r.gateway else None, name)
        elif r is not None:
            slow = nl.route_get(nh)
            if slow is not None and slow.oif and slow.type == "unicast":
                val = (slow.gateway, slow.oif)
        via_cache[nh] = (now, val)
        return val

    def secret(name: str, key: str) -> str | None:
        path = os.path.join(args.secrets_dir, name, key)
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            return None

    ctx = BgpContext(nodename=nodename, iface=args.iface, resolve=resolve, secret=secret)

    stop = threading.Event()

    def timed_calc(s: Any) -> BgpSpec:
        t = time.monotonic()
        spec = calc(s, ctx)
        log.debug("calc", seconds=round(time.monotonic() - t, 4), keys=len(s))
        return spec

    # The speaker needs the agent's emitter and exabgp needs the speaker: the callbacks below
    # resolve `speaker`, `agent` and `announcer` when called, after all three exist.
    def on_event(ev: Any) -> None:
        speaker.handle(ev)

    def on_restart() -> None:
        speaker.all_down()
        agent.call_soon(announcer.exabgp_restarted)
        agent.queue_resync()

    def on_events(evs: list[Any]) -> None:
        speaker.handle_many(evs)

    exa = ExaBgp(conf_path=os.path.join(run_dir, "exabgp.conf"),
                 api_socket=os.path.join(run_dir, "exabgp-api.sock"),
                 on_event=on_event, on_events=on_events, on_restart=on_restart, port=args.bgp_port,
                 user=args.exabgp_user,
                 exabgp=args.exabgp or None,
                 extra_env=dict(kv.split("=", 1) for kv in args.exabgp_env if "=" in kv))
    config = ExaBgpConfig(exa, hold_time=args.hold_time, graceful_restart=args.graceful_restart)
    announcer = Announcer(exa.send)
    routes = LearnedRoutes(nl, proto=RTPROT_BGPD, fast=fast)
    agent: Agent[BgpSpec] = Agent(
        name="bgpd", calc=timed_calc, sources=("datastore", "bgp"), resync_interval=args.resync_interval,
        bindings=[Binding(config, config.set_spec), Binding(announcer, announcer.set_spec),
                  Binding(routes, routes.set_spec)])
    speaker = Speaker(agent.emitter("bgp"), stale_time=args.stale_time, restart_window=args.restart_window)

    heartbeat = [time.monotonic()]

    def status() -> dict[str, Any]:
        spec = agent.spec
        peers = []
        if spec is not None and spec.ready:
            for p in spec.peers:
                s = spec.sessions.get(p.address, PeerSession())
                peers.append(peer_row(str(p.address), p.kind, s.state, s.since, p.passive))
        established = spec.established if spec is not None and spec.ready else 0
        live = time.monotonic() - heartbeat[0] < 30.0 and (exa.proc is None or exa.running)
        ready = bool(agent.snapshot.in_sync and agent.applied_once and spec is not None and spec.ready
                     and established >= 1 and exa.running)
        return {"node": nodename, "live": live, "ready": ready, "in_sync": agent.snapshot.in_sync,
                "established": established, "peers": peers, "exabgp_pid": exa.proc.pid if exa.proc else None,
                "kernel_routes": len(spec.routes) if spec is not None else 0,
                "announced": len(spec.own_blocks) if spec is not None else 0}

    status_srv = StatusServer(status_path, status)
    status_srv.start()
    health = _health_server(args.health_host, args.health_port, status) if args.health_port else None

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal", signum=signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    speaker.start()
    run_source(ds.sync, datastore_prefixes(nodename), agent.emitter("datastore"), stop, name="datastore")

    def ticker() -> None:
        while not stop.wait(1.0):
            speaker.tick()
            if exa.proc is not None and not exa.running:
                agent.queue_resync()

    threading.Thread(target=ticker, name="ticker", daemon=True).start()

    def coalesce(limit: float) -> None:
        """A burst (a peer sending a thousand routes in 50-route UPDATEs): let it accumulate, since
        a whole calc per UPDATE would make it quadratic, but only while it still flows. Waits in
        QUIET steps and stops at the first step in which no update came (the burst is over: its
        tail is applied now, not after a fixed delay) or after `limit`. Single routes and
        timer-driven steps never get here."""
        deadline = time.monotonic() + limit
        last = speaker.emitted
        while not stop.wait(min(QUIET, max(0.0, deadline - time.monotonic()))):
            now = speaker.emitted
            if now == last or time.monotonic() >= deadline:
                return
            last = now

    log.info("bgpd started", node=nodename, run_dir=run_dir, status_socket=status_path)
    try:
        seen = speaker.emitted
        while not stop.is_set():
            t0 = time.monotonic()
            applied = agent.step(timeout=min(agent.next_wakeup(), 1.0))
            heartbeat[0] = time.monotonic()
            spent = heartbeat[0] - t0
            burst = speaker.emitted - seen
            seen = speaker.emitted
            if applied:
                log.debug("step", seconds=round(spent, 4), bgp_updates=burst)
            if applied and burst >= 20 and spent > 0.02:
                coalesce(min(spent, 0.1))
    finally:
        log.info("bgpd stopping (kernel routes kept for graceful restart)")
        exa.stop()
        status_srv.stop()
        if health is not None:
            health.shutdown()
        ds.close()
    return 0


def _profiled() -> int:
    """PYCNI_PROFILE=DIR (debugging): DIR/bgpd-<pid>.prof (cProfile, main thread), .folded (all threads)."""
    import cProfile

    from pycni.debug.sampler import Sampler

    base = os.path.join(os.environ["PYCNI_PROFILE"], f"bgpd-{os.getpid()}")
    sampler = Sampler(base + ".folded").start()  # every thread, sampled
    prof = cProfile.Profile()
    try:
        return prof.runcall(main)
    finally:
        prof.dump_stats(base + ".prof")
        sampler.stop()


if __name__ == "__main__":
    sys.exit(_profiled() if os.environ.get("PYCNI_PROFILE") else main())
