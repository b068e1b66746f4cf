"""The CNI skeleton: environment + stdin in, (exit code, stdout bytes) out. The only error exit.

`dispatch()` is pure with respect to process state: it takes the environment and stdin as values
and returns what to print and which code to exit with. Both hosts use it unchanged: the
in-process plugin (`main()`, which is the only place that writes stdout and calls exit) and the
resident agent (`pycni.cni.server`, which sends the pair back to the front, which prints it).
Every failure becomes `{"cniVersion","code","msg","details"}`; an unexpected exception becomes code
999 with its type and message, never a traceback (cni:pkg/skel/skel.go does the same wrapping).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any, Protocol

from pycni.cni import spec
from pycni.cni.log import get_logger
from pycni.cni.spec import CmdArgs, CniError

log = get_logger("pycni.cni")

_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}

#: Environment passed from the front to the agent (the rest of kubelet's environment is noise).
FORWARDED_ENV = (
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
    "CNI_NETNS_OVERRIDE",
    "PYCNI_FAULT",
    "PYCNI_LOG_LEVEL",
)


class Plugin(Protocol):
    def add(self, args: CmdArgs) -> dict[str, Any]: ...
    def delete(self, args: CmdArgs) -> None: ...
    def check(self, args: CmdArgs) -> None: ...
    def gc(self, args: CmdArgs) -> None: ...
    def status(self, args: CmdArgs) -> None: ...


def _load_conf(stdin: bytes) -> dict[str, Any]:
    try:
        conf = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(spec.ERR_DECODING, "error decoding network config", str(e)) from None
    if not isinstance(conf, dict):
        raise CniError(spec.ERR_DECODING, "error decoding network config", "config is not a JSON object")
    if "plugins" in conf:  # a whole conflist: pick our entry, inject what a runtime would inject
        plugins = conf.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, "conflist has no plugins")
        ours = next((p for p in plugins if isinstance(p, dict) and p.get("type") == "pycni"), plugins[0])
        if not isinstance(ours, dict):
            raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, "conflist plugin entry is not an object")
        conf = {**ours, "name": conf.get("name"), "cniVersion": conf.get("cniVersion")}
    return conf


def _negotiate(conf: dict[str, Any], command: str) -> str:
    v = conf.get("cniVersion")
    if v is None:
        raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, "missing cniVersion in network config")
    if not isinstance(v, str) or v not in spec.SUPPORTED_VERSIONS:
        raise CniError(
            spec.ERR_INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {v!r}, plugin supports {list(spec.SUPPORTED_VERSIONS)}",
        )
    if command in ("GC", "STATUS") and spec.version_tuple(v) < (1, 1, 0):
        raise CniError(
            spec.ERR_INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config version {v} does not allow {command}; it needs 1.1.0",
        )
    if not isinstance(conf.get("name"), str) or not conf["name"]:
        raise CniError(spec.ERR_INVALID_NETWORK_CONFIG, "missing network name in config")
    return v


def parse(environ: Mapping[str, str], stdin: bytes) -> CmdArgs:
    """Validate the environment and the config exactly as skel does; raise CniError otherwise."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CniError(spec.ERR_INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    if command not in spec.VERBS:
        raise CniError(spec.ERR_INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    missing = [k for k in _REQUIRED[command] if not environ.get(k)]
    if missing:
        raise CniError(spec.ERR_INVALID_ENV, f"required env variables [{' '.join(missing)}] missing")
    cid = environ.get("CNI_CONTAINERID", "")
    if cid and not spec.valid_container_id(cid):
        raise CniError(spec.ERR_INVALID_ENV, "invalid characters in containerID", cid)
    ifname = environ.get("CNI_IFNAME", "")
    if ifname and (
        len(ifname) > 15 or "/" in ifname or ifname in (".", "..") or any(c.isspace() for c in ifname)
    ):
        raise CniError(spec.ERR_INVALID_ENV, "invalid CNI_IFNAME", ifname)
    args = CmdArgs(
        command=command,
        container_id=cid,
        netns=environ.get("CNI_NETNS_OVERRIDE") or environ.get("CNI_NETNS", ""),
        ifname=ifname,
        args=spec.parse_cni_args(environ.get("CNI_ARGS", "")),
        path=environ.get("CNI_PATH", ""),
        stdin=stdin,
        environ={k: environ[k] for k in FORWARDED_ENV if k in environ},
    )
    if command != "VERSION":
        args.conf = _load_conf(stdin)
        _negotiate(args.conf, command)
    return args


def _best_effort_version(stdin: bytes) -> str:
    """The config's cniVersion for an error found before the config was parsed (env errors)."""
    try:
        v = json.loads(stdin).get("cniVersion")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return spec.CURRENT_VERSION
    return v if v in spec.SUPPORTED_VERSIONS else spec.CURRENT_VERSION


def dispatch(environ: Mapping[str, str], stdin: bytes, plugin: Plugin | None) -> tuple[int, bytes]:
    """Run one CNI invocation; return (exit code, stdout bytes). Never raises."""
    version = spec.CURRENT_VERSION
    try:
        args = parse(environ, stdin)
        if args.command == "VERSION":
            return 0, spec.dumps(
                {"cniVersion": spec.CURRENT_VERSION, "supportedVersions": list(spec.SUPPORTED_VERSIONS)}
            )
        version = args.cni_version
        if plugin is None:  # pragma: no cover - composition error
            raise CniError(spec.ERR_INTERNAL, "no plugin configured")
        if args.command == "ADD":
            result = plugin.add(args)
            return 0, spec.dumps(spec.format_result(result, version))
        if args.command == "DEL":
            plugin.delete(args)
        elif args.command == "CHECK":
            plugin.check(args)
        elif args.command == "GC":
            plugin.gc(args)
        elif args.command == "STATUS":
            plugin.status(args)
        return 0, b""
    except CniError as e:
        if version == spec.CURRENT_VERSION:
            version = _best_effort_version(stdin)
        log.info(
            "cni error",
            code=e.code,
            msg=e.msg,
            details=e.details,
            command=environ.get("CNI_COMMAND"),
            container_id=environ.get("CNI_CONTAINERID"),
        )
        return 1, spec.dumps(e.to_json(version))
    except Exception as e:  # noqa: BLE001 - the one place that turns anything into a CNI error
        log.error(
            "cni internal error",
            error=repr(e),
            command=environ.get("CNI_COMMAND"),
            container_id=environ.get("CNI_CONTAINERID"),
        )
        return 1, spec.dumps(CniError(spec.ERR_INTERNAL, f"{type(e).__name__}: {e}").to_json(version))


def main() -> None:
    """In-process host: read stdin, dispatch, print, exit. The only writer of stdout here.

    While the verb runs, fd 1 points at stderr: a library that prints or logs to stdout (structlog's
    default configuration does) cannot corrupt the result the runtime parses.
    """
    result_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        stdin = sys.stdin.buffer.read() if os.environ.get("CNI_COMMAND") != "VERSION" else b""
    except OSError as e:
        stdin = b""
        rc, out = (
            1,
            spec.dumps(CniError(spec.ERR_IO, "cannot read stdin", str(e)).to_json(spec.CURRENT_VERSION)),
        )
    else:
        try:
            from pycni.cni.plugin import CniPlugin

            plugin: Plugin | None = CniPlugin()
        except Exception as e:  # noqa: BLE001
            plugin = None
            rc, out = (
                1,
                spec.dumps(
                    CniError(spec.ERR_INTERNAL, f"plugin failed to load: {e}").to_json(spec.CURRENT_VERSION)
                ),
            )
        if plugin is not None:
            rc, out = dispatch(os.environ, stdin, plugin)
    sys.stdout.flush()
    while out:
        out = out[os.write(result_fd, out) :]
    sys.exit(rc)
