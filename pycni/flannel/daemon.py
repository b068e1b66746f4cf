"""pycni-flanneld: the composition root of the flannel node agent (config -> lease -> Agent).

Startup, in flannel's order (main.go): read net-conf.json from etcd (retrying every second until
it exists, as flannel does), validate it (a bad field is one clear line and exit 1), find the
external interface and PublicIP, make sure a vxlan device's MAC is known (it is advertised in the
lease), acquire the lease, write subnet.env, then run the Agent:

    etcd watch (subnets/) ─▶ Agent ─▶ flannel_spec ─▶ vxlan device ─▶ neigh ─▶ FDB ─▶ routes ─▶ iptables

The Agent applies nothing before the first IN_SYNC, and the RouteTable sweeps by our protocol
number only, so a restarted daemon keeps every route (and pings keep flowing) while it relists.
A lease thread renews at `expiration - margin`; every watch update also goes past the
LeaseManager, which notices our own key vanishing (revoked, expired, taken over). A lost lease
stops the daemon loudly with exit code 1: the supervisor restarts it and it acquires afresh.

A clean stop (SIGTERM/SIGINT) removes the ip-masq chains (flannel leaves them; the issue asks for
clean removal) but leaves the routes, the device and the lease: a restart must not disturb pods.

`Flanneld` takes its datastore, netlink and clock as arguments so unit tests drive it with
MemoryDatastore, FakeNetlink and a FakeClock through `agent.step()`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import structlog

from pycni.agent import Agent, Binding
from pycni.calc.flannel import FlannelSpec, NodeContext, flannel_spec
from pycni.dataplane.netlink import Netlink
from pycni.datastore import Datastore, Emit, Event, Update
from pycni.datastore.flannel import (
    DEFAULT_PREFIX,
    SUBNET_TTL,
    Lease,
    LeaseAttrs,
    NetConfig,
    check_against_underlay,
    config_key,
    decode_lease,
    parse_config,
    subnets_prefix,
    vxlan_backend_data,
)
from pycni.errors import Invalid, PycniError, Transient
from pycni.flannel import subnet_env
from pycni.flannel.lease import LeaseManager
from pycni.testing.clock import Clock, SystemClock

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass
class Options:
    """flanneld's flags (same names, FLANNELD_* env), plus a few pycni extensions."""

    etcd_endpoints: str = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    etcd_prefix: str = DEFAULT_PREFIX
    datastore_type: str = "etcdv3"  # or "kubernetes" (pycni's KubeDatastore, not --kube-subnet-mgr)
    kubeconfig: str | None = None  # kubernetes: None = $KUBECONFIG, else the service account
    iface: list[str] = field(default_factory=list)
    iface_regex: str = ""
    iface_can_reach: str = ""
    public_ip: str = ""
    ip_masq: bool = False
    ip_masq_random_fully: bool = True
    iptables_forward_rules: bool = True
    iptables_resync: float = 5.0
    subnet_file: str = "/run/flannel/subnet.env"
    subnet_lease_renew_margin: float = 60.0  # minutes, as flannel
    subnet_lease_ttl: float = SUBNET_TTL  # seconds (pycni extension, for tests)
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    resync_interval: float = 10.0  # flannel re-checks routes every 10 s
    vxlan_tx_csum_off: bool = False
    cni_socket: str = ""
    config_wait: float = 0.0  # 0 = forever (flannel retries every second)


class FatalError(PycniError):
    """Startup cannot proceed (bad config, no interface): the message is the whole story."""


def _random_mac(rng: random.Random) -> str:
    b = [rng.randrange(256) for _ in range(6)]
    b[0] = (b[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{x:02x}" for x in b)


class Flanneld:
    def __init__(
        self,
        opts: Options,
        ds: Datastore,
        nl: Netlink,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        make_bindings: Callable[[Flanneld], list[Binding[FlannelSpec]]] | None = None,
    ) -> None:
        self.opts = opts
        self.ds = ds
        self.nl = nl
        self.clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._make_bindings = make_bindings
        self.config: NetConfig | None = None
        self.ctx: NodeContext | None = None
        self.leases: LeaseManager | None = None
        self.agent: Agent[FlannelSpec] | None = None
        self.vtep_mac = ""
        self.stop = threading.Event()
        self.exit_code = 0
        self.iptables: Any = None  # the IptablesChains driver, for cleanup on a clean stop

    # -- startup ---------------------------------------------------------------------------
    def read_config(self) -> NetConfig:
        key = config_key(self.opts.etcd_prefix)
        deadline = None if not self.opts.config_wait else time.monotonic() + self.opts.config_wait
        warned = False
        while True:
            try:
                v = self.ds.get(key)
            except Transient as e:  # etcd not reachable (yet): flannel keeps trying
                log.warning("datastore unavailable, retrying", error=str(e))
                v = None
                warned = True
            if v is not None:
                cfg = parse_config(v.value)
                log.info("network config", network=str(cfg.network), subnet_len=cfg.subnet_len,
                         backend=cfg.backend.type, direct_routing=cfg.backend.direct_routing, key=key)
                return cfg
            if not warned:
                log.warning("flannel config not found in etcd store. Did you create your config using "
                            "etcdv3 API?", key=key)
                warned = True
            if deadline is not None and time.monotonic() > deadline:
                raise FatalError(f"no network config at {key}")
            if self.stop.wait(1.0):
                raise FatalError("stopped while waiting for the network config")

    def find_iface(self) -> tuple[str, ipaddress.IPv4Interface, int]:
        """(--iface by name or address, else the default route's device) -> (name, address, mtu)."""
        nl = self.nl
        cands: list[str] = []
        for want in self.opts.iface:
            try:
                ip = ipaddress.IPv4Address(want)
            except ValueError:
                cands.append(want)
                continue
            for link in nl.links():
                if any(a.ip == ip for a in nl.addrs(link.name)):
                    cands.append(link.name)
        if self.opts.iface_regex:
            try:
                rx = re.compile(self.opts.iface_regex)
            except re.error as e:
                raise Invalid(f"--iface-regex: {e}", field="iface-regex") from None
            for link in nl.links():
                if rx.search(link.name) or any(rx.search(str(a.ip)) for a in nl.addrs(link.name)):
                    cands.append(link.name)
        if self.opts.iface_can_reach:
            try:
                target = ipaddress.IPv4Address(self.opts.iface_can_reach)
            except ValueError:
                raise Invalid(f"--iface-can-reach {self.opts.iface_can_reach!r} is not an IPv4 address",
                              field="iface-can-reach") from None
            r = nl.route_get(target)
            if r is not None and r.oif:
                cands.append(r.oif)
        if not (self.opts.iface or self.opts.iface_regex or self.opts.iface_can_reach):
            for r in nl.routes():
                if r.dst.prefixlen == 0 and r.dst.version == 4 and r.oif:
                    cands.append(r.oif)
            cands += [lk.name for lk in nl.links() if lk.name != "lo" and lk.up]
        for name in cands:
            lk = nl.link(name)
            if lk is None:
                continue
            v4 = [a for a in nl.addrs(name) if isinstance(a, ipaddress.IPv4Interface)]
            if v4:
                return name, v4[0], lk.mtu
        raise FatalError(f"no usable interface (with an IPv4 address) among {cands or self.opts.iface}")

    def _vtep_mac(self, cfg: NetConfig, public_ip: ipaddress.IPv4Address) -> str:
        """The device's MAC if it exists, else the one our previous lease advertised, else random."""
        link = self.nl.link(cfg.backend.device)
        if link is not None and link.kind == "vxlan" and link.address:
            return link.address
        for v in self.ds.list(subnets_prefix(self.opts.etcd_prefix)):
            try:
                lease = decode_lease(v.key, v.value)
            except Invalid:
                continue
            if lease.attrs.public_ip == public_ip and lease.attrs.vtep_mac:
                return lease.attrs.vtep_mac
        return _random_mac(self._rng)

    def setup(self) -> None:
        """Config, interface, lease, subnet.env, agent (no kernel writes yet)."""
        o = self.opts
        cfg = self.config = self.read_config()
        iface, addr, mtu = self.find_iface()
        try:
            public_ip = ipaddress.IPv4Address(o.public_ip) if o.public_ip else addr.ip
        except ValueError:
            raise Invalid(f"--public-ip {o.public_ip!r} is not an IPv4 address", field="public-ip") from None
        if cfg.backend.type == "host-gw" and public_ip != addr.ip:
            raise FatalError(f"host-gw: PublicIP {public_ip} differs from interface IP {addr.ip} "
                             "(probably you're on a NAT)")
        local_nets = tuple(sorted({a.network for a in self.nl.addrs(iface)
                                   if isinstance(a, ipaddress.IPv4Interface)}))
        check_against_underlay(cfg, list(local_nets))
        mac = ""
        if cfg.backend.type == "vxlan":
            mac = self.vtep_mac = self._vtep_mac(cfg, public_ip)
            attrs = LeaseAttrs(public_ip, "vxlan", vxlan_backend_data(cfg.backend.vni, mac))
        else:
            attrs = LeaseAttrs(public_ip, "host-gw")
        log.info("using interface", iface=iface, addr=str(addr), public_ip=str(public_ip), mtu=mtu)
        prev = subnet_env.previous_subnet(o.subnet_file)
        self.leases = LeaseManager(
            self.ds, cfg, attrs, prefix=o.etcd_prefix, clock=self.clock, ttl=o.subnet_lease_ttl,
            renew_margin=o.subnet_lease_renew_margin * 60.0, prev_subnet=prev, rng=self._rng,
            on_lost=self._lease_lost)
        lease = self._retrying(self.leases.acquire, "lease acquisition")
        self.ctx = NodeContext(config=cfg, own=lease, ext_iface=iface, ext_ip=addr.ip, ext_mtu=mtu,
                               local_networks=local_nets, ip_masq=o.ip_masq,
                               random_fully=o.ip_masq_random_fully, forward_rules=o.iptables_forward_rules,
                               prefix=o.etcd_prefix)
        env = subnet_env.SubnetEnv(cfg.network, lease.subnet, self.ctx.mtu, o.ip_masq)
        if subnet_env.write(o.subnet_file, env):
            log.info("subnet.env written", path=o.subnet_file, subnet=str(lease.subnet), mtu=self.ctx.mtu)
        ctx = self.ctx

        def calc(snap: Any) -> FlannelSpec:
            return flannel_spec(snap, ctx)

        make = self._make_bindings or default_bindings
        bindings = make(self)
        self.agent = Agent(name="flanneld", calc=calc, bindings=bindings, clock=self.clock,
                           resync_interval=o.resync_interval)

    def _retrying(self, fn: Callable[[], T], what: str) -> T:
        """Retry a datastore step on Transient errors (etcd down, lost races) every second."""
        while True:
            try:
                return fn()
            except Transient as e:
                log.warning(f"{what} failed, retrying", error=str(e))
                if self.stop.wait(1.0):
                    raise FatalError(f"stopped during {what}") from None

    def _lease_lost(self, why: str) -> None:
        log.critical("Lease has been revoked. Shutting down daemon.", reason=why)
        self.exit_code = 1
        self.stop.set()

    # -- running ---------------------------------------------------------------------------
    def emitter(self) -> Emit:
        assert self.agent is not None and self.leases is not None
        emit = self.agent.emitter("datastore")
        leases = self.leases

        def watch_emit(ev: Event) -> None:
            if isinstance(ev, Update):
                leases.observe(ev)
            emit(ev)

        return watch_emit

    def lease_loop(self) -> None:
        assert self.leases is not None
        notified = False
        while not self.stop.is_set():
            if not notified and self.agent is not None and self.agent.applied_once:
                notified = True
                sd_notify("READY=1")
            due = self.leases.renew_at()
            wait = 1.0 if due is None else max(0.05, min(1.0, due - self.clock.now()))
            if self.stop.wait(wait):
                return
            try:
                self.leases.tick()
            except PycniError as e:
                log.warning("lease renewal failed, retrying", error=str(e))

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        lm, agent = self.leases, self.agent
        body: dict[str, Any] = {
            "lease": str(lm.lease.subnet) if lm and lm.lease else None,
            "lost": lm.lost if lm else None,
            **(agent.health() if agent else {}),
        }
        ok = bool(lm and lm.lease and not lm.lost and agent and agent.applied_once)
        return ok, body

    def serve_healthz(self) -> ThreadingHTTPServer | None:
        if not self.opts.healthz_port:
            return None
        daemon = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] != "/healthz":
                    self.send_error(404)
                    return
                ok, body = daemon.healthy()
                data = json.dumps(body).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        srv = ThreadingHTTPServer((self.opts.healthz_ip, self.opts.healthz_port), H)
        threading.Thread(target=srv.serve_forever, name="healthz", daemon=True).start()
        log.info("healthz listening", ip=self.opts.healthz_ip, port=self.opts.healthz_port)
        return srv

    def shutdown_cleanup(self) -> None:
        """Clean stop: remove our iptables chains; keep routes, device and lease for the restart."""
        if self.iptables is not None:
            try:
                self.iptables.cleanup()
                log.info("ip-masq rules removed")
            except Exception as e:
                log.warning("iptables cleanup failed", error=str(e))

    @property
    def lease(self) -> Lease | None:
        return self.leases.lease if self.leases else None


def default_bindings(d: Flanneld) -> list[Binding[FlannelSpec]]:
    """LinkDriver -> NeighTable -> FdbTable -> RouteTable(proto=flanneld) -> IptablesChains."""
    from pycni.flannel.bindings import bindings

    return bindings(d)


def sd_notify(state: str) -> bool:
    """systemd's sd_notify (flannel sends READY=1 once up); a no-op without NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), addr)
    except OSError as e:
        log.warning("sd_notify failed", error=str(e))
        return False
    log.info("sd_notify", state=state)
    return True


def _start_cni_server(path: str) -> Any:
    """Host the CNI fast path (pycni.cni.server) when asked; a missing server is logged, not fatal."""
    try:
        from pycni.cni.server import CniServer
    except ImportError as e:
        log.warning("cni server unavailable", error=str(e))
        return None
    srv = CniServer(path)
    srv.start()
    return srv


def run(opts: Options, stop: threading.Event) -> int:
    """The daemon's life: setup, threads, agent loop until `stop` (or a lost lease); exit code."""
    from pycni.agent import run_source
    from pycni.dataplane.pyroute2_netlink import Pyroute2Netlink
    from pycni.datastore.factory import open_datastore

    ds = open_datastore(opts.datastore_type, etcd_endpoints=opts.etcd_endpoints,
                        kubeconfig=opts.kubeconfig, field="--datastore-type")
    nl = Pyroute2Netlink()
    d = Flanneld(opts, ds, nl)
    d.stop = stop
    cni = None
    healthz = None
    try:
        d.setup()
        assert d.agent is not None
        run_source(ds.sync, [subnets_prefix(opts.etcd_prefix)], d.emitter(), stop, name="etcd-sync")
        threading.Thread(target=d.lease_loop, name="lease", daemon=True).start()
        healthz = d.serve_healthz()
        if opts.cni_socket:
            cni = _start_cni_server(opts.cni_socket)
        log.info("running", subnet=str(d.lease.subnet) if d.lease else None)
        d.agent.run(stop)
    finally:
        if d.exit_code == 0 and d.agent is not None:
            d.shutdown_cleanup()
        if healthz is not None:
            healthz.shutdown()
        if cni is not None:
            cni.stop()
        ds.close()
        nl.close()
    log.info("stopped", exit_code=d.exit_code)
    return d.exit_code
