"""structlog configuration, called by entry points only (library code never configures logging).

Daemons log one JSON object per line to stderr; the CNI plugin must keep stdout for its result, so it
logs JSON to stderr (and optionally appends to a file). Field names are the ones an operator greps
for: `node`, `dst`, `dev`, `container_id`, `netns`, `peer`, `subnet`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


def configure(*, level: str = "info", stream: TextIO | None = None, json: bool = True) -> None:
    """Set up structlog for one process: ISO timestamps, level, JSON (or console) rendering."""
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
