# The two commands the README promises: `make demo` (set up + the multi-node lab demo) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test unit lint integration e2e uml clean

install:
	./scripts/install-deps.sh

demo: install
	$(VENV)/bin/pycnictl lab demo

lint: install
	$(VENV)/bin/ruff check pycni daemons cni-plugin tests bench
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest -q tests/unit

test: install lint
	./scripts/run-tests.sh

clean:
	-$(VENV)/bin/pycnictl lab down --all
