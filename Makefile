# Two entry points, both from nothing but Python 3.11 and make:
#   make demo   - virtual environment, install, run a 4-member PBFT network and audit it
#   make check  - virtual environment, install, ruff format + lint, mypy --strict, pytest
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo check test lint venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/consortium demo

lint: $(STAMP)
	$(BIN)/ruff format --check consortium tests scripts
	$(BIN)/ruff check consortium tests scripts
	$(BIN)/mypy consortium scripts

# Unit and simulation tiers on every core; then the end-to-end tier alone, since its tests
# time real processes (a failover within 2 s) and must not compete with simulations for CPU.
test: $(STAMP)
	$(BIN)/pytest -q -n auto -m "not e2e"
	$(BIN)/pytest -q -m e2e

check: lint test

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
