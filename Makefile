# aica-backup — the guide's commands, plus setup, demo and tests.
# `make demo` and `make test` set everything up themselves on a machine with Python 3.11+.
# Copied into an app root (README, "Use it for your app"), backup, restore, verify and list run
# the installed tool through scripts/ (found as scripts/_aica.sh says); only in this repository
# do they first set up .venv from pyproject.toml.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The dev setup, for the app-facing targets, only where this is the aica-backup repository.
TOOL   := $(if $(wildcard src/aica_backup/__init__.py),$(STAMP))
# `aica-backup --root APP ARGS...`, with the command found as the wrappers find it.
AICA   := bash -c 'source scripts/_aica.sh && exec "$${AICA[@]}" --root "$$AICA_ROOT" "$$@"' aica-backup

.PHONY: help backup restore verify list demo test lint bench clean

help:
	@echo "make backup                    back up the app in this folder (./scripts/backup.sh)"
	@echo "make restore [ARCHIVE=FILE]    restore the newest (or the given) backup"
	@echo "make verify                    check every backup can be restored"
	@echo "make list                      list the backups, newest first"
	@echo "make demo                      set up, then run the demo on a sample app"
	@echo "make test                      set up, then run lint, type checks and the test suite"
	@echo "make bench                     run the benchmark (see bench/README.md)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

backup: $(TOOL)
	./scripts/backup.sh

restore: $(TOOL)
	./scripts/restore.sh $(ARCHIVE)

verify: $(TOOL)
	$(AICA) verify --all

list: $(TOOL)
	$(AICA) list

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
