"""Test lanes: unit (no root), integration (root + netns, real etcd/exabgp), e2e (the lab), uml (ipip).

Markers skip a lane whose tools are missing only when run by hand; `scripts/run-tests.sh` (what
`make test` and CI run) installs everything first and sets PYCNI_REQUIRE_ALL=1, which turns those
skips into a loud error so a lane can never pass silently by not running.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_ALL = os.environ.get("PYCNI_REQUIRE_ALL") == "1"
IN_UML = os.environ.get("PYCNI_IN_UML") == "1"
UML_TEST_TIMEOUT = int(os.environ.get("PYCNI_UML_TEST_TIMEOUT", "900"))

_TOOLS = {"etcd": ["etcd"], "bgp": ["exabgp"], "lab": ["etcd"]}


def _missing(marker: str) -> str | None:
    if marker in ("privileged", "lab", "etcd", "bgp", "uml") and os.geteuid() != 0:
        return "needs root"
    for tool in _TOOLS.get(marker, []):
        venv_bin = os.path.join(os.path.dirname(os.path.realpath(__import__("sys").executable)), tool)
        if shutil.which(tool) is None and not os.path.exists(venv_bin):
            return f"needs {tool}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "uml" in item.keywords and not IN_UML:
            item.add_marker(pytest.mark.skip(reason="runs only inside the UML lane (scripts/uml-run)"))
            continue
        if IN_UML and item.get_closest_marker("timeout") is None:
            # One slow CPU and a syscall trap per guest syscall: a Python process starts in 3-4 s
            # there, so the default per-test timeout (pyproject) is far too short for a lab test.
            item.add_marker(pytest.mark.timeout(UML_TEST_TIMEOUT))
        for marker in ("privileged", "etcd", "bgp", "lab"):
            if marker in item.keywords:
                why = _missing(marker)
                if why:
                    if REQUIRE_ALL:
                        raise pytest.UsageError(f"{item.nodeid}: lane '{marker}' cannot run here: {why}")
                    else:
                        item.add_marker(pytest.mark.skip(reason=why))
