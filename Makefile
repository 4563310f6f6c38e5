# Entry points for a fresh machine: `make run`, `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# requirements.txt alone, as `make install` and the Procfile platform install it (see docs/ci.md).
RUNTIME_VENV ?= .venv-runtime
# Receivers' own validators that are not Python packages (Microsoft's adaptivecards for Teams cards).
TEST_TOOLS ?= .test-tools
DATABASE_URL ?= postgresql://127.0.0.1:5432/delivery_worker
export DATABASE_URL

.PHONY: install install-dev runtime-venv test-tools run demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .

install-dev: install
	$(BIN)/pip install -q -r requirements-dev.txt

# Where `make install-wheel` puts the production install (docs/operations.md, the systemd unit).
PREFIX ?= /opt/delivery-worker
SOURCES := $(shell find delivery_worker channels -name '*.py' -o -name '*.sql')
.PHONY: wheel install-wheel

## A wheel of this checkout in dist/: what production installs (not an editable checkout).
wheel: $(BIN)/python
	rm -rf dist build
	$(BIN)/pip wheel -q --no-deps -w dist .

## The production install of docs/operations.md: a venv at $(PREFIX)/.venv with requirements.txt and
## the wheel (the code lives in the venv; the checkout can go), and the docs the unit points at.
install-wheel: wheel
	$(PYTHON) -m venv $(PREFIX)/.venv
	$(PREFIX)/.venv/bin/pip install -q -r requirements.txt
	$(PREFIX)/.venv/bin/pip install -q --no-deps --force-reinstall dist/delivery_worker-*.whl
	install -d $(PREFIX)/docs
	install -m 0644 docs/*.md $(PREFIX)/docs/

## A second venv holding only the runtime requirements (rebuilt from scratch when they change) and
## the wheel, installed like production (reinstalled when the code changes): the smoke test
## (tests/test_runtime_install.py) runs the real worker from it through every channel.
$(RUNTIME_VENV)/.requirements: requirements.txt pyproject.toml
	rm -rf $(RUNTIME_VENV)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install -q -r requirements.txt
	touch $@

$(RUNTIME_VENV)/.installed: $(RUNTIME_VENV)/.requirements $(SOURCES) | wheel
	$(RUNTIME_VENV)/bin/pip install -q --no-deps --force-reinstall dist/delivery_worker-*.whl
	touch $@

runtime-venv: $(RUNTIME_VENV)/.installed

## Microsoft's adaptivecards library (npm), which tests/channels/test_hostile_values.py runs every
## Teams card through. Skipped when npm is missing (those tests then skip locally and fail under CI).
$(TEST_TOOLS)/node_modules/adaptivecards/package.json:
	if command -v npm >/dev/null 2>&1; then \
		npm install -s --no-audit --no-fund --prefix $(TEST_TOOLS) adaptivecards@3.0.6; fi

test-tools: $(TEST_TOOLS)/node_modules/adaptivecards/package.json

## Create the local database if needed, migrate it, and run the worker until Ctrl-C.
run: install
	$(BIN)/delivery-worker migrate --create-database
	$(BIN)/delivery-worker run

## The same database set-up, then sample alerts delivered to local receivers (loopback only), shown,
## and their rows deleted; exit 0 only if every one was delivered. E.g. `make demo DEMO_ARGS=--keep`.
demo: install
	$(BIN)/delivery-worker migrate --create-database
	$(BIN)/delivery-worker demo $(DEMO_ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Lint, type-check and run the whole test suite against the local PostgreSQL and Mosquitto,
## the runtime smoke test included (it reads the runtime venv from TEST_RUNTIME_VENV).
test: lint runtime-venv test-tools
	TEST_RUNTIME_VENV=$(abspath $(RUNTIME_VENV)) ADAPTIVECARDS_NODE_MODULES=$(abspath $(TEST_TOOLS))/node_modules \
		$(BIN)/pytest -q

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) $(TEST_TOOLS) .mypy_cache .ruff_cache .pytest_cache dist build
