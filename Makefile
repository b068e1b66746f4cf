# The two commands the README promises: `make demo` (set up + the multi-node lab demo) and `make test`.
# Both install every system and Python dependency first (scripts/install-deps.sh, fast when done).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint unit integration e2e uml clean

install:
	./scripts/install-deps.sh

demo: install
	$(VENV)/bin/pycnictl lab demo

# Every lane, in order, with a summary (lint, unit, integration, e2e, uml).
test: install
	./scripts/run-tests.sh

# One lane at a time (same runner, same PYCNI_REQUIRE_ALL=1 rules).
lint unit integration e2e uml: install
	./scripts/run-tests.sh $@

# Remove labs this repository left behind (crashed runs); other repos' labs are left alone.
clean:
	-$(VENV)/bin/pycnictl lab down --all
	rm -rf build .uml
