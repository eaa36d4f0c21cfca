# Everything a fresh clone needs: `make train` and `make test` build the environment and data first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip warns once per package about this machine's optional local index folders: noise.
QUIET_PIP := grep -v 'is ignored: it is neither a file nor a directory' || true

.PHONY: help venv data train test lint format lock bench bench-short clean

help:
	@echo "make train   - set up, fetch MNIST, train with defaults (results under ./runs)"
	@echo "make test    - set up, fetch MNIST, run lint and the whole test suite"
	@echo "make data    - fetch and verify real MNIST into ./data (idempotent)"
	@echo "make bench   - notebook recipe vs default, side by side (bench-short: a quick check)"
	@echo "make lock    - re-resolve requirements*.lock from pyproject.toml"
	@echo "make lint / format / clean"

$(STAMP): requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install --quiet -r requirements-dev.lock 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | $(QUIET_PIP)
	touch $(STAMP)

venv: $(STAMP)

data: $(STAMP)
	$(PY) -m job data

train: data
	$(PY) -m job train

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: data lint
	$(PY) -m pytest

lock: $(STAMP)
	$(VENV)/bin/pip-compile -q --no-header --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml
	$(VENV)/bin/pip-compile -q --no-header --strip-extras --no-emit-index-url --no-emit-find-links --extra dev -o requirements-dev.lock pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

bench: data
	$(PY) bench/bench.py

bench-short: data
	$(PY) bench/bench.py --short
