# Prism: the two commands are `make serve` and `make test`; everything they need is set up here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
DEMO := models/demo.json
PYTEST_ARGS ?=

.PHONY: serve test test-latest lock check bench bench-http bench-gpu demo venv redis wrk peers format clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# Installs come from the committed locks (requirements/*.txt, written by `make lock`), never from
# whatever was released last night. `make serve` installs the runtime lock only; `make test` and
# `make check` add the dev lock (a superset with the same versions). pip itself is pinned too.
PIP_VERSION := 26.3
$(BIN)/.serve-installed: requirements/serve.txt pyproject.toml
	@echo "==> creating $(VENV) and installing Prism from requirements/serve.txt (first time: a few minutes)"
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed, found " + sys.version.split()[0]'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --progress-bar on pip==$(PIP_VERSION)
	$(BIN)/python -m pip install --progress-bar on -r requirements/serve.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

$(BIN)/.installed: $(BIN)/.serve-installed requirements/dev.txt
	@echo "==> adding the dev tools and test peers from requirements/dev.txt"
	$(BIN)/python -m pip install --progress-bar on -r requirements/dev.txt
	@touch $@

venv: $(BIN)/.installed  ## create .venv with Prism and its dev tools (from the lock)

lock: $(BIN)/.serve-installed  ## re-resolve requirements/{dev,serve}.txt from pyproject.toml's ranges
	$(BIN)/python requirements/lock.py

# A throw-away venv with the newest releases pyproject.toml's ranges allow (no lock), running the
# whole suite: it tells us what the next releases will break before a fresh install does.
LATEST ?= .venv-latest
test-latest: redis $(DEMO)  ## run the suite against the newest allowed releases (throw-away venv)
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install --progress-bar on --upgrade -e '.[dev]'
	$(LATEST)/bin/python -m pip list --format=freeze > $(LATEST)/versions.txt
	@echo "==> newest releases installed (see $(LATEST)/versions.txt); running the suite"
	$(LATEST)/bin/python -m pytest $(PYTEST_ARGS)

redis:  ## make sure redis-server exists (installs Debian's package when root)
	@command -v redis-server >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "==> installing redis-server (Debian package)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; \
	else \
		echo "redis-server is missing: install it with 'sudo apt-get install redis-server' (Debian/Ubuntu) and run again" >&2; exit 1; \
	fi

wrk:  ## make sure wrk (the HTTP load generator) exists (installs Debian's package when root)
	@command -v wrk >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "==> installing wrk (Debian package)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; \
	else \
		echo "wrk is missing: install it with 'sudo apt-get install wrk' (Debian/Ubuntu) and run again" >&2; exit 1; \
	fi

$(DEMO): | $(BIN)/.serve-installed
	@echo "==> building the demo CLIP and catalogue (once; 4 to 6 minutes on 2 cores)"
	$(BIN)/prism demo build --out models

demo: $(DEMO)  ## train the demo CLIP and build the demo catalogue (once)

serve: $(BIN)/.serve-installed $(DEMO)  ## start the gateway on $(HOST):$(PORT) with the default policy
	$(BIN)/prism serve --host $(HOST) --port $(PORT) $(if $(PRISM_REDIS_URL),--redis-url $(PRISM_REDIS_URL),)

# The model servers teams already run (Triton via PyTriton, KServe's ModelServer) are the
# far edge of the remote tests: they live in their own venv, pinned in
# tests/peers/requirements.txt, so their pins never move Prism's; the raw BERT they serve is
# the packaged MiniLM exported once to ONNX with Prism's torch.
PEERS ?= .venv-peers
BERT_ONNX := build/minilm-onnx/model.onnx
$(PEERS)/.installed: tests/peers/requirements.txt
	@echo "==> creating $(PEERS) with the peer model servers (PyTriton, KServe) from tests/peers/requirements.txt"
	@test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --progress-bar on pip==$(PIP_VERSION)
	$(PEERS)/bin/python -m pip install --progress-bar on -r tests/peers/requirements.txt
	@touch $@

$(BERT_ONNX): | $(BIN)/.installed
	$(BIN)/python -m tests.peers.export_minilm_onnx $@

peers: $(PEERS)/.installed $(BERT_ONNX)  ## the peer model servers' venv (PyTriton, KServe) and the raw BERT they serve

test: $(BIN)/.installed redis $(DEMO) peers  ## run the whole test suite (real Redis, real models)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(BIN)/.installed  ## format, lint, types, import layers, generated files current
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -c 'from importlinter.cli import lint_imports_command as lint; lint()'
	$(BIN)/python -m prism.gateway.cli policy schema --check
	$(BIN)/python -m prism.gateway.openapi --check

format: $(BIN)/.installed  ## apply ruff formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(BIN)/.installed redis  ## gateway/cache/batching benchmarks on this machine (tables + CSV in bench/results)
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/kernels.py --quick

# BENCH_SECONDS=3 for a quick look; bench/README.md's table comes from the default (10 s a row)
bench-http: $(BIN)/.installed redis wrk  ## wrk against prism serve's paths and a raw-ASGI ceiling (about 7 min)
	$(BIN)/python bench/http_wrk.py $(if $(BENCH_SECONDS),--seconds $(BENCH_SECONDS),)

clean:  ## remove built artefacts (keeps .venv)
	rm -rf models .pytest_cache .mypy_cache .ruff_cache .import_linter_cache $(LATEST) $(PEERS) build/minilm-onnx
