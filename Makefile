# Every entry point of medens. The first target that needs Python creates .venv by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PRESET ?= rbc-demo
KFP_HOST ?= http://localhost:8080
CRON ?= 0 0 2 * * *
PYTEST_ARGS ?=

# Debian packages the tests drive for real (a headless browser for the report test, the
# Prometheus server that scrapes a live endpoint). Installed by `make test` when running as
# root; otherwise install them yourself.
SYSTEM_PACKAGES ?= chromium prometheus
PORT ?= 8080
MODEL_DIR ?= runs/latest

.PHONY: help venv system-deps run test lint format serve compile submit schedule bench clean

help:
	@echo "make run [PRESET=rbc-demo]   the pipeline end to end on this machine with kfp.local (runs/<run-id>/, runs/latest)"
	@echo "make serve [MODEL_DIR=runs/latest] [PORT=8080]   serve an ensemble with KServe (v1/v2 REST, /metrics)"
	@echo "make compile                 recompile pipelines/compiled/*.yaml (MEDENS_* settings)"
	@echo "make submit [PRESET=..] [KFP_HOST=http://localhost:8080]   one run on a Kubeflow cluster"
	@echo "make schedule [PRESET=..] [KFP_HOST=..] [CRON='0 0 2 * * *'] scheduled retraining on the cluster"
	@echo "make test                    install everything needed and run the test suite"
	@echo "make lint                    ruff"
	@echo "make bench                   run benchmarks/*.py (JSON into benchmarks/results/)"
	@echo "make clean                   remove .venv, runs/ and caches"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m pipelines run --preset $(PRESET)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else echo "missing Debian packages:$$missing (run as root, or: sudo apt-get install$$missing)"; fi; \
	fi

test: $(STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src components pipelines tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src components pipelines tests benchmarks

serve: $(STAMP)
	$(VENV)/bin/medens serve --model-dir $(MODEL_DIR) --http-port $(PORT)

compile: $(STAMP)
	$(PY) -m pipelines compile

submit: $(STAMP)
	$(PY) -m pipelines submit --host $(KFP_HOST) --preset $(PRESET)

schedule: $(STAMP)
	$(PY) -m pipelines schedule --host $(KFP_HOST) --preset $(PRESET) --cron '$(CRON)'

bench: $(STAMP)
	@mkdir -p benchmarks/results
	@shopt -s nullglob; files=(benchmarks/*.py); \
	if [ $${#files[@]} -eq 0 ]; then echo "no benchmarks yet"; fi; \
	for f in "$${files[@]}"; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
