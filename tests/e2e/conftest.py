"""The e2e lanes' shared fixture: a fresh lab per test, named by the test module's `NAME`.

Each module keeps its own lab name (`pyt-lab`, `pyt-cal`, `pyt-fl`, ...) so a leftover from one
module never collides with another's; the fixture takes down anything left from an earlier run
first, and takes the lab down again afterwards, even when the test failed. A module that needs
something else (test_calico_bgp's module-scoped lab) defines its own `lab` fixture, which wins.
The helpers the tests share (`wait_for`, `ipj`, `up_with_pods`, ...) live in `lab_helpers.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pycni.lab import Lab


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    name = getattr(request.module, "NAME", None)
    assert isinstance(name, str), f"{request.module.__name__} must set NAME, its lab's name"
    lab = Lab(name)
    lab.down()
    try:
        yield lab
    finally:
        lab.down()
