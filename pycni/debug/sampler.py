"""A sampling profiler for every thread of a daemon (cProfile sees one thread; bgpd's reader and
datastore threads do real work too). Every `interval` it records each other thread's stack, and at
stop writes them in the folded format (`a;b;c count`, flamegraph.pl's input), busiest first.
Stacks whose innermost frame is a known wait (queue, lock, select, socket read) are counted under
`<idle>` so the busy share is visible at a glance.

    PYCNI_PROFILE=/tmp/prof pycni-bgpd ...   -> /tmp/prof/bgpd-<pid>.folded (and .prof, cProfile)
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from types import FrameType

_IDLE = {"channel_spin", "wait", "acquire", "select", "poll", "recv", "recv_into", "read", "readline",
         "accept", "sleep", "get", "_wait_for_tstate_lock", "readinto", "recvmsg", "serve_forever",
         "_read_ready"}


class Sampler:
    def __init__(self, path: str, interval: float = 0.001) -> None:
        self.path = path
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        me = threading.get_ident()
        names: dict[int | None, str] = {}
        while not self._stop.wait(self.interval):
            for tid, frame in sys._current_frames().items():  # noqa: SLF001 - the sampling API
                if tid == me:
                    continue
                stack = []
                f: FrameType | None = frame
                while f is not None:
                    code = f.f_code
                    stack.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}")
                    f = f.f_back
                top = frame.f_code.co_name
                if tid not in names:
                    names = {t.ident: t.name for t in threading.enumerate()}
                thread = names.get(tid, str(tid))
                key = "<idle>" if top in _IDLE else ";".join([thread, *reversed(stack)])
                self.counts[key] += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with open(self.path, "w", encoding="utf-8") as out:
            for stack, n in self.counts.most_common():
                out.write(f"{stack} {n}\n")


def summary(path: str, top: int = 30) -> str:
    """Inclusive samples per function (busy samples only), from a folded file."""
    incl: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    busy = idle = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            k = int(n)
            if stack == "<idle>":
                idle += k
                continue
            busy += k
            frames = stack.split(";")
            for fr in set(frames[1:]):
                incl[fr] += k
            self_[frames[-1]] += k
    lines = [f"busy {busy} idle {idle} samples"]
    lines += [f"{n:6d} {n * 100 // max(busy, 1):3d}%  {fr}" for fr, n in incl.most_common(top)]
    lines += ["-- self"] + [f"{n:6d}  {fr}" for fr, n in self_.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30))

