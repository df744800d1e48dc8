# meshfs — the commands a developer and CI need. `make demo` runs the product, `make test` the suite.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
REVACTL := dev/reva/revactl
PYTEST_ARGS ?=
SUITES ?=

.PHONY: help deps venv reva-build reva-up reva-down reva-reset demo test test-long test-unit lint bench clean

help:
	@echo "make demo        start the dev Reva, add demo content, mount einstein's view and print its tree"
	@echo "make test        the whole suite (starts what it needs; builds Reva once)"
	@echo "make test-long   slow suites (soak, multi-GB, crash loops)"
	@echo "make bench       side-by-side benchmarks (results in bench/results/)"
	@echo "make lint        ruff + mypy"
	@echo "make reva-up | reva-down | reva-reset   the dev Reva on 127.0.0.1"

# System packages (fuse3 and the tools the tests drive); apt only when missing and root.
deps:
	@dev/deps.sh

$(VENV)/.stamp: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "meshfs: python3 (>= 3.11) is missing: install it (apt-get install python3 python3-venv)"; exit 1; }
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || { echo "meshfs: Python >= 3.11 is needed, found $$($(PY) --version)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.stamp

reva-build:
	@$(REVACTL) build

reva-up:
	@$(REVACTL) up

reva-down:
	@$(REVACTL) down

reva-reset:
	@$(REVACTL) reset

demo: deps venv
	@dev/demo.sh

lint: venv
	$(VENV)/bin/ruff check meshfs tests bench dev
	$(VENV)/bin/ruff format --check meshfs tests bench dev || true
	$(VENV)/bin/mypy

test: deps venv reva-build
	$(VENV)/bin/ruff check meshfs tests bench dev
	$(VENV)/bin/mypy
	$(VPY) dev/run_tests.py -m "not long" $(SUITES) -- $(PYTEST_ARGS)

test-long: deps venv reva-build
	$(VPY) dev/run_tests.py -m long $(SUITES) -- $(PYTEST_ARGS)

bench: deps venv reva-build
	$(VPY) -m bench $(BENCH_ARGS)

clean:
	-$(REVACTL) down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
