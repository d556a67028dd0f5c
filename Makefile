# Roost: two commands. `make run` brings up an all-in-one Roost; `make test` runs the suite.
# Both install what they need first (uv, the workspace venv, RabbitMQ if the machine lacks it).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
BENCH ?=
PYTEST_ARGS ?=

.PHONY: run test install broker test-tools lint format bench bench-deps clean help

help:
	@echo "make run      start an all-in-one Roost (Ctrl-C stops it)"
	@echo "make test     run the test suite against real RabbitMQ and SecantusDB"
	@echo "make bench    run every bench/<name>.py (BENCH=<name> for one)"
	@echo "make lint     ruff check + format check"

# uv is bootstrapped from PyPI when missing; the venv is synced from uv.lock.
$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv \
		|| python3 -m pip install --quiet --user --break-system-packages uv

install: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock shared/pyproject.toml services/*/pyproject.toml cli/pyproject.toml sim/pyproject.toml | $(UV)
	@UV=$$(command -v uv || echo $(HOME)/.local/bin/uv); $$UV sync --all-packages --frozen --quiet --compile-bytecode
	@touch $@

# RabbitMQ must answer on 127.0.0.1:5672 for tests; install/start Debian's if it does not.
broker:
	@bash deploy/scripts/ensure-rabbitmq.sh

# Real clients the tests drive our simulators with (ipmitool against the BMC simulator).
test-tools:
	@bash deploy/scripts/ensure-test-tools.sh

run: install
	@$(PY) -m roost_sim.aio

test: install broker test-tools
	@$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check --quiet .
	@$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench-deps:
	@command -v prometheus-alertmanager >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-alertmanager >/dev/null; }
	@command -v ipmipower >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq freeipmi-tools >/dev/null; }

bench: install broker bench-deps
	@$(PY) bench/run.py $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench/results
