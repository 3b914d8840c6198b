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
	$(BIN)/ruff format --check consortium tests
	$(BIN)/ruff check consortium tests
	$(BIN)/mypy consortium

test: $(STAMP)
	$(BIN)/pytest -q

check: lint test

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
