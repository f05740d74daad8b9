# The two commands a user needs: `make verify` (the conformance suite and its
# report) and `make test` (the harness's own tests plus the real-server tests).
# Each runs `setup` first, so each works alone on a fresh clone.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup verify test quality bench clean

setup: $(STAMP)
	$(BIN)/harness setup --install

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is needed (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $(STAMP)

verify: setup
	$(BIN)/pytest scenarios --junitxml=reports/junit.xml $(PYTEST_ARGS)

# Fast tests first, then the real-server tests and the scenarios, then the
# quality group (detection power of generated programs, several minutes).
test: setup
	$(BIN)/pytest tests scenarios -m "not quality" $(PYTEST_ARGS)
	$(BIN)/pytest tests -m quality $(PYTEST_ARGS)

quality: setup
	$(BIN)/pytest tests -m quality $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/stack_start.py
	$(BIN)/python bench/workload.py
	$(BIN)/python bench/verify_wall_time.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
	find reports -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
