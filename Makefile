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

pytest: $(VENV)/.installed-test postgresql browser-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The browser suites: Debian's Chromium (installed only when missing, bounded; Playwright
# never downloads a browser) and the SDKs from npm into .cache/npm (git-ignored).
NPM_CACHE := .cache/npm
SDK_PACKAGES := @segment/analytics-next @rudderstack/analytics-js

.PHONY: browser-deps
browser-deps: /usr/bin/chromium $(NPM_CACHE)/.installed

/usr/bin/chromium:
	timeout 900 apt-get install -y --no-install-recommends chromium || \
	  { timeout 300 apt-get update && timeout 900 apt-get install -y --no-install-recommends chromium; }

$(NPM_CACHE)/.installed:
	mkdir -p $(NPM_CACHE)
	timeout 300 npm install --prefix $(NPM_CACHE) --no-audit --no-fund --ignore-scripts $(SDK_PACKAGES)
	touch $@

test: lint typecheck pytest

# The suites without real servers or browsers, for a quick loop while developing.
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m 'not slow' $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) relay-data .cache .pytest_cache .mypy_cache .ruff_cache
