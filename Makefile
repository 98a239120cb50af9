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
	$(BIN)/pip install --quiet --upgrade pip 'setuptools>=70.1'
	touch $(STAMP)

# The package as it imports (bgjobs.core from core/, and so on: pyproject.toml) is a tree of
# links that setuptools' strict editable mode lays out under build/: the venv's Python, mypy
# (mypy_path), pyright (stubPath) and editors read it. It holds the files there were when it
# was made; adding or removing a file changes its folder's time, so the targets below remake
# the tree first when a package folder changed (tests/unit/test_layout.py names a missing file).
PACKAGE_DIRS := $(shell find bgjobs core tasks server worker sql -type d -not -name __pycache__)
LINKED := $(VENV)/.linked
$(LINKED): $(STAMP) $(PACKAGE_DIRS)
	$(BIN)/pip install --quiet -e '.[dev,embedded]' --config-settings editable_mode=strict
	touch $(LINKED)

links: ## Remake the package's link tree now (the other targets do it when a folder changed)
	$(BIN)/pip install --quiet -e '.[dev,embedded]' --config-settings editable_mode=strict
	touch $(LINKED)

install: $(LINKED) ## Create the venv and install bgjobs with its dev tools and embedded Postgres

run: $(LINKED) ## Run the whole stack: database, migrations, API, events, workers (Ctrl-C stops all)
	$(BIN)/bgjobs run

test: $(LINKED) ## Run the whole test suite against a real Postgres
	$(BIN)/pytest $(PYTEST_ARGS)

test-postgres: $(LINKED) ## The integration and fault tests on the other Postgres majors (MAJORS=15,16)
	$(BIN)/python -m tests.matrix $(if $(MAJORS),--majors $(MAJORS)) $(PYTEST_ARGS)

seed-app: $(LINKED) ## Run examples/seed_app: the seed's Flask app on bgjobs (Ctrl-C stops)
	cd examples/seed_app && $(CURDIR)/$(BIN)/python run.py

bench: $(LINKED) ## Run the benchmarks against pgqueuer (~30 min; BENCH_ARGS="--only events --quick")
	$(BIN)/pip install --quiet -e '.[dev,embedded,bench]' --config-settings editable_mode=strict
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(LINKED) ## ruff, mypy and pyright over the bgjobs package
	$(BIN)/ruff check .
	$(BIN)/mypy -p bgjobs
	$(BIN)/pyright

migrate: $(LINKED) ## Apply the SQL migrations
	$(BIN)/bgjobs migrate

psql: $(LINKED) ## Open psql on the database in use
	$(BIN)/bgjobs psql

db-reset: $(LINKED) ## Delete the embedded cluster (all its data) and start afresh
	$(BIN)/bgjobs db reset

clean: ## Remove the venv and caches (keeps the embedded database)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info build

.PHONY: help install links run test test-postgres bench lint migrate psql db-reset clean seed-app
