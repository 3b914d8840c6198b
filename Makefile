# Two entry points, both from nothing but Python 3.11 and make:
#   make demo   - virtual environment, install, run a 4-member PBFT network and audit it
#   make check  - virtual environment, install, ruff format + lint, mypy --strict, pytest
#                 (and Debian's chromium for the explorer's browser test, installed when root)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo check test lint venv clean browser

# The install compiles these with mypyc (consortium/compiled.py lists them; a test keeps the
# two lists equal): changed, they are compiled again, or they would run from source.
COMPILED_SRC := consortium/crypto/codec.py consortium/crypto/hashing.py \
	consortium/crypto/merkle.py consortium/ledger/digests.py consortium/client/tally.py

$(STAMP): pyproject.toml setup.py $(COMPILED_SRC)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/consortium demo

lint: $(STAMP)
	$(BIN)/ruff format --check consortium tests scripts setup.py
	$(BIN)/ruff check consortium tests scripts setup.py
	$(BIN)/mypy consortium scripts setup.py

# Unit and simulation tiers on every core; then the end-to-end tier alone, since its tests
# time real processes (a failover within 2 s) and must not compete with simulations for CPU.
test: $(STAMP)
	$(BIN)/pytest -q -n auto --dist worksteal -m "not e2e"
	$(BIN)/pytest -q -m e2e
	@# The compiled modules' own subjects again from source (consortium/compiled.py): the
	@# pure-Python fallback a machine without a C compiler runs.
	CONSORTIUM_PURE=1 $(BIN)/pytest -q -n auto tests/crypto tests/ledger tests/client \
		tests/protocol tests/test_compiled.py

# The explorer's browser test drives Debian's chromium through chromedriver (never a downloaded
# browser). As root on Debian this installs them; otherwise it stops and names the command.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver for the explorer's browser test"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
	  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	else echo "the browser test needs chromium and chromedriver: sudo apt-get install chromium chromium-driver"; exit 1; fi

check: lint browser test

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
	rm -f *__mypyc*.so consortium/_compiled_hashes.json
	find consortium -name '*.so' -delete
