# aica-backup — the guide's commands, plus setup, demo and tests.
# `make demo` and `make test` set everything up themselves on a machine with Python 3.11+.
# In an app, `aica-backup init` writes the backup, restore, verify and list targets (the block
# between the markers below), which run the installed tool through scripts/; only in this
# repository do they first set up .venv from pyproject.toml.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The dev setup, for the backup targets (the block `aica-backup init` writes into an app's
# Makefile, kept identical to src/aica_backup/templates/Makefile.block), only in this repository.
AICA_BACKUP_SETUP := $(if $(wildcard src/aica_backup/__init__.py),$(STAMP))

.PHONY: help backup restore verify list demo test lint bench clean

help:
	@echo "make backup                    back up the app in this folder (./scripts/backup.sh)"
	@echo "make restore [ARCHIVE=FILE]    restore the newest (or the given) backup (ARGS=--yes: no prompt)"
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

# BEGIN aica-backup (written by `aica-backup init`; a second init replaces only this block)
# make backup | restore [ARCHIVE=FILE] | verify | list, run by the scripts/ wrappers, which
# find the aica-backup command as scripts/_aica.sh says. ARGS=... goes to the command
# (e.g. make restore ARCHIVE=backups/backup_20241010_030000.tar.gz ARGS=--yes).
AICA_BACKUP_RUN := bash -c 'source scripts/_aica.sh && exec "$${AICA[@]}" --root "$$AICA_ROOT" "$$@"' aica-backup

.PHONY: backup restore verify list

backup: $(AICA_BACKUP_SETUP)
	./scripts/backup.sh $(ARGS)

restore: $(AICA_BACKUP_SETUP)
	./scripts/restore.sh $(ARCHIVE) $(ARGS)

verify: $(AICA_BACKUP_SETUP)
	$(AICA_BACKUP_RUN) verify --all $(ARGS)

list: $(AICA_BACKUP_SETUP)
	$(AICA_BACKUP_RUN) list $(ARGS)
# END aica-backup

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
