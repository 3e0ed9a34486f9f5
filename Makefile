# Prism: the two commands are `make serve` and `make test`; everything they need is set up here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
DEMO := models/demo.json
PYTEST_ARGS ?=

.PHONY: serve test test-cluster test-latest lock check bench bench-http bench-scaling bench-slim bench-variant bench-gpu demo venv venv-slim redis wrk haproxy peers chromium format clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# Installs come from the committed locks (requirements/*.txt, written by `make lock`), never from
# whatever was released last night. `make serve` installs the full runtime lock (serve.txt: local
# models and every extra but dev); `make test` and `make check` add the dev lock (a superset with
# the same versions); `make venv-slim` builds the slim gateway (slim.txt: remote models only, no
# ML framework) in its own venv. pip itself is pinned too.
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

# The slim gateway as `pip install prism-gateway` gives it (no extras), installed like the slim
# image does (not editable): `$(SLIM)/bin/prism serve --policy F` fronts remote models.
SLIM ?= .venv-slim
$(SLIM)/.installed: requirements/slim.txt pyproject.toml
	@echo "==> creating $(SLIM): the slim gateway from requirements/slim.txt (no torch)"
	@test -x $(SLIM)/bin/python || $(PYTHON) -m venv $(SLIM)
	$(SLIM)/bin/python -m pip install -q pip==$(PIP_VERSION)
	$(SLIM)/bin/python -m pip install -q -r requirements/slim.txt
	$(SLIM)/bin/python -m pip install -q --no-deps --no-build-isolation --force-reinstall .
	@touch $@

venv-slim: $(SLIM)/.installed  ## create .venv-slim (or SLIM=dir): the slim gateway, remote models only, from its lock

lock: $(BIN)/.serve-installed  ## re-resolve requirements/{dev,serve,slim}.txt from pyproject.toml's ranges
	$(BIN)/python requirements/lock.py

# A throw-away venv with the newest releases pyproject.toml's ranges allow (no lock), running the
# whole suite: it tells us what the next releases will break before a fresh install does.
LATEST ?= .venv-latest
test-latest: redis chromium $(DEMO)  ## run the suite against the newest allowed releases (throw-away venv)
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install --progress-bar on --upgrade -e ".[$$($(PYTHON) requirements/lock.py --extras)]"
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

chromium:  ## make sure headless Chromium and its WebDriver exist (the console's browser tests)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "==> installing chromium and chromium-driver (Debian packages)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else \
		echo "chromium is missing: install it with 'sudo apt-get install chromium chromium-driver' (Debian/Ubuntu) and run again" >&2; exit 1; \
	fi

haproxy:  ## make sure haproxy (the load balancer of make test-cluster) exists (installs Debian's package when root)
	@command -v haproxy >/dev/null || test -x /usr/sbin/haproxy && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "==> installing haproxy (Debian package)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy; \
	else \
		echo "haproxy is missing: install it with 'sudo apt-get install haproxy' (Debian/Ubuntu) and run again" >&2; exit 1; \
	fi

$(DEMO): | $(BIN)/.serve-installed
	@echo "==> building the demo CLIP and catalogue (once; about 4.5 minutes on 2 cores)"
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

# the cluster tests (tests/test_cluster.py) are part of it when haproxy is there or installable
test: $(BIN)/.installed redis chromium $(DEMO) peers  ## run the whole test suite (real Redis, real models)
	@$(MAKE) --no-print-directory haproxy || echo "==> no haproxy: the cluster tests will be skipped"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# -s: the tests print what they measured (retries, drain and restart times, the split, ...)
test-cluster: $(BIN)/.installed redis haproxy  ## 3 replicas behind HAProxy, Redis, 2 workers: kill, drain, roll (2-4 min)
	$(BIN)/python -m pytest -m cluster -s $(PYTEST_ARGS) tests/test_cluster.py tests/test_drain.py

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

# the variant is built once (prism optimize, about 1 min) and kept in build/opt
bench-variant: $(BIN)/.installed wrk  ## MiniLM onnx-int8 beside its source through prism serve: agreement, then wrk side by side (about 3 min)
	test -f build/opt/minilm-onnx-int8/report.json || $(BIN)/prism optimize text-embed@1 --variant onnx-int8 --out build/opt/minilm-onnx-int8
	$(BIN)/python -m bench.variant_http build/opt/minilm-onnx-int8

bench-scaling: $(BIN)/.installed redis wrk  ## the figures docs/scaling.md sizes from: gateway CPU per request, Redis CPU per command (about 2 min)
	$(BIN)/python bench/gateway_cpu.py $(if $(BENCH_SECONDS),--seconds $(BENCH_SECONDS),)
	$(BIN)/python bench/redis_ops.py

# the slim-install row runs build/venv-slim (the venv tests/test_slim_install.py keeps too)
bench-slim: $(BIN)/.installed wrk $(DEMO)  ## RSS + time to ready, remote-only (slim install too) vs default policy (about 20 min)
	$(MAKE) venv-slim SLIM=build/venv-slim
	$(BIN)/python bench/slim.py $(if $(BENCH_SECONDS),--load-seconds $(BENCH_SECONDS),)

clean:  ## remove built artefacts (keeps .venv)
	rm -rf models .pytest_cache .mypy_cache .ruff_cache .import_linter_cache $(LATEST) $(SLIM) build $(PEERS)
