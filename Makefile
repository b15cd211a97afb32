# pgwarden: `make run` starts the whole local stack, `make test` runs every check.
# Both install what is missing first: a virtualenv with requirements.txt, and the
# PostgreSQL and Redis server packages (apt-get, as root or through sudo).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
BENCH_ARGS ?=

BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

.PHONY: help run test test-unit bench lint format setup system-packages browser-packages destroy

help:
	@echo "make run      install what is missing, start PostgreSQL (primary + 2 replicas), Redis,"
	@echo "              web, worker and beat on http://$(HOST):$(PORT)/admin/ until Ctrl-C"
	@echo "make test     install what is missing (chromium too, for the dashboard's browser"
	@echo "              test), then ruff, mypy and the whole test suite"
	@echo "make test-unit  the pure tests only (no PostgreSQL, Redis, Celery, browser, child"
	@echo "              process or socket); needs only the virtualenv, runs in under 30 s"
	@echo "make bench    performance targets side by side (routing overhead, classification,"
	@echo "              throughput) on a throwaway local cluster; prints a table"
	@echo "make lint     ruff (lint and format check), mypy and lint-imports (the layer contracts)"
	@echo "make format   ruff format and fix"
	@echo "make destroy  delete the local cluster's data (var/local-cluster)"

run: setup
	$(BIN)/python manage.py run_local --host $(HOST) --port $(PORT)

test: setup browser-packages lint
	$(BIN)/pytest $(PYTEST_ARGS)

# Pure tests only: those marked `servers` or `processes` (tests/helpers/markers.py) are left
# out, so nothing is started. Two pytest-xdist workers: nothing shared between the tests
# here (`make test` runs in one process: its server tests share session clusters).
test-unit: $(VENV)/.installed
	$(BIN)/pytest -m "not servers and not processes" -n 2 $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

setup: $(VENV)/.installed system-packages .env

# Reinstalled whenever requirements.txt changes.
$(VENV)/.installed: requirements.txt
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

system-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
		|| missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] \
		|| missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq; \
		$(APT_INSTALL) $$missing; \
	fi

# The fleet dashboard's browser test drives Debian's chromium through chromedriver (no
# downloads at test time). Only `make test` needs them, so `make run` does not install them.
browser-packages:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq; \
		$(APT_INSTALL) $$missing; \
	fi

# Fresh secrets on first run; an existing .env is kept (its keys decrypt stored passwords).
.env: | $(VENV)/.installed
	$(BIN)/python -m project.envfile .env

destroy: $(VENV)/.installed
	$(BIN)/python manage.py local_cluster destroy --yes
