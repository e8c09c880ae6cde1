# Every entry point of medens. The first target that needs Python creates .venv by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PRESET ?= rbc-demo
PYTEST_ARGS ?=

# Debian packages the tests drive for real (a headless browser for the report test).
# Installed by `make test` when running as root; otherwise install them yourself.
SYSTEM_PACKAGES ?= chromium

.PHONY: help venv system-deps run test lint format serve compile bench clean

help:
	@echo "make run [PRESET=rbc-demo]   run the demo experiment end to end on this machine (runs/<name>-<time>/)"
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
	$(VENV)/bin/medens run --preset $(PRESET)

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
	$(VENV)/bin/ruff check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks

serve: $(STAMP)
	@echo "make serve: the KServe endpoint is not built yet (issue 7)"; exit 1

compile: $(STAMP)
	$(PY) -m pipelines compile

bench: $(STAMP)
	@mkdir -p benchmarks/results
	@shopt -s nullglob; files=(benchmarks/*.py); \
	if [ $${#files[@]} -eq 0 ]; then echo "no benchmarks yet"; fi; \
	for f in "$${files[@]}"; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
