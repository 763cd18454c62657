# Two commands: `make run` runs the platform, `make test` runs every test.
# Each sets up .venv from the pinned requirements first (needs only Python 3.11+).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test down lint bench

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "needs Python 3.11+ (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.test: requirements.txt requirements-test.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-test.txt
	touch $@

run: $(VENV)/.runtime
	$(BIN)/python driver.py

down: $(VENV)/.runtime
	$(BIN)/python driver.py down

# Debian packages the tests drive: Chromium (the status page in a real browser) and
# promtool (the alert rules), from the `chromium` and `prometheus` packages.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
/usr/bin/chromium /usr/bin/promtool:
	@command -v apt-get >/dev/null || { echo "the tests need Chromium and promtool: install Debian's chromium and prometheus packages"; exit 1; }
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium prometheus

# Then the scheduler's, broadcaster's and liveness monitor's platform tests again, on a local
# 3-primary Redis Cluster (the store's tests run on both in the first pass).
CLUSTER_TESTS := tests/test_scheduler.py tests/test_broadcaster.py tests/test_liveness_monitor.py

test: $(VENV)/.test /usr/bin/chromium /usr/bin/promtool
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
	$(BIN)/python -m pytest --redis-cluster $(CLUSTER_TESTS)

bench: $(VENV)/.test
	$(BIN)/python bench/run_all.py
