"""pycni-felix at run time: settings, start-up, the Agent with its drivers, health, the CNI socket.

`run(opts)` is the whole daemon; `daemons/felix.py` only parses flags. The order is Calico's:

1. calico-node start-up (`pycni.calico.startup`): register this Node, default pool, tunnel
   addresses. `--startup` stops here (the `calico-node -startup` init step).
2. Local facts: the underlay device and MTU (the interface holding the Node's address).
3. The Agent: the datastore `sync` thread feeds it; nothing is written to the kernel before the
   first IN_SYNC; `calc_felix` then drives, in order, the tunnel devices, the VXLAN neighbours and
   FDB entries, the routes (`proto 80`: its first apply dumps our protocol's routes and deletes
   every one the spec does not hold, which is the sweep after a restart), the sysctls, the
   natOutgoing chain, and the MTU file the CNI plugin reads.
4. Beside it: a health server (`/liveness`, `/readiness` = in sync and applied, Calico's paths on
   port 9099), a tunnel-address keeper (pools can change after start), and, with `--cni-socket`,
   the CNI fast-path server in this process.

FELIX_* environment variables (Calico's names) override FelixConfiguration resources:
FELIX_IPINIPENABLED, FELIX_IPINIPMTU, FELIX_VXLANENABLED, FELIX_VXLANMTU, FELIX_VXLANVNI,
FELIX_VXLANPORT, FELIX_INTERFACEPREFIX, FELIX_NATOUTGOINGADDRESS, FELIX_HEALTHENABLED,
FELIX_HEALTHPORT, FELIX_HEALTHHOST, FELIX_ROUTEREFRESHINTERVAL (seconds: the periodic re-read of
the kernel that repairs routes deleted by hand).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from pycni.agent import Agent, Binding
from pycni.atomic import write_atomic
from pycni.calc.felix import SYNC_PREFIXES, FelixConfig, FelixSpec, calc_felix
from pycni.calico import startup
from pycni.datastore import Datastore
from pycni.errors import Invalid, PycniError

log = structlog.get_logger(__name__)

DEFAULT_MTU_FILE = "/var/lib/calico/mtu"


@dataclass
class FelixOptions:
    nodename: str
    etcd_endpoints: str
    datastore_type: str = "etcdv3"  # or "kubernetes" (Calico's DATASTORE_TYPE)
    kubeconfig: str | None = None  # kubernetes: None = $KUBECONFIG, else the service account
    ip: str | None = None  # "10.99.0.11/24", "autodetect", or None (env IP)
    startup_only: bool = False
    cni_socket: str | None = None
    mtu_file: str | None = DEFAULT_MTU_FILE
    health_port: int | None = None  # None: FELIX_HEALTHPORT or 9099; 0: off
    health_host: str | None = None
    resync_interval: float | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    v = env.get(name)
    if v is None or v == "":
        return None
    if v.lower() in ("true", "1", "yes", "on", "always"):
        return True
    if v.lower() in ("false", "0", "no", "off", "never"):
        return False
    raise Invalid(f"{name}={v!r}: expected true or false", field=name)


def _env_int(env: Mapping[str, str], name: str, lo: int, hi: int) -> int:
    v = env.get(name)
    if not v:
        return 0
    try:
        n = int(v)
    except ValueError:
        raise Invalid(f"{name}={v!r}: expected a number", field=name) from None
    if not lo <= n <= hi:
        raise Invalid(f"{name}={n}: outside {lo}..{hi}", field=name)
    return n


def felix_config(
    env: Mapping[str, str], nodename: str, underlay_dev: str | None, underlay_mtu: int
) -> FelixConfig:
    """FelixConfig from FELIX_* variables and local facts. Raises `Invalid` naming the variable."""
    nat_addr = env.get("FELIX_NATOUTGOINGADDRESS") or None
    try:
        nat = ipaddress.IPv4Address(nat_addr) if nat_addr else None
    except ValueError:
        raise Invalid(
            f"FELIX_NATOUTGOINGADDRESS={nat_addr!r} is not an IPv4 address", field="FELIX_NATOUTGOINGADDRESS"
        ) from None
    return FelixConfig(
        nodename=nodename,
        underlay_dev=underlay_dev,
        underlay_mtu=underlay_mtu,
        interface_prefix=(env.get("FELIX_INTERFACEPREFIX") or "cali").split(",")[0],
        ipip_enabled=_env_bool(env, "FELIX_IPINIPENABLED"),
        vxlan_enabled=_env_bool(env, "FELIX_VXLANENABLED"),
        ipip_mtu=_env_int(env, "FELIX_IPINIPMTU", 68, 65535),
        vxlan_mtu=_env_int(env, "FELIX_VXLANMTU", 68, 65535),
        vxlan_vni=_env_int(env, "FELIX_VXLANVNI", 1, 16777215),
        vxlan_port=_env_int(env, "FELIX_VXLANPORT", 1, 65535),
        nat_outgoing_address=nat,
    )


# ----------------------------------------------------------------------------------------------
# small drivers of our own


class MtuFileDriver:
    """Writes the workload MTU where the CNI plugin looks (Calico's /var/lib/calico/mtu)."""

    name = "mtu-file"

    def __init__(self, path: str) -> None:
        self.path = path
        self._want: int | None = None
        self._dirty = True

    def set_desired(self, mtu: int) -> None:
        if mtu != self._want:
            self._want = mtu
            self._dirty = True

    def queue_resync(self) -> None:
        self._dirty = True

    def apply(self) -> bool:
        if not self._dirty or self._want is None:
            return True
        try:
            written = write_atomic(self.path, f"{self._want}\n")
        except OSError as e:
            log.warning("mtu file not written", path=self.path, error=str(e))
            return False
        if written:
            log.info("mtu file written", path=self.path, mtu=self._want)
        self._dirty = False
        return True


# ----------------------------------------------------------------------------------------------


def build_agent(
    netlink: Any,
    cfg: FelixConfig,
    *,
    mtu_file: str | None = None,
    resync_interval: float = 30.0,
    iptables: bool = True,
    netns: str | None = None,
    grace: float | None = None,
) -> Agent[FelixSpec]:
    """The felix Agent over a Netlink (real or fake); the datastore source is attached by the caller."""
    from pycni.calico.bindings import felix_bindings

    bindings: list[Binding[FelixSpec]] = felix_bindings(
        netlink, cfg, iptables=iptables, netns=netns, **({} if grace is None else {"grace": grace})
    )
    if mtu_file:
        mf = MtuFileDriver(mtu_file)
        bindings.append(Binding(mf, lambda s: mf.set_desired(s.workload_mtu)))

    def calc(snapshot: Any) -> FelixSpec:
        spec = calc_felix(cfg, snapshot)
        log.info(
            "felix spec",
            routes=len(spec.routes),
            neighs=len(spec.neighs),
            fdbs=len(spec.fdbs),
            local_endpoints=spec.local_endpoints,
            tunnels=[t.name for t in spec.tunnels],
            workload_mtu=spec.workload_mtu,
        )
        for note in spec.notes:
            log.debug("felix note", note=note)
        return spec

    return Agent(name="felix", calc=calc, bindings=bindings, resync_interval=resync_interval)


class HealthServer:
    """Calico's health endpoints: GET /liveness (loop alive), /readiness (in sync and applied)."""

    def __init__(self, agent: Agent[Any], host: str, port: int, alive: threading.Event) -> None:
        agent_ref = agent

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                h = agent_ref.health()
                if self.path.startswith("/liveness"):
                    ok = alive.is_set()
                elif self.path.startswith("/readiness"):
                    ok = bool(h["in_sync"] and h["applied"])
                else:
                    self.send_error(404)
                    return
                body = json.dumps(dict(h, live=alive.is_set())).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _tunnel_keeper(ds: Datastore, nodename: str, stop: threading.Event, interval: float) -> threading.Thread:
    """Re-run tunnel address allocation periodically: pools may change after start."""

    def body() -> None:
        while not stop.wait(interval):
            try:
                startup.ensure_tunnel_addresses(ds, nodename)
            except PycniError as e:
                log.warning("tunnel address check failed", error=str(e))
            except Exception:
                log.exception("tunnel address check crashed")

    t = threading.Thread(target=body, name="tunnel-keeper", daemon=True)
    t.start()
    return t


def run(opts: FelixOptions) -> int:
    """The daemon. Returns the exit code (2: bad configuration)."""
    from pycni.agent import run_source
    from pycni.dataplane.pyroute2_netlink import Pyroute2Netlink
    from pycni.datastore.factory import open_datastore

    env = opts.env
    try:
        scfg = startup.StartupConfig.from_env(env, nodename=opts.nodename, ip=opts.ip)
    except Invalid as e:
        log.critical("bad configuration", error=str(e), field=e.field)
        return 2
    try:
        ds = open_datastore(opts.datastore_type, etcd_endpoints=opts.etcd_endpoints,
                            kubeconfig=opts.kubeconfig, field="DATASTORE_TYPE")
    except Invalid as e:
        log.critical("bad configuration", error=str(e), field=e.field)
        return 2
    nl = Pyroute2Netlink()
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal received, stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # 1. start-up (retried: etcd may still be coming up)
    node = None
    deadline = time.monotonic() + 60
    while node is None:
        try:
            node = startup.run_startup(ds, scfg, nl)
        except Invalid as e:
            log.critical("start-up failed", error=str(e), field=e.field)
            return 2
        except PycniError as e:
            if time.monotonic() > deadline or stop.is_set():
                log.critical("start-up failed", error=str(e))
                return 1
            log.warning("start-up retrying", error=str(e))
            time.sleep(1)
    if opts.startup_only:
        log.info("start-up done", node=node.name)
        return 0

    # 2. local facts
    assert node.ip is not None
    found = startup.underlay_for(nl, node.ip)
    dev, mtu = found if found else (None, 1500)
    if found is None:
        log.warning("no local interface holds the node address", ip=str(node.ip))
    try:
        cfg = felix_config(env, opts.nodename, dev, mtu)
        health_port = (
            opts.health_port
            if opts.health_port is not None
            else (_env_int(env, "FELIX_HEALTHPORT", 0, 65535) or 9099)
        )
        refresh = opts.resync_interval or float(_env_int(env, "FELIX_ROUTEREFRESHINTERVAL", 1, 86400) or 30)
    except Invalid as e:
        log.critical("bad configuration", error=str(e), field=e.field)
        return 2
    if _env_bool(env, "FELIX_HEALTHENABLED") is False:
        health_port = 0
    log.info(
        "felix starting",
        node=opts.nodename,
        ip=str(node.ipv4_address),
        underlay=dev,
        underlay_mtu=mtu,
        refresh=refresh,
    )

    # 3. the agent
    agent = build_agent(nl, cfg, mtu_file=opts.mtu_file, resync_interval=refresh)
    run_source(ds.sync, list(SYNC_PREFIXES), agent.emitter("datastore"), stop, name="datastore-sync")

    # 4. beside it
    alive = threading.Event()
    alive.set()
    health: HealthServer | None = None
    if health_port:
        try:
            health = HealthServer(
                agent, opts.health_host or env.get("FELIX_HEALTHHOST") or "127.0.0.1", health_port, alive
            )
            health.start()
        except OSError as e:
            log.warning("health server not started", port=health_port, error=str(e))
            health = None
    _tunnel_keeper(ds, opts.nodename, stop, 5.0)
    cni = None
    if opts.cni_socket:
        try:
            from pycni.cni.server import CniServer  # type: ignore[import-not-found,unused-ignore]

            cni = CniServer(opts.cni_socket)
            cni.start()
        except Exception as e:  # the plugin falls back to doing the work itself
            log.warning("cni server not started", socket=opts.cni_socket, error=str(e))
            cni = None
    try:
        agent.run(stop)
    finally:
        alive.clear()
        if cni is not None:
            try:
                cni.stop()
            except Exception:
                log.debug("cni server stop failed", exc_info=True)
        if health is not None:
            health.stop()
        ds.close()
        nl.close()
    log.info("felix stopped")
    return 0
