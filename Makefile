# Binance CDC pipeline. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config/pipeline.yaml
PYTEST_ARGS ?=

# Passwords live in .env (made with random values on first use, never committed).
-include .env
export

.PHONY: help install up down status logs wipe producer simulator backfill consume verify \
        register-connector lint typecheck test test-unit bench clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Remade when the script is newer: a .env from before a password was added gains it (make then rereads it).
.env: infra/ensure-env.sh
	@bash infra/ensure-env.sh .env

install: $(VENV)/.installed .env ## Create the virtualenv with every dependency, and .env

up: install ## Start the whole stack: Docker Compose with a Docker engine, else the native stack
	@bash infra/up.sh

# down, status, logs and wipe act on the stack `make up` recorded (.stack/mode); STACK= overrides it.
down: ## Stop the stack (data is kept)
	@bash infra/up.sh down

# The stack's own view (processes or containers), then the services as the pipeline sees them; exit 1
# if either finds something down, after both have been printed.
status: install ## Each service, the connector and its task, slot lag, topic offsets
	@rc=0; bash infra/up.sh status || rc=1; $(PY) -m pipeline.status --config $(CONFIG) || rc=1; exit $$rc

logs: ## Follow the stack's logs
	@bash infra/up.sh logs

wipe: ## Stop the stack and delete its data
	@bash infra/up.sh wipe

simulator: install ## Run the Binance simulator on 127.0.0.1:8090
	$(PY) -m producer.simulator --port 8090

producer: install ## Run the producer (Ctrl-C stops it cleanly)
	$(PY) -m producer --config $(CONFIG)

backfill: install ## Backfill klines: make backfill ARGS="--symbol BTCUSDT --interval 1h --since 2024-01-01"
	$(PY) -m producer backfill --config $(CONFIG) $(ARGS)

register-connector: install ## Register (or update) the Debezium connector from the config
	$(PY) -m pipeline.connector --config $(CONFIG) register

consume: install ## Run a member of the consumer group (ARGS="--workers 2" for more)
	$(PY) -m consumer --config $(CONFIG) $(ARGS)

verify: install ## Compare every mapped PostgreSQL table with Cassandra; exit 1 on differences
	$(PY) -m consumer verify --config $(CONFIG)

lint: install ## ruff
	$(VENV)/bin/ruff check .

typecheck: install ## mypy --strict
	$(VENV)/bin/mypy

test-unit: install ## Unit tests only (no services)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test: install lint typecheck ## Everything: lint, types, unit and integration tests (starts the native stack)
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: install ## Benchmarks on the running stack (make up first); figures go in the README
	bash bench/run.sh

clean: ## Remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
