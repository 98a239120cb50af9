# bgjobs: `make run` starts everything, `make test` runs every test. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: no python3.11 or python3 on PATH (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

install: $(STAMP) ## Create the venv and install bgjobs with its dev tools and embedded Postgres

run: $(STAMP) ## Run the whole stack: database, migrations, API, events, workers (Ctrl-C stops all)
	$(BIN)/bgjobs run

test: $(STAMP) ## Run the whole test suite against a real Postgres
	$(BIN)/pytest $(PYTEST_ARGS)

test-postgres: $(STAMP) ## The integration and fault tests on the other Postgres majors (MAJORS=15,16)
	$(BIN)/python -m tests.matrix $(if $(MAJORS),--majors $(MAJORS)) $(PYTEST_ARGS)

seed-app: $(STAMP) ## Run examples/seed_app: the seed's Flask app on bgjobs (Ctrl-C stops)
	cd examples/seed_app && $(CURDIR)/$(BIN)/python run.py

bench: $(STAMP) ## Run the benchmarks against pgqueuer (~30 min; BENCH_ARGS="--only events --quick")
	$(BIN)/pip install --quiet -e '.[dev,embedded,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

# mypy reads packages from folders named as they import; the checkout maps bgjobs.core to
# core/ (and so on, see pyproject.toml), so it checks a tree of links laid out as installed.
TYPECHECK := build/typecheck
lint: $(STAMP) ## ruff, and mypy over the bgjobs package
	$(BIN)/ruff check .
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/bgjobs
	@ln -s $(CURDIR)/bgjobs/*.py $(TYPECHECK)/bgjobs/
	@for d in core tasks server worker sql; do ln -s $(CURDIR)/$$d $(TYPECHECK)/bgjobs/$$d; done
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p bgjobs

migrate: $(STAMP) ## Apply the SQL migrations
	$(BIN)/bgjobs migrate

psql: $(STAMP) ## Open psql on the database in use
	$(BIN)/bgjobs psql

db-reset: $(STAMP) ## Delete the embedded cluster (all its data) and start afresh
	$(BIN)/bgjobs db reset

clean: ## Remove the venv and caches (keeps the embedded database)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info build

.PHONY: help install run test test-postgres bench lint migrate psql db-reset clean seed-app
