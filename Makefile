# bgjobs: `make run` starts everything, `make test` runs every test. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: no python3.11 or python3 on PATH (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create the venv and install bgjobs with its dev tools

run: $(STAMP) ## Run the whole stack: database, migrations, API, events, workers (Ctrl-C stops all)
	$(BIN)/bgjobs run

test: $(STAMP) ## Run the whole test suite against a real Postgres
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP) ## Run the benchmarks (medians over several runs)
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy server worker

migrate: $(STAMP) ## Apply the SQL migrations
	$(BIN)/bgjobs migrate

psql: $(STAMP) ## Open psql on the database in use
	$(BIN)/bgjobs psql

db-reset: $(STAMP) ## Delete the embedded cluster (all its data) and start afresh
	$(BIN)/bgjobs db reset

clean: ## Remove the venv and caches (keeps the embedded database)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info

.PHONY: help install run test bench lint migrate psql db-reset clean
