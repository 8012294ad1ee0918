# The whole set-up on a fresh machine: `make run` and `make test`.
# Creates .venv with the system python3 if missing; installs only into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench mutate install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project's dependencies change (a second run is fast).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/orchestrator serve

lint: install
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/python -m pytest

test: lint typecheck unit

# The job path, GET path and start-up benches also run on PostgreSQL when
# BENCH_POSTGRES_URL names a local server (throwaway databases are created on it and
# dropped); `make bench BENCH_POSTGRES_URL=` runs SQLite only.
BENCH_POSTGRES_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
export BENCH_POSTGRES_URL

bench: install
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/get_job.py
	$(BIN)/python bench/events_fanout.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/tilda_import.py
	$(BIN)/python bench/scale.py

# Mutation testing, not part of `make test` (every module takes hours on two cores).
# Mutates the modules listed under [tool.mutmut] in pyproject.toml, then prints killed /
# survived per module and the survivors. A subset: make mutate MUTANTS='orchestrator.domain.*'
# (mutmut keeps results in mutants/ and re-runs only what changed).
MUTANTS ?=
mutate: install
	$(BIN)/mutmut run $(MUTANTS) > mutmut.log 2>&1 || (tail -30 mutmut.log; exit 1)
	$(BIN)/python tools/mutation_summary.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants mutmut.log
