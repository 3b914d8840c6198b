# Two entry points, both from nothing but Python 3.11 and make:
#   make demo   - virtual environment, install, run a 4-member PBFT network and audit it
#   make check  - virtual environment, install, ruff format + lint, mypy --strict, pytest
#                 (and Debian's chromium for the explorer's browser test, installed when root)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JS_STAMP := clients/js/node_modules/.package-lock.json

.PHONY: demo check test lint venv clean browser js

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
test: $(STAMP) $(JS_STAMP)
	$(BIN)/pytest -q -n auto --dist worksteal -m "not e2e"
	@# The TypeScript client's own tests (the shared vectors, its gateway client against fakes).
	@$(NODE_CHECK)
	cd clients/js && npm test --silent
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

# The TypeScript client (clients/js) needs Node.js 18 or newer; `npm ci` installs its pinned
# dependencies from package-lock.json (again when the lock file changes).
js: $(JS_STAMP)

# Checked before `npm ci` and again before `npm test`: node_modules can outlive the Node.js
# that installed it, and "npm: not found" would not say what to install.
NODE_CHECK = major=$$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0); \
	if [ "$$major" -lt 18 ] || ! command -v npm >/dev/null; then \
	  echo "the TypeScript client's tests need Node.js 18 or newer with npm: sudo apt-get install nodejs npm"; exit 1; fi

$(JS_STAMP): clients/js/package-lock.json
	@$(NODE_CHECK)
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

check: lint browser js test

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
	rm -f *__mypyc*.so consortium/_compiled_hashes.json
	find consortium -name '*.so' -delete
	rm -rf clients/js/node_modules clients/js/dist
