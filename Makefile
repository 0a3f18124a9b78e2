# Two commands do all the set-up on a fresh machine:
#   make run    bootstrap .venv, then run the default study (snakemake --cores all)
#   make test   bootstrap .venv, then the checks CI runs (lint, format, snakefmt, snakemake --lint, pytest);
#               as root on Debian, pytest runs with a live SLURM cluster and sshd (tests/services/)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test venv clean-venv

venv: $(STAMP)

# torch first, pinned: 2.13.0 is a CPU wheel on local disk here; a bare `torch` would fetch CUDA packages.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores all

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint
	bash tests/services/with-services.sh $(BIN)/pytest

clean-venv:
	rm -rf $(VENV)
