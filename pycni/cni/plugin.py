"""ADD, DEL, CHECK, GC and STATUS for both data paths: one implementation, two hosts.

`CniPlugin` is what `pycni.cni.skel.dispatch` calls, in the in-process fallback and in the
resident agent (`pycni.cni.server`). The verbs are written once; the two data paths differ only in
`pycni.cni.veth` (Calico routed veth vs flannel bridge port) and in their IPAM.

ADD acquires resources in a fixed order and registers an undo for each on an `ExitStack`
(bridge.go's `defer ipam.ExecDel` generalised): IPAM -> veth pair -> pod addresses -> pod routes
-> host side (sysctls, host route, masquerade) -> datastore record -> result cache. Any failure
unwinds what was done, so a failed ADD leaves no address, link, route or record. `PYCNI_FAULT=<step>`
in the environment (tests only) raises at a named step to prove it.

DEL is best effort and idempotent (SPEC "DEL"): it works from the cached ADD result, falls back to
names it can recompute (the host veth name is a function of the pod or the container), and treats
every "already gone" (netns, link, address, record, cache file) as success.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from pycni.cni import calico, spec, veth
from pycni.cni.cache import DEFAULT_DIR as DEFAULT_CACHE_DIR
from pycni.cni.cache import ResultCache
from pycni.cni.ipam import BlockIpam, HostLocalIpam, Owner, PodIpam
from pycni.cni.log import get_logger
from pycni.cni.rtnl import Rtnl
from pycni.cni.spec import CmdArgs, CniError
from pycni.dataplane.netlink import NetlinkError
from pycni.datastore.factory import ETCDV3, check_kind, open_datastore
from pycni.errors import Invalid, NotFound, PycniError, Transient
from pycni.ipam import host_local

log = get_logger("pycni.cni")

FAULT_STEPS = ("after_ipam", "after_veth", "after_addresses", "after_routes", "after_host", "after_record")
fault = veth.fault
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_MTU = 1500


@dataclass(slots=True)
class NetConf:
    name: str
    version: str
    mode: str
    cache_dir: str
    mtu: int
    ipam: dict[str, Any]
    raw: dict[str, Any]
    # calico
    nodename: str = ""
    datastore_type: str = "etcdv3"  # Calico's: "etcdv3" | "kubernetes" | "none" (no felix: tests)
    etcd_endpoints: str = ""
    kubeconfig: str = ""  # Calico's "kubernetes": {"kubeconfig": ...}; "" = $KUBECONFIG / in-cluster
    num_queues: int = 1  # Calico's "num_queues": TX/RX queues per veth end (<= 0 means 1, as Calico)
    # flannel
    subnet_file: str = DEFAULT_SUBNET_FILE
    bridge: str = "cni0"
    hairpin: bool = True
    default_gateway: bool = True
    ip_masq: bool | None = None
    ipam_data_dir: str = host_local.DEFAULT_DATA_DIR
    valid_attachments: list[tuple[str, str]] = field(default_factory=list)


def _bool(conf: dict[str, Any], key: str, default: bool) -> bool:
    v = conf.get(key, default)
    if not isinstance(v, bool):
        raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, f"{key} must be true or false", repr(v))
    return v


def parse_conf(conf: dict[str, Any]) -> NetConf:
    mode = conf.get("mode", "calico")
    if mode not in ("calico", "flannel"):
        raise CniError(
            spec.ERR_INVALID_NETWORK_CONFIG, f"unknown mode {mode!r}", "mode is 'calico' or 'flannel'"
        )
    ipam = conf.get("ipam") or {}
    if not isinstance(ipam, dict):
        raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, "ipam must be an object")
    mtu = conf.get("mtu", 0) or 0
    if not isinstance(mtu, int) or mtu < 0 or mtu > 65535:
        raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, "mtu must be an integer", repr(mtu))
    num_queues = conf.get("num_queues", 0) or 0
    if not isinstance(num_queues, int) or isinstance(num_queues, bool) or num_queues > 4096:
        raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, "num_queues must be an integer", repr(num_queues))
    nodename = conf.get("nodename") or ""
    if not nodename and conf.get("nodename_file"):
        try:
            with open(conf["nodename_file"]) as f:
                nodename = f.read().strip()
        except OSError:
            nodename = ""
    # flannel-style configs nest the bridge options under "delegate" (flannel-io/cni-plugin); accept
    # them there or at the top level. "dataDir" (flannel's state directory) roots our state too.
    delegate = conf.get("delegate") or {}
    if not isinstance(delegate, dict):
        raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, "delegate must be an object")
    opts = {**conf, **delegate}
    data_dir = conf.get("dataDir")
    kube = conf.get("kubernetes") or {}
    if not isinstance(kube, dict):
        raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, "kubernetes must be an object")
    if not mtu and isinstance(delegate.get("mtu"), int):
        mtu = delegate["mtu"]
    if not mtu and mode == "calico":
        try:
            with open(str(conf.get("mtu_file") or "/var/lib/calico/mtu")) as f:
                mtu = int(f.read().strip() or 0)
        except (OSError, ValueError):
            mtu = 0
    nc = NetConf(
        name=conf["name"],
        version=str(conf.get("cniVersion")),
        mode=mode,
        cache_dir=str(
            conf.get("cacheDir") or (os.path.join(data_dir, "results") if data_dir else DEFAULT_CACHE_DIR)
        ),
        mtu=mtu,
        ipam=ipam,
        raw=conf,
        nodename=str(nodename or os.environ.get("NODENAME") or socket.gethostname()),
        datastore_type=str(conf.get("datastore_type", "etcdv3")),
        etcd_endpoints=str(conf.get("etcd_endpoints", "")),
        kubeconfig=str(kube.get("kubeconfig") or ""),
        num_queues=max(num_queues, 1),
        subnet_file=str(conf.get("subnetFile") or DEFAULT_SUBNET_FILE),
        bridge=str(opts.get("bridge") or "cni0"),
        hairpin=_bool(opts, "hairpinMode", True),
        default_gateway=_bool(opts, "isDefaultGateway", True),
        ip_masq=opts["ipMasq"] if isinstance(opts.get("ipMasq"), bool) else None,
        ipam_data_dir=str(
            ipam.get("dataDir")
            or (os.path.join(data_dir, "networks") if data_dir else host_local.DEFAULT_DATA_DIR)
        ),
    )
    if nc.datastore_type != "none":
        try:
            check_kind(nc.datastore_type)
        except Invalid as e:
            raise CniError(
                spec.ERR_INVALID_NETWORK_CONFIG,
                f"unsupported datastore_type {nc.datastore_type!r}",
                f"{e} (or 'none' for tests without felix)",
            ) from None
    va = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments"))
    if va is not None:
        if not isinstance(va, list):
            raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, "cni.dev/valid-attachments must be a list")
        for a in va:
            if not isinstance(a, dict) or "containerID" not in a:
                raise CniError(
                    spec.ERR_INVALID_NETWORK_CONFIG, "bad entry in cni.dev/valid-attachments", repr(a)
                )
            nc.valid_attachments.append((str(a["containerID"]), str(a.get("ifname", ""))))
    return nc


@dataclass(frozen=True, slots=True)
class FlannelEnv:
    networks: list[ipaddress.IPv4Network]
    subnet: ipaddress.IPv4Interface  # .1/24: the bridge's address and the pods' gateway
    mtu: int
    ipmasq: bool


#: parsed subnet.env files: path -> ((inode, size, mtime), parsed). flanneld rewrites the file
#: (new inode or mtime) when its lease changes; one stat() instead of an open, a read and a parse
#: per ADD in the agent.
_subnet_envs: dict[str, tuple[tuple[int, int, int], FlannelEnv]] = {}


def read_subnet_env(path: str) -> FlannelEnv:
    """flannel-io/cni-plugin `loadFlannelSubnetEnv`: every key is required; NETWORK may list CIDRs."""
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None:
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = _subnet_envs.get(path)
        # mtime is as coarse as a kernel tick: a file changed within the last second is re-read.
        if hit is not None and hit[0] == key and time.time_ns() - st.st_mtime_ns > 1_000_000_000:
            return hit[1]
    env = _read_subnet_env(path)
    if st is not None:
        _subnet_envs[path] = (key, env)
    return env


def _read_subnet_env(path: str) -> FlannelEnv:
    kv: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                k, sep, v = line.strip().partition("=")
                if sep:
                    kv[k.strip()] = v.strip()
    except FileNotFoundError:
        raise CniError(
            spec.ERR_TRY_AGAIN_LATER,
            f"failed to load flannel 'subnet.env' file: {path} is missing",
            "flanneld writes it once it holds a lease; check the flanneld log",
        ) from None
    except OSError as e:
        raise CniError(spec.ERR_IO, f"failed to read {path}", str(e)) from None
    missing = [
        k for k in ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ") if k not in kv
    ]
    if missing:
        raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, f"{path} is missing {', '.join(missing)}")
    try:
        return FlannelEnv(
            networks=[
                ipaddress.IPv4Network(n.strip()) for n in kv["FLANNEL_NETWORK"].split(",") if n.strip()
            ],
            subnet=ipaddress.IPv4Interface(kv["FLANNEL_SUBNET"]),
            mtu=int(kv["FLANNEL_MTU"]),
            ipmasq=kv["FLANNEL_IPMASQ"].lower() == "true",
        )
    except ValueError as e:
        raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, f"bad value in {path}", str(e)) from None


_home = threading.local()


def _own_netns() -> tuple[int, int]:
    """(dev, inode) of the calling thread's own network namespace, looked up once per thread (a
    thread that visits a pod namespace always comes back, see `rtnl.NetnsScope`)."""
    own = getattr(_home, "netns", None)
    if own is None:
        st = os.stat("/proc/thread-self/ns/net")
        own = _home.netns = (st.st_dev, st.st_ino)
    return own


def _open_netns(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CniError(
            spec.ERR_INVALID_NETNS, f"failed to open netns {path!r}", os.strerror(e.errno or 0)
        ) from None
    # skel refuses the plugin's own namespace as the container's: wiring a "pod" into the host
    # namespace would rename and re-address the host's own interfaces.
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) == _own_netns():
        os.close(fd)
        raise CniError(spec.ERR_INVALID_NETNS, "netns is the plugin's own namespace", path)
    return fd


class Reaper:
    """Deletes host veths after DEL has answered (agent only).

    Destroying a veth costs the kernel 12-25 ms here (an RCU grace period in
    unregister_netdevice), two thirds of the reference plugin's DEL. DEL first makes the pair inert
    synchronously (host route removed, link down and put in `veth.REAP_GROUP`, so no packet reaches
    or leaves the pod and the released address can be reused at once), answers, and this thread
    destroys the group: every pair deleted meanwhile goes in one request, one grace period. An ADD
    that needs the same host name waits for the pending destruction; `flush()` (GC, shutdown)
    waits for all of them.
    """

    def __init__(self, *, sweep: bool = True) -> None:
        self._q: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._pending: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pycni-cni-reaper", daemon=True)
        self._thread.start()
        if sweep:
            self.sweep()

    def sweep(self) -> list[str]:
        """Queue every host veth a previous agent marked deleted but did not destroy (it crashed)."""
        with Rtnl() as rt:
            names = [link.name for link in rt.links() if link.alias == veth.REAP_ALIAS]
            for name in names:
                rt.link_down(name, group=veth.REAP_GROUP)
        for name in names:
            log.info("leftover deleted veth found", dev=name)
            self.reap(name)
        return names

    def reap(self, name: str) -> None:
        with self._lock:
            if name in self._pending:
                return
            self._pending[name] = threading.Event()
        self._q.put(name)

    def wait(self, name: str, timeout: float = 30.0) -> None:
        with self._lock:
            ev = self._pending.get(name)
        if ev is not None:
            ev.wait(timeout)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait for every pending destruction; True when there were some."""
        with self._lock:
            evs = list(self._pending.values())
        for ev in evs:
            ev.wait(timeout)
        return bool(evs)

    def stop(self) -> None:
        self.flush()
        self._q.put(None)
        self._thread.join(5)

    def _run(self) -> None:
        rt = Rtnl()
        while True:
            first = self._q.get()
            batch = [first]
            while True:  # everything queued meanwhile goes in the same kernel request
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            names = [n for n in batch if n is not None]
            try:
                if names:
                    rt.group_del(veth.REAP_GROUP)
                    for name in names:  # a pair not in the group (never expected) goes by name
                        rt.link_del(name)
                    log.info("veths deleted", devs=names)
            except Exception as e:  # noqa: BLE001 - a failed reap is logged; the next sweep retries
                log.warning("veth delete failed", devs=names, error=str(e))
            finally:
                with self._lock:
                    evs = [self._pending.pop(n, None) for n in names]
                for ev in evs:
                    if ev is not None:
                        ev.set()
            if None in batch:
                rt.close()
                return


class CniPlugin:
    """The verbs. Holds what is worth keeping between calls in an agent: netlink sockets in the host
    namespace, datastore clients, block allocators."""

    def __init__(
        self,
        *,
        datastore_factory: Callable[[], Any] | None = None,
        reaper: Reaper | None = None,
    ) -> None:
        self._ds_factory = datastore_factory
        self._datastores: dict[str, Any] = {}
        self._allocators: dict[tuple[str, str], Any] = {}
        self._flannel_ipam: dict[tuple[str, str, str], HostLocalIpam] = {}
        self._host_pool: queue.SimpleQueue[Rtnl] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.reaper = reaper
        # Bookkeeping that runs after the reply has been sent (agent only, see `deferring`): the
        # work list of the current request (per worker thread) and, per container, an event set
        # once that container's deferred work is done, which its next request waits for.
        self._deferred = threading.local()
        self._settling: dict[str, threading.Event] = {}
        # Helper threads for overlapping I/O within one request; only worth having in the agent
        # (a thread costs more than it saves in a one-shot process).
        self._pool: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(max_workers=4, thread_name_prefix="pycni-cni-io")
            if reaper is not None
            else None
        )

    # ------------------------------------------------------------------ shared resources
    @contextlib.contextmanager
    def _host(self) -> Iterator[Rtnl]:
        try:
            rt = self._host_pool.get_nowait()
        except queue.Empty:
            rt = Rtnl()
        ok = False
        try:
            yield rt
            ok = True
        finally:
            if ok:
                self._host_pool.put(rt)
            else:
                rt.close()  # a half-read reply must not confuse the next user

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """Host-side: collect the non-result bookkeeping of the verbs run inside (the result-cache
        write of an ADD) and run it when the block ends, i.e. after the caller has sent the reply.

        Safe because nothing the reply promises depends on it: a crash before it runs leaves an
        attachment without a cache entry, which DEL handles from the runtime's prevResult and the
        derivable names (host veth, IPAM owner, endpoint key), as when the cache file is lost. The
        next request for the same container waits for it (`_settle`), so DEL, CHECK and GC never
        see a half-finished ADD."""
        work: list[tuple[str, threading.Event, Callable[[], None]]] = []
        self._deferred.work = work
        try:
            yield
        finally:
            self._deferred.work = None
            for cid, ev, fn in work:
                try:
                    fn()
                except Exception as e:  # noqa: BLE001 - the reply is out; log and carry on
                    log.error("deferred bookkeeping failed", container_id=cid, error=repr(e))
                finally:
                    with self._lock:
                        if self._settling.get(cid) is ev:
                            del self._settling[cid]
                    ev.set()

    def _after_reply(self, cid: str, fn: Callable[[], None]) -> bool:
        """Queue `fn` to run after the reply (inside `deferring`); False (nothing queued) otherwise."""
        work = getattr(self._deferred, "work", None)
        if work is None:
            return False
        ev = threading.Event()
        with self._lock:
            self._settling[cid] = ev
        work.append((cid, ev, fn))
        return True

    def _settle(self, cid: str | None = None, timeout: float = 30.0) -> None:
        """Wait for the deferred bookkeeping of container `cid` (None: of every container)."""
        with self._lock:
            evs = list(self._settling.values()) if cid is None else [self._settling.get(cid)]
        for ev in evs:
            if ev is not None:
                ev.wait(timeout)

    def _datastore(self, nc: NetConf) -> Any:
        if self._ds_factory is not None:
            return self._ds_factory()
        if nc.datastore_type == "none":
            return None
        if nc.datastore_type == ETCDV3 and not nc.etcd_endpoints:
            raise CniError(
                spec.ERR_INVALID_NETWORK_CONFIG,
                "calico mode needs etcd_endpoints",
                "set etcd_endpoints, datastore_type 'kubernetes', or 'none' to run without felix",
            )
        where = nc.etcd_endpoints if nc.datastore_type == ETCDV3 else nc.kubeconfig
        cache_key = f"{nc.datastore_type}:{where}"  # one client per datastore, across configs
        with self._lock:
            ds = self._datastores.get(cache_key)
            if ds is None:
                try:
                    ds = open_datastore(nc.datastore_type, etcd_endpoints=nc.etcd_endpoints,
                                        kubeconfig=nc.kubeconfig or None, timeout=5.0)
                except Invalid as e:
                    raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, "bad datastore configuration",
                                   str(e)) from None
                self._datastores[cache_key] = ds
        return ds

    def _ipam(self, nc: NetConf, fenv: FlannelEnv | None) -> PodIpam:
        data_dir = nc.ipam_data_dir
        if fenv is not None:
            fkey = (data_dir, nc.name, str(fenv.subnet))  # stateless: one per lease and directory
            hl = self._flannel_ipam.get(fkey)
            if hl is None:
                rng = host_local.Range.from_json(
                    {"subnet": str(fenv.subnet.network), "gateway": str(fenv.subnet.ip)}
                )
                hl = self._flannel_ipam[fkey] = HostLocalIpam(data_dir, nc.name, [rng])
            return hl
        kind = nc.ipam.get("type", "calico-ipam")
        if kind == "host-local":
            try:
                return HostLocalIpam(data_dir, nc.name, host_local.parse_ranges(nc.ipam))
            except Invalid as e:
                raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, str(e)) from None
        if kind == "calico-ipam":
            ds = self._datastore(nc)
            if ds is None:
                raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, "calico-ipam needs a datastore")
            key = (str(id(ds)), nc.nodename)
            with self._lock:
                alloc = self._allocators.get(key)
                if alloc is None:
                    from pycni.ipam.allocator import BlockAllocator

                    alloc = BlockAllocator(ds, node=nc.nodename)
                    self._allocators[key] = alloc
            pools = nc.ipam.get("ipv4_pools")
            return BlockIpam(alloc, list(pools) if isinstance(pools, list) else None)
        raise CniError(
            spec.ERR_INVALID_NETWORK_CONFIG,
            f"unsupported ipam type {kind!r}",
            "use 'calico-ipam' or 'host-local'",
        )

    @staticmethod
    def _owner(nc: NetConf, a: CmdArgs, cid: str | None = None, ifname: str | None = None) -> Owner:
        return Owner(
            nc.name,
            cid or a.container_id,
            ifname or a.ifname,
            a.args.get("K8S_POD_NAMESPACE", ""),
            a.args.get("K8S_POD_NAME", ""),
            nc.nodename,
        )

    def _host_name(self, nc: NetConf, a: CmdArgs) -> str:
        if nc.mode == "calico":
            return calico.host_veth_name(a.args, a.container_id, ifname=a.ifname)
        return veth.bridge_port_name(a.container_id, a.ifname)

    def _wep(self, nc: NetConf, a: CmdArgs) -> tuple[str, str] | None:
        """(namespace, endpoint name) for Kubernetes pods, None otherwise."""
        ns, pod = a.args.get("K8S_POD_NAMESPACE"), a.args.get("K8S_POD_NAME")
        if not ns or not pod:
            return None
        return ns, calico.wep_name(nc.nodename, pod, a.ifname)

    # ------------------------------------------------------------------ ADD
    def add(self, a: CmdArgs) -> dict[str, Any]:
        self._settle(a.container_id)
        nc = parse_conf(a.conf)
        fenv = read_subnet_env(nc.subnet_file) if nc.mode == "flannel" else None
        cache = ResultCache(nc.cache_dir)
        owner = self._owner(nc, a)
        host_name = self._host_name(nc, a)
        nsfd = _open_netns(a.netns)
        try:
            with self._host() as host, ExitStack() as undo:  # undo runs while host is open
                pod = veth.pod_socket(nsfd)
                undo.callback(pod.close)
                if self.reaper is not None:
                    self.reaper.wait(host_name)  # a DEL of this pod may still be destroying its pair
                flush = self.reaper.flush if self.reaper is not None else None
                ds = self._datastore(nc) if nc.mode == "calico" else None
                ipam = self._ipam(nc, fenv)
                # IPAM (file or datastore I/O) runs on a helper thread while this one has the
                # kernel create the veth pair; the wiring asks for the addresses once the pair
                # exists. The undo waits for the helper, so a failure anywhere still releases.
                pending = self._pool.submit(ipam.assign, owner) if self._pool is not None else None

                def release_when_done() -> None:
                    if pending is not None:
                        try:
                            pending.result()
                        except Exception:  # noqa: BLE001 - nothing was assigned
                            return
                    ipam.release(owner)

                undo.callback(self._quiet, "release addresses", release_when_done)
                got: list[Any] = []

                def addresses() -> list[Any]:
                    if not got:
                        got.extend(pending.result() if pending is not None else ipam.assign(owner))
                        log.debug(
                            "addresses assigned",
                            container_id=a.container_id,
                            ips=[str(x.address) for x in got],
                        )
                        fault(a, "after_ipam")
                    return got

                if nc.mode == "calico":
                    # Calico pods get /32s whatever the IPAM's prefix: nothing is on-link for a
                    # pod, every packet goes to the host (169.254.1.1) and is routed there.
                    def host32() -> list[Any]:
                        return [
                            ipaddress.ip_interface((x.address.ip, x.address.ip.max_prefixlen))
                            for x in addresses()
                        ]

                    wired = veth.calico_add(
                        host,
                        pod,
                        nsfd,
                        a,
                        host_name=host_name,
                        mtu=nc.mtu or DEFAULT_MTU,
                        addresses=host32,
                        undo=undo,
                        flush=flush,
                        queues=nc.num_queues,
                    )
                else:
                    assert fenv is not None
                    masq = (not fenv.ipmasq) if nc.ip_masq is None else nc.ip_masq
                    wired = veth.flannel_add(
                        host,
                        pod,
                        nsfd,
                        a,
                        host_name=host_name,
                        bridge=nc.bridge,
                        env=fenv,
                        mtu=nc.mtu or fenv.mtu,
                        addresses=addresses,
                        hairpin=nc.hairpin,
                        default_gateway=nc.default_gateway,
                        ip_masq=masq,
                        network=nc.name,
                        undo=undo,
                        flush=flush,
                    )
                used = [x if hasattr(x, "ip") else x.address for x in (wired.addresses or [])]

                wep_key = None
                if nc.mode == "calico" and ds is not None:
                    wep = self._wep(nc, a)
                    if wep is not None:
                        ns, name = wep
                        wep_key = calico.wep_key(ns, name)
                        value = calico.wep_value(
                            name=name,
                            namespace=ns,
                            node=nc.nodename,
                            pod=a.args["K8S_POD_NAME"],
                            container_id=a.container_id,
                            endpoint=a.ifname,
                            interface_name=host_name,
                            mac=wired.pod_mac,
                            ip_networks=[str(x) for x in used],
                        )
                        self._ds_call(ds.put, wep_key, value)
                        undo.callback(self._quiet, "delete endpoint", ds.delete, wep_key)
                        log.debug("endpoint recorded", key=wep_key)
                fault(a, "after_record")

                result = wired.result
                entry = {
                    "mode": nc.mode,
                    "netns": a.netns,
                    "hostVeth": host_name,
                    "wepKey": wep_key,
                    "handle": owner.handle,
                    "ipMasq": wired.ip_masq,
                    "cniArgs": a.args,
                    "result": result,
                    "config": {"ipam": nc.ipam, "cacheDir": nc.cache_dir},
                }

                def record() -> None:
                    cache.put(nc.name, a.container_id, a.ifname, entry)
                    log.info(
                        "pod added",
                        container_id=a.container_id,
                        dev=host_name,
                        netns=a.netns,
                        ips=[str(x) for x in used],
                        endpoint=wep_key,
                    )

                # In the agent the cache write (and the log line) run after the reply. Not with a
                # masquerade rule: only the cache says it exists, and DEL must find it after a crash.
                if wired.ip_masq or not self._after_reply(a.container_id, record):
                    record()
                undo.pop_all()
                pod.close()  # (undo's close is dropped with the rest on success)
                return result
        except NetlinkError as e:
            raise CniError(spec.ERR_INTERNAL, f"netlink: {e}") from None
        except Transient as e:
            raise CniError(spec.ERR_TRY_AGAIN_LATER, "try again later", str(e)) from None
        finally:
            os.close(nsfd)

    @staticmethod
    def _ds_call(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Transient as e:
            raise CniError(spec.ERR_TRY_AGAIN_LATER, "datastore unavailable", str(e)) from None

    @staticmethod
    def _quiet(what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Rollback/teardown step: log and carry on; the original error is what the caller sees."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            log.warning("undo step failed", step=what, error=str(e))

    # ------------------------------------------------------------------ DEL
    def delete(self, a: CmdArgs) -> None:
        self._settle(a.container_id)
        nc = parse_conf(a.conf)
        cache = ResultCache(nc.cache_dir)
        entry = cache.get(nc.name, a.container_id, a.ifname) or {}
        prev = a.conf.get("prevResult")
        if not entry and isinstance(prev, dict):  # our cache is gone: the runtime's copy still names the IPs
            entry = {"result": prev}
        host_name = entry.get("hostVeth") or self._host_name(nc, a)
        errors = self._teardown(nc, a, entry, host_name)
        if errors:
            raise CniError(errors[0][0], errors[0][1], "; ".join(m for _, m in errors[1:]))
        cache.delete(nc.name, a.container_id, a.ifname)
        log.info("pod deleted", container_id=a.container_id, dev=host_name)

    def _teardown(
        self, nc: NetConf, a: CmdArgs, entry: dict[str, Any], host_name: str
    ) -> list[tuple[int, str]]:
        errors: list[tuple[int, str]] = []
        with self._host() as host:
            try:
                ips = [
                    ipaddress.ip_interface(i["address"]) for i in (entry.get("result") or {}).get("ips", [])
                ]
                veth.host_teardown(host, host_name, ips if nc.mode == "calico" else [], self.reaper)
            except NetlinkError as e:
                errors.append((spec.ERR_INTERNAL, f"netlink: {e}"))
        if not entry.get("hostVeth") and a.netns:  # no record of ours: clear the pod side by name
            with contextlib.suppress(CniError):
                nsfd = _open_netns(a.netns)
                try:
                    veth.pod_teardown(nsfd, a.ifname)
                except NetlinkError as e:
                    log.debug("pod side teardown", error=str(e))
                finally:
                    os.close(nsfd)
        hint = [ipaddress.ip_interface(i["address"]).ip for i in (entry.get("result") or {}).get("ips", [])]
        try:
            fenv = None
            if nc.mode == "flannel":
                try:
                    fenv = read_subnet_env(nc.subnet_file)
                except CniError:
                    fenv = None
            if nc.mode == "flannel" and fenv is None:
                host_local.HostLocalStore(nc.ipam_data_dir, nc.name).release(
                    a.container_id, a.ifname, [str(h) for h in hint]
                )
            else:
                self._ipam(nc, fenv).release(self._owner(nc, a), hint)
        except CniError as e:
            errors.append((e.code, f"{e.msg}: {e.details}" if e.details else e.msg))
        except PycniError as e:
            errors.append((spec.ERR_TRY_AGAIN_LATER, f"IPAM release: {e}"))
        if nc.mode == "flannel" and entry.get("ipMasq"):
            try:
                from pycni.cni import masq

                masq.teardown(nc.name, a.container_id, a.ifname)
            except OSError as e:
                errors.append((spec.ERR_INTERNAL, str(e)))
        if nc.mode == "calico":
            try:
                ds = self._datastore(nc)
                key = entry.get("wepKey")
                if key is None and (w := self._wep(nc, a)) is not None:
                    key = calico.wep_key(*w)
                if ds is not None and key:
                    try:
                        ds.delete(key)
                    except NotFound:
                        pass
            except CniError as e:
                errors.append((e.code, e.msg))
            except Transient as e:
                errors.append((spec.ERR_TRY_AGAIN_LATER, f"datastore: {e}"))
        return errors

    # ------------------------------------------------------------------ CHECK
    def check(self, a: CmdArgs) -> None:
        self._settle(a.container_id)
        nc = parse_conf(a.conf)
        entry = ResultCache(nc.cache_dir).get(nc.name, a.container_id, a.ifname)
        prev = a.conf.get("prevResult") or (entry or {}).get("result")
        if not prev:
            raise CniError(
                spec.ERR_UNKNOWN_CONTAINER,
                f"no ADD result for {a.container_id}/{a.ifname}",
                "neither prevResult nor a cached result",
            )
        host_name = (entry or {}).get("hostVeth") or self._host_name(nc, a)
        problems: list[str] = []
        nsfd = _open_netns(a.netns)
        try:
            with self._host() as host:
                problems += veth.check(host, nsfd, a.ifname, host_name, prev, nc.mode, nc.bridge)
        finally:
            os.close(nsfd)
        fenv = read_subnet_env(nc.subnet_file) if nc.mode == "flannel" else None
        want = {ipaddress.ip_interface(i["address"]).ip for i in prev.get("ips", [])}
        try:
            have = set(self._ipam(nc, fenv).lookup(self._owner(nc, a), want))
        except CniError as e:
            problems.append(f"IPAM: {e.msg}")
        else:
            for ip in sorted(want - have):
                problems.append(f"IPAM holds no allocation of {ip} for {a.container_id}/{a.ifname}")
        if nc.mode == "calico":
            ds = self._datastore(nc)
            key = (entry or {}).get("wepKey")
            if key is None and (w := self._wep(nc, a)) is not None:
                key = calico.wep_key(*w)
            if ds is not None and key and self._ds_call(ds.get, key) is None:
                problems.append(f"workload endpoint {key} is missing from the datastore")
        if nc.mode == "flannel" and (entry or {}).get("ipMasq"):
            from pycni.cni import masq

            if not masq.present(nc.name, a.container_id, a.ifname):
                problems.append("masquerade rule is missing")
        if problems:
            raise CniError(
                spec.ERR_INTERNAL,
                f"CHECK found {len(problems)} difference(s) from the ADD result",
                "; ".join(problems),
            )

    # ------------------------------------------------------------------ GC
    def gc(self, a: CmdArgs) -> None:
        self._settle()
        nc = parse_conf(a.conf)
        valid = set(nc.valid_attachments)
        cache = ResultCache(nc.cache_dir)
        failures: list[str] = []
        for entry in cache.entries(nc.name):
            cid, ifn = entry.get("containerId", ""), entry.get("ifName", "")
            if (cid, ifn) in valid:
                continue
            stale = CmdArgs(
                command="DEL",
                container_id=cid,
                netns="",
                ifname=ifn,
                args=dict(entry.get("cniArgs") or {}),
                path=a.path,
                stdin=b"",
                conf=a.conf,
                environ=a.environ,
            )
            errs = self._teardown(nc, stale, entry, entry.get("hostVeth") or self._host_name(nc, stale))
            if errs:
                failures += [m for _, m in errs]
                continue
            cache.delete(nc.name, cid, ifn)
            log.info("stale attachment collected", container_id=cid, ifname=ifn)
        if nc.mode == "flannel" or nc.ipam.get("type") == "host-local":
            freed = host_local.HostLocalStore(nc.ipam_data_dir, nc.name).release_except(valid)
            if freed:
                log.info("stale addresses released", ips=freed)
        if self.reaper is not None:
            self.reaper.flush()
        if failures:
            raise CniError(spec.ERR_INTERNAL, "GC could not release everything", "; ".join(failures))

    # ------------------------------------------------------------------ STATUS
    def status(self, a: CmdArgs) -> None:
        nc = parse_conf(a.conf)
        fenv = None
        if nc.mode == "flannel":
            try:
                fenv = read_subnet_env(nc.subnet_file)
            except CniError as e:
                raise CniError(spec.ERR_NOT_AVAILABLE, "flannel has no lease yet", e.msg) from None
        else:
            ds = self._datastore(nc)
            if ds is not None:
                try:
                    ds.get("/calico/v1/Ready")
                except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
                    raise CniError(spec.ERR_NOT_AVAILABLE, "datastore unreachable", str(e)) from None
        free = self._ipam(nc, fenv).free()
        if free is not None and free <= 0:
            raise CniError(spec.ERR_NOT_AVAILABLE, "address pool exhausted", f"network {nc.name}")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        while True:
            try:
                self._host_pool.get_nowait().close()
            except queue.Empty:
                break
        for ds in self._datastores.values():
            with contextlib.suppress(Exception):
                ds.close()
