# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= relay.toml

.PHONY: run test test-fast lint typecheck pytest bench clean postgresql

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The browser suites drive Debian's chromium (never a downloaded browser); installed once, bounded.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	timeout 600 apt-get install -y chromium

run: $(VENV)/.installed
	$(BIN)/relay run --config $(CONFIG)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check relay tests plugins bench

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy --strict relay

# The PostgreSQL suites start a server from Debian's package: installed once, when missing.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  timeout 300 apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq postgresql >/dev/null; }

pytest: $(VENV)/.installed-test postgresql $(CHROMIUM)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

# The suites without real servers or browsers, for a quick loop while developing.
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m 'not slow' $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) relay-data .pytest_cache .mypy_cache .ruff_cache
