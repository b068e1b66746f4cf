"""Logging for the CNI code path: structlog when the host process has it loaded, else JSON lines.

The resident agent (felix, flanneld, `python -m pycni.cni.server`) has structlog configured, and
CNI events join its log. The in-process fallback must start fast: importing structlog costs about
200 ms here, more than a whole pod ADD, so there the same calls (`log.info("veth created",
dev=...)`) are written as one JSON object per line to stderr (kubelet keeps it) only when
`PYCNI_LOG_LEVEL` asks for them. Nothing here configures structlog: entry points do.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class _JsonLines:
    def __init__(self) -> None:
        self.level = _LEVELS.get(os.environ.get("PYCNI_LOG_LEVEL", "error").lower(), 40)

    def _emit(self, level: str, event: str, kw: dict[str, Any]) -> None:
        if _LEVELS[level] < self.level:
            return
        rec: dict[str, Any] = {
            "event": event,
            "level": level,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        rec.update(
            {k: str(v) if not isinstance(v, (int, float, bool, type(None))) else v for k, v in kw.items()}
        )
        try:
            sys.stderr.write(json.dumps(rec) + "\n")
        except Exception:  # stderr closed: logging must never fail the plugin
            pass

    def debug(self, event: str, **kw: Any) -> None:
        self._emit("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._emit("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._emit("warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._emit("error", event, kw)


class _Lazy:
    """Resolves to structlog's logger if structlog is already imported, else JSON lines."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._impl: Any = None

    def _get(self) -> Any:
        if self._impl is None:
            sl = sys.modules.get("structlog")
            self._impl = sl.get_logger(self.name) if sl is not None else _JsonLines()
        return self._impl

    def debug(self, event: str, **kw: Any) -> None:
        self._get().debug(event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._get().info(event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._get().warning(event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._get().error(event, **kw)


def get_logger(name: str) -> _Lazy:
    return _Lazy(name)
