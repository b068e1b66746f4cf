#!/usr/bin/python3 -IS
"""pycni CNI front: hand the request to the node's resident agent, or run the plugin in-process.

This file is installed as `/opt/cni/bin/pycni` by `pycni.cni.install` (which fills in the two
constants below). kubelet runs it once per pod operation, so it must start in a few milliseconds:
it imports only interpreter built-ins (`_socket`, `posix`; no `socket`, `json` or `os`,
whose imports alone cost ~20 ms here) and runs with `-I -S` (no site, no user paths).

Protocol on the agent's unix socket (config key `agentSocket`, default /run/pycni/cni.sock):
  request  b"PYCNI1" | u32 len | NUL-separated K=V environment | u32 len | stdin (the config)
  response u8 kind (0 answered, 1 run it yourself) | u8 exit code | stdout bytes until EOF
The agent runs `pycni.cni.skel.dispatch`, the same code as the in-process path. When nobody
listens, this process becomes the in-process plugin: stdin is put back (a memfd) and the venv's
python is exec'd on `pycni.cni.skel.main` (-IS, the library path given explicitly). If the agent
drops the connection mid-request the outcome is unknown, so we answer code 11 (try again later)
rather than redo half-done work.
"""

import _socket
import posix

FALLBACK_PYTHON = "/usr/bin/python3"  # replaced at install time by the venv's interpreter
DEFAULT_SOCKET = "/run/pycni/cni.sock"
FALLBACK_PATH: list = []  # replaced at install time: pycni's root and the venv's site-packages
# In-process: -IS skips site (.pth files, ~25 ms) and the library path is given explicitly; if the
# library cannot be imported the answer is still a CNI error, never a traceback.
FALLBACK_CODE = (
    "import sys\n"
    "sys.path[:0] = " + repr(FALLBACK_PATH) + "\n"
    "try:\n"
    "    from pycni.cni.skel import main\n"
    "except Exception as e:\n"
    "    import json\n"
    "    sys.stdout.write(json.dumps({'cniVersion': '1.1.0', 'code': 999,\n"
    "        'msg': 'pycni library not importable', 'details': repr(e)}) + '\\n')\n"
    "    sys.exit(1)\n"
    "main()\n"
)
FORWARD = (
    b"CNI_COMMAND",
    b"CNI_CONTAINERID",
    b"CNI_NETNS",
    b"CNI_IFNAME",
    b"CNI_ARGS",
    b"CNI_PATH",
    b"CNI_NETNS_OVERRIDE",
    b"PYCNI_FAULT",
    b"PYCNI_LOG_LEVEL",
)


def _socket_path(conf: bytes) -> bytes:
    """The `agentSocket` value, found without a JSON parser (json costs 6 ms to import)."""
    i = conf.find(b'"agentSocket"')
    if i < 0:
        return DEFAULT_SOCKET.encode()
    j = conf.find(b'"', conf.find(b":", i + 13) + 1)
    k = conf.find(b'"', j + 1)
    if j < 0 or k < 0 or b"\\" in conf[j:k]:
        import json  # escapes in the path: let a real parser decide

        try:
            return str(json.loads(conf).get("agentSocket") or DEFAULT_SOCKET).encode()
        except Exception:
            return DEFAULT_SOCKET.encode()
    return conf[j + 1 : k]


def _fallback(data: bytes) -> None:
    fd = posix.memfd_create("pycni-stdin", 0)
    posix.write(fd, data)
    posix.lseek(fd, 0, 0)
    posix.dup2(fd, 0)
    posix.close(fd)
    posix.execv(FALLBACK_PYTHON, [FALLBACK_PYTHON, "-IS", "-c", FALLBACK_CODE])


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "little")


def main() -> None:
    env = posix.environ
    data = b""
    if env.get(b"CNI_COMMAND") != b"VERSION":
        chunks = []
        while True:
            c = posix.read(0, 1 << 16)
            if not c:
                break
            chunks.append(c)
        data = b"".join(chunks)
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.connect(_socket_path(data))
    except OSError:
        s.close()
        _fallback(data)
    blob = b"\0".join(k + b"=" + env[k] for k in FORWARD if k in env)
    s.sendall(b"PYCNI1" + _u32(len(blob)) + blob + _u32(len(data)) + data)
    parts = []
    while True:
        c = s.recv(1 << 16)
        if not c:
            break
        parts.append(c)
    s.close()
    resp = b"".join(parts)
    if resp[:1] == b"\x01":
        _fallback(data)
    if len(resp) < 2:
        cid = env.get(b"CNI_CONTAINERID", b"").decode(errors="replace")
        msg = (
            '{"cniVersion": "1.1.0", "code": 11, "msg": "pycni agent closed the connection", '
            '"details": "container ' + cid + ': the outcome is unknown; try again"}\n'
        )
        posix.write(1, msg.encode())
        posix._exit(1)
    out = resp[2:]
    while out:
        out = out[posix.write(1, out) :]
    # _exit: skip interpreter finalisation (~1.5 ms of CPU here); stdout was written unbuffered.
    posix._exit(resp[1])


if __name__ == "__main__":
    main()
