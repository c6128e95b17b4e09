# aica-backup — the guide's commands, plus setup, demo and tests.
# `make demo` and `make test` set everything up themselves on a machine with Python 3.11+.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help backup restore verify list demo test lint bench clean

help:
	@echo "make backup                    back up the app in this folder (./scripts/backup.sh)"
	@echo "make restore [ARCHIVE=FILE]    restore the newest (or the given) backup"
	@echo "make verify                    check every backup can be restored"
	@echo "make demo                      set up, then run the demo on a sample app"
	@echo "make test                      set up, then run lint, type checks and the test suite"
	@echo "make bench                     run the benchmark (see bench/README.md)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

backup:
	./scripts/backup.sh

restore:
	./scripts/restore.sh $(ARCHIVE)

verify: $(STAMP)
	$(BIN)/aica-backup verify --all

list: $(STAMP)
	$(BIN)/aica-backup list

demo: $(STAMP)
	$(BIN)/aica-backup demo

lint: $(STAMP)
	$(BIN)/ruff check src tests backend bench scripts
	$(BIN)/mypy --strict src

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/data bench/results
