# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATABASE_URL ?= postgresql://127.0.0.1:5432/delivery_worker
export DATABASE_URL

.PHONY: install install-dev run test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .

install-dev: install
	$(BIN)/pip install -q -r requirements-dev.txt

## Create the local database if needed, migrate it, and run the worker until Ctrl-C.
run: install
	$(BIN)/delivery-worker migrate --create-database
	$(BIN)/delivery-worker run

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Lint, type-check and run the whole test suite against the local PostgreSQL and Mosquitto.
test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
