# Prism: the two commands are `make serve` and `make test`; everything they need is set up here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
DEMO := models/demo.json
PYTEST_ARGS ?=

.PHONY: serve test check bench bench-gpu demo venv redis format clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	@echo "==> creating $(VENV) and installing Prism with its dev tools (first time: a few minutes)"
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed, found " + sys.version.split()[0]'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --progress-bar on pip
	$(BIN)/python -m pip install --progress-bar on -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed  ## create .venv with Prism and its dev tools

redis:  ## make sure redis-server exists (installs Debian's package when root)
	@command -v redis-server >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "==> installing redis-server (Debian package)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; \
	else \
		echo "redis-server is missing: install it with 'sudo apt-get install redis-server' (Debian/Ubuntu) and run again" >&2; exit 1; \
	fi

$(DEMO): | $(BIN)/.installed
	@echo "==> building the demo CLIP and catalogue (once; 4 to 6 minutes on 2 cores)"
	$(BIN)/prism demo build --out models

demo: $(DEMO)  ## train the demo CLIP and build the demo catalogue (once)

serve: $(BIN)/.installed $(DEMO)  ## start the gateway on $(HOST):$(PORT) with the default policy
	$(BIN)/prism serve --host $(HOST) --port $(PORT) $(if $(PRISM_REDIS_URL),--redis-url $(PRISM_REDIS_URL),)

test: $(BIN)/.installed redis $(DEMO)  ## run the whole test suite (real Redis, real models)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(BIN)/.installed  ## format, lint, types, import layers, generated files current
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/prism policy schema --check
	$(BIN)/python -m gateway.openapi --check

format: $(BIN)/.installed  ## apply ruff formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(BIN)/.installed redis  ## gateway/cache/batching benchmarks on this machine (tables + CSV in bench/results)
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/kernels.py --quick

clean:  ## remove built artefacts (keeps .venv)
	rm -rf models .pytest_cache .mypy_cache .ruff_cache
