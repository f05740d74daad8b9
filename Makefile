# The two commands a user needs: `make verify` (the conformance suite and its
# report) and `make test` (the harness's own tests plus the real-server tests).
# Each runs `setup` first, so each works alone on a fresh clone.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.test-installed-stamp
PYTEST_ARGS ?=
# Seeds per failing built-in cell in the quality group: `make quality` keeps 10; CI passes fewer
# (`make test QUALITY_SEEDS=3`) and `make bench` reports the detection rate.
QUALITY_SEEDS ?= 10
# The built-in deployments (harness/deployments.py), named after the Debian suite whose packages they run.
# Natively, bookworm's is the host's own packages; trixie's and sid's are built by scripts/build-deployment
# (trixie's root also holds pgagroal, for the pgagroal part: harness/stack/pgagroal.py).
NATIVE_DEPLOYMENTS := trixie sid
IMAGE_DEPLOYMENTS := bookworm trixie sid

.PHONY: setup test-setup deployments verify test test-docker quality bench images clean

setup: $(STAMP)
	$(BIN)/harness setup --install

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is needed (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[drivers]'
	touch $(STAMP)

# The test-only extras: the drivers besides psycopg 3 (psycopg2, asyncpg), selenium, PyYAML and pytest-xdist (the quality group runs on one stack per
# core), and Debian's chromium with its
# driver (the report is checked in a real headless browser).
test-setup: setup $(TEST_STAMP)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver \
	      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; }; \
	  else echo "The report tests need chromium and chromedriver: apt-get install chromium chromium-driver" >&2; exit 2; fi; }

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,drivers]'
	touch $(TEST_STAMP)

# Each native deployment's root filesystem and binaries patched to run on this host, and its images when a
# Docker engine answers (scripts/build-deployment, as root: a minute or two per suite the first time, then
# reused).
# The Pgpool-II part (harness/stack/pgpool.py) runs the host's own pgpool2 package (its service stopped and
# disabled: the harness starts its own Pgpool-II per stack).
deployments:
	@if docker info >/dev/null 2>&1; then images=--images; else images=; \
	  echo "make deployments: no Docker engine answers, so only the native deployments are built" >&2; fi; \
	for suite in $(NATIVE_DEPLOYMENTS); do \
	  scripts/build-deployment $$suite $$images $$([ $$suite = trixie ] && echo --with pgagroal) >/dev/null || exit; done
	@[ -x /usr/sbin/pgpool ] || command -v pgpool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgpool2 >/dev/null \
	      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgpool2 >/dev/null; } \
	      || exit; \
	    service pgpool2 stop >/dev/null 2>&1; systemctl disable pgpool2 >/dev/null 2>&1; true; \
	  else echo "The bookworm-pgpool deployment needs Debian's pgpool2: apt-get install pgpool2" >&2; exit 2; fi; }

# The main job: every strategy x route x scenario, then reports/<run-id>/index.html
# (and results.json, junit.xml); reports/latest points at the newest run.
verify: setup
	$(BIN)/harness verify $(VERIFY_ARGS)

# Fast tests first, then the real-server tests and the scenarios, then the
# quality group (detection power of generated programs, several minutes).
test: test-setup deployments
	$(BIN)/pytest tests scenarios -m "not quality and not docker" $(PYTEST_ARGS)
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory test-docker; \
	else echo "make test: no Docker engine answers, so the docker-backend tests (make test-docker) did not run" >&2; fi
	HARNESS_QUALITY_SEEDS=$(QUALITY_SEEDS) $(BIN)/pytest tests -m quality -n auto $(PYTEST_ARGS)

# The docker backend's tests, against images built here from Debian's packages (reused once built);
# HARNESS_POSTGRES_IMAGE / HARNESS_PGBOUNCER_IMAGE name bookworm's.
test-docker: test-setup images
	images="$$(scripts/build-images)" && eval "$$images" && $(BIN)/pytest tests -m docker $(PYTEST_ARGS)

# Every deployment's images, labelled tenant-harness.deployment=<suite>: each suite's PostgreSQL and PgBouncer,
# and the other poolers its deployments run (scripts/build-images: bookworm's pgpool2, trixie's pgagroal).
images:
	@for suite in $(IMAGE_DEPLOYMENTS); do HARNESS_DEBIAN_SUITE=$$suite scripts/build-images >/dev/null || exit; done

quality: test-setup
	HARNESS_QUALITY_SEEDS=10 $(BIN)/pytest tests -m quality -n auto $(PYTEST_ARGS)

bench: setup deployments
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory images && \
	  images="$$(scripts/build-images)" && eval "$$images" && \
	  $(BIN)/python bench/stack_start.py; else $(BIN)/python bench/stack_start.py; fi
	$(BIN)/python bench/workload.py
	$(BIN)/python bench/verify_wall_time.py
	$(BIN)/python bench/team.py
	$(BIN)/python bench/probe.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/scan.py
	$(BIN)/python bench/deployments.py
	$(BIN)/python bench/example_drivers.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
	find reports -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
