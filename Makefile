# Two commands do all the set-up on a fresh machine:
#   make run    bootstrap .venv from the lock, then run the default study (snakemake --cores all)
#   make test   bootstrap .venv from the lock, then the checks CI runs (ruff, snakefmt, pytest, which runs
#               snakemake --lint too); as root on Debian, pytest runs with a live SLURM cluster and sshd (tests/services/)
# Also:
#   make smoke  the tiny study of the tests (about 2 minutes), in .smoke/ so it never touches results/
#   make lock   re-resolve envs/*.txt after an edit of pyproject.toml (UPGRADE=--upgrade: newest versions)
#   make gpu-check  on a GPU machine: CUDA tests, GPU benchmark, tiny study on cuda; bench/results/gpu_check.md
# On a GPU node: make venv LOCK=envs/cuda.txt (docs/development.md#the-locked-environment).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK_VENV := .venv-lock
# the lock the venv was built from (so a plain `make run` keeps a CUDA venv), else the CPU lock
# ($(shell cat), not $(file <): macOS ships GNU make 3.81, which has no $(file))
BUILT_FROM := $(shell cat $(STAMP) 2>/dev/null)
LOCK ?= $(or $(wildcard $(BUILT_FROM)),envs/cpu.txt)
# Where the CPU build of torch comes from (the CUDA build is PyPI's default torch). Where pip's find-links
# (PIP_FIND_LINKS) hold the wheel, as on CI, that copy is used; `make lock TORCH_CPU_INDEX=` then resolves offline.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PIP_VERSION := 26.3
UV_VERSION := 0.13.8
# what `make lock` resolves for: the machines CI, laptops and cluster nodes run (Linux x86_64, Python 3.11)
LOCK_FOR := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --extra dev
UPGRADE ?=

.PHONY: run test smoke venv lock gpu-check check-python clean-venv FORCE

venv: $(STAMP)

# One line naming the fix when the interpreter cannot build the venv, before anything is installed.
check-python:
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; bachglass needs Python >= 3.11 (make PYTHON=/path/to/python3.11)" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "make: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); bachglass needs >= 3.11 (make PYTHON=python3.11 ...)" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { echo "make: $(PYTHON) cannot create a venv (no ensurepip); on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }

# The lock's torch first: the CPU lock's torch==…+cpu is on the CPU index (or this machine's disk), not on PyPI.
# A fresh venv each time, so that it holds the lock and nothing else.
$(STAMP): pyproject.toml $(LOCK) $(if $(filter $(LOCK),$(BUILT_FROM)),,FORCE)
	@$(MAKE) --no-print-directory check-python
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==$(PIP_VERSION)
	$(if $(and $(TORCH_CPU_INDEX),$(findstring +cpu,$(shell grep '^torch==' $(LOCK)))),$(BIN)/pip install --quiet --no-deps --retries 0 --extra-index-url $(TORCH_CPU_INDEX) "$$(grep '^torch==' $(LOCK))")
	$(BIN)/pip install --quiet -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	echo $(LOCK) > $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores all

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules
	bash tests/services/with-services.sh $(BIN)/pytest

# A copy of the tracked tree, as the tests make, so that results/ keeps whatever study it holds.
smoke: $(STAMP)
	rm -rf .smoke && mkdir .smoke
	git ls-files -co --exclude-standard | grep -v '^\.smoke/' | tar -cf - -T - | tar -xf - -C .smoke
	cd .smoke && ../$(BIN)/snakemake --cores all --configfile tests/tiny.yaml
	@echo "smoke run done: .smoke/results/ (science_checks.md, figures/, study.nc); rm -rf .smoke to discard"

gpu-check: $(STAMP)
	bash bench/gpu_check.sh

# uv from a venv of its own: the project's venv may not install from a lock that pyproject.toml has outgrown.
# uv keeps the pins of the file it writes where they still fit; a lock that did not change keeps its mtime.
lock:
	@$(MAKE) --no-print-directory check-python
	test -x $(LOCK_VENV)/bin/uv || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet uv==$(UV_VERSION); }
	cp envs/cpu.txt envs/cuda.txt $(LOCK_VENV)/
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml $(LOCK_FOR) $(UPGRADE) --custom-compile-command "make lock" \
		$(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) \
		$(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX) --index-strategy unsafe-best-match) \
		-o $(LOCK_VENV)/cpu.txt
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml $(LOCK_FOR) $(UPGRADE) --custom-compile-command "make lock" \
		--no-config -o $(LOCK_VENV)/cuda.txt
	for name in cpu cuda; do cmp -s $(LOCK_VENV)/$$name.txt envs/$$name.txt || cp $(LOCK_VENV)/$$name.txt envs/; done

clean-venv:
	rm -rf $(VENV) $(LOCK_VENV)

FORCE:
